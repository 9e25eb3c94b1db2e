"""``python -m training demo-model FILE``: the demo model, trained on simulated phantoms.

``make demo`` serves this model so that a newcomer's first auto-segment draws a real contour. It is
trained by the same pipeline as any other model (``segmentation`` then ``classification`` stages,
then ``export``), on the ``small`` preset (a random, frozen CLIP-shaped backbone: what is learnt
lives in the Mona adapter and the heads), on phantoms written by the same simulator as
``sonovlm sample-data`` but with another seed (``sonovlm.demo_model.TRAIN_SEED``), so the studies
``make demo`` serves (seed 0) and the evaluation studies (``EVAL_SEED``) are held out. The
packaged checkpoint (``sonovlm/resources/demo_model/``) was made by this command with its defaults.

Steps, each in ``WORK`` (default: a temporary folder):

1. ``phantoms/``: ``3 * per_organ`` simulated cases, every one labelled (``label_every_case``);
2. ``data/``: the public layout, one dataset per organ (``Phantom-LN``, ``Phantom-Breast``,
   ``Phantom-Thyroid``), split 70/15/15 per organ and pathology;
3. ``runs/segmentation``, ``runs/classification`` (head only, on the segmentation run's adapter);
4. ``FILE`` and its model card ``FILE.md``; the checkpoint's ``model_card`` metadata says it was
   trained on phantoms and is not for clinical use, and every server reply carries it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from sonovlm.demo_model import DEMO_CARD, DEMO_NAME, TRAIN_SEED
from sonovlm.errors import SonoInputError
from sonovlm.organs import ORGAN_LABELS, PATHOLOGIES

#: Dataset names of the layout, per organ.
DATASETS: dict[str, str] = {
    "lymph_node": "Phantom-LN",
    "breast_lesion": "Phantom-Breast",
    "thyroid_nodule": "Phantom-Thyroid",
}
_FRACTIONS = (0.7, 0.15, 0.15)


def write_phantom_layout(root: Path, per_organ: int, seed: int = TRAIN_SEED) -> dict[str, dict[str, int]]:
    """Simulate ``3 * per_organ`` labelled phantoms and write them as the public layout in ``root``.

    Images stay DICOM (``all/images/NAME.dcm``, calibrated, with burned-in text outside the
    imaging region, exactly what the server reads); masks are ``all/masks/NAME.png``. Returns the
    counts per dataset and split.
    """
    from sonovlm.sample_data import write_sample_studies

    from .data.layout import LayoutWriter
    from .data.splits import seeded_key

    if per_organ < 6:  # 3 per class: one each for train, val and test
        raise SonoInputError("--per-organ", f"needs 6 or more phantoms per organ, not {per_organ}")
    phantoms = root / "phantoms"
    cases = write_sample_studies(phantoms, count=3 * per_organ, seed=seed, label_every_case=True)
    writer = LayoutWriter(root / "data")
    counts: dict[str, dict[str, int]] = {}
    for organ, dataset in DATASETS.items():
        splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
        labels: dict[str, int] = {}
        for pathology in PATHOLOGIES:
            group = [c for c in cases if c.organ == organ and c.pathology == pathology]
            group.sort(key=lambda c: seeded_key(seed, c.id))
            n_val = max(1, round(len(group) * _FRACTIONS[1]))
            n_test = max(1, round(len(group) * _FRACTIONS[2]))
            for index, case in enumerate(group):
                name = f"{dataset.lower()}_{case.id}.dcm"
                shutil.copyfile(case.image_path, writer.root / "all" / "images" / name)
                shutil.copyfile(case.label_path, writer.root / "all" / "masks" / f"{Path(name).stem}.png")
                split = "val" if index < n_val else "test" if index < n_val + n_test else "train"
                splits[split].append(name)
                labels[name] = PATHOLOGIES.index(pathology)
        info = {
            "dataset": dataset,
            "organ": organ,
            "source": f"sonovlm sample-data simulator, seed {seed}",
            "split_rule": "70/15/15 per pathology, seeded",
            "seed": seed,
        }
        for task in ("segmentation", "classification"):
            for split, names in splits.items():
                writer.write_split(task, dataset, split, sorted(names))
            writer.write_info(task, dataset, {**info, "counts": {s: len(v) for s, v in splits.items()}})
        writer.write_labels(dataset, labels)
        counts[dataset] = {s: len(v) for s, v in splits.items()}
    return counts


def _stage_args(command: str, data: Path, out: Path, options: dict[str, object]) -> list[str]:
    argv = [command, "--data-root", str(data), "--dataset", ",".join(DATASETS.values()), "--out", str(out)]
    for key, value in options.items():
        if value is True:
            argv.append(f"--{key}")
        elif value is not None and value is not False:
            argv += [f"--{key}", str(value)]
    return argv


def train_demo_model(
    file: Path,
    work: Path | None = None,
    per_organ: int = 90,
    epochs: int = 100,
    classification_epochs: int = 20,
    threads: int = 2,
    seed: int = 0,
    lr: float = 5e-3,
    backbone: str = "small",
) -> dict[str, object]:
    """Train the demo model and write ``file`` (a SonoVLM checkpoint) and ``file.md``.

    Returns a summary: counts, test Dice per organ and classification AUC on the held-out split
    of the training phantoms, and the seconds each step took.
    """
    from sonovlm.model import set_checkpoint_card

    from .cli import main as training_main
    from .export import export_run

    if file.suffix != ".safetensors":
        raise SonoInputError(file, "name the demo checkpoint with the .safetensors suffix")
    own_work = work is None
    work = Path(tempfile.mkdtemp(prefix="sonovlm-demo-")) if own_work else Path(work)
    if (work / "data").exists():
        raise SonoInputError(work, "already holds a demo training folder; choose an empty --work")
    timings: dict[str, float] = {}
    try:
        start = time.perf_counter()
        counts = write_phantom_layout(work, per_organ)
        timings["phantoms_s"] = time.perf_counter() - start
        common = {
            "backbone": backbone, "threads": threads, "seed": seed, "batch-size": 16,
            "bootstrap": 200, "device": "cpu",
        }
        seg_run, cls_run = work / "runs" / "segmentation", work / "runs" / "classification"
        start = time.perf_counter()
        seg_options = {**common, "adapter": "mona", "epochs": epochs, "lr": lr, "patience": epochs}
        if training_main(_stage_args("segmentation", work / "data", seg_run, seg_options)) != 0:
            raise RuntimeError(f"demo segmentation training failed (see {seg_run / 'train.log'})")
        timings["segmentation_s"] = time.perf_counter() - start
        start = time.perf_counter()
        cls_options = {
            **common, "init-from": seg_run, "freeze-adapter": True, "epochs": classification_epochs,
            "lr": 2e-3, "patience": classification_epochs,
        }
        if training_main(_stage_args("classification", work / "data", cls_run, cls_options)) != 0:
            raise RuntimeError(f"demo classification training failed (see {cls_run / 'train.log'})")
        timings["classification_s"] = time.perf_counter() - start

        checkpoint, card = export_run(cls_run, file)
        set_checkpoint_card(checkpoint, DEMO_CARD)
        seg = json.loads((seg_run / "metrics.json").read_text())
        cls = json.loads((cls_run / "metrics.json").read_text())
        summary = {
            "checkpoint": str(checkpoint),
            "checkpoint_bytes": checkpoint.stat().st_size,
            "counts": counts,
            "test_dice_per_organ": _dice_per_organ(seg),
            "test_auc": cls.get("auc"),
            "test_accuracy": cls.get("accuracy"),
            "timings_s": {k: round(v, 1) for k, v in timings.items()},
        }
        # The card names no folder of this machine: the work folder is temporary or the user's own.
        body = card.read_text(encoding="utf-8").replace(str(work), "WORK (the --work folder)")
        card.write_text(demo_card_text(summary) + body, encoding="utf-8")
        return summary
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)


def _dice_per_organ(metrics: dict) -> dict[str, float]:
    organ_of = {dataset: organ for organ, dataset in DATASETS.items()}
    out: dict[str, list[float]] = {}
    for record in metrics.get("per_case", []):
        organ = organ_of.get(record.get("dataset"), record.get("dataset"))
        out.setdefault(organ, []).append(float(record["dice"]))
    return {organ: round(sum(v) / len(v), 4) for organ, v in out.items() if organ in ORGAN_LABELS}


def demo_card_text(summary: dict) -> str:
    """The notice that heads the demo model's card (``FILE.md``)."""
    dice = ", ".join(f"{k} {v:.3f}" for k, v in summary["test_dice_per_organ"].items())
    phantoms = sum(sum(c.values()) for c in summary["counts"].values())
    return (
        f"> **{DEMO_CARD['notice']}**\n>\n"
        f"> Name: `{DEMO_NAME}`. Backbone: the `small` preset (random frozen weights, not CLIP); the\n"
        f"> Mona adapter and heads were trained on {phantoms} simulated phantoms (seed {TRAIN_SEED}).\n"
        f"> Phantom test split: Dice {dice}; classification AUC {summary['test_auc']:.3f}\n"
        "> (pathology is not learnt on phantoms: read the classification as a placeholder).\n\n"
    )


def run_demo_model(args: Sequence[str] | object) -> int:
    """CLI entry (``python -m training demo-model``)."""
    summary = train_demo_model(
        Path(args.file),
        work=Path(args.work) if args.work else None,
        per_organ=args.per_organ,
        epochs=args.epochs,
        classification_epochs=args.classification_epochs,
        threads=args.threads,
        lr=args.lr,
        backbone=args.backbone,
    )
    print(json.dumps(summary, indent=2))
    return 0
