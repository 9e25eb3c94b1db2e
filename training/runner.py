"""Runs one stage end to end: model, data, training, test evaluation, outputs.

The run folder (``--out``) ends up holding::

    run.json            the command's settings, model config, data counts, devices, versions
    best.safetensors    the best model: a SonoVLM checkpoint (``python -m training export``)
    last_state.pt       training state after the last epoch (``--resume``)
    history.json        one record per epoch (loss, validation metrics, lr, images/s)
    metrics.json        test metrics (see :mod:`training.report`)
    results.md          the Markdown results table
    figures/*.png       training curves, ROC curve, overlays
    tensorboard/        TensorBoard event files
    train.log           the log
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from sonovlm.errors import SonoInputError
from sonovlm.model.augment import train_transforms
from sonovlm.vocabulary import DEFAULT_ADAPTER

from . import report
from .data.datasets import Case, build_dataset, collate, pair_cases, split_cases
from .data.layout import PublicLayout
from .data.splits import seeded_key
from .distributed import DistInfo, cleanup, gather_records, init_distributed, on_main
from .engine import BEST_CHECKPOINT, HISTORY, Trainer, TrainSettings, seed_everything
from .stages.base import Stage

log = logging.getLogger("training")
RUN_FILE = "run.json"


def setup_logging(out: Path, info: DistInfo) -> None:
    logger = logging.getLogger("training")
    logger.setLevel(logging.INFO)
    logger.handlers.clear()
    logger.propagate = False
    if not info.is_main:
        logger.addHandler(logging.NullHandler())
        return
    formatter = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    for handler in (logging.StreamHandler(sys.stderr), logging.FileHandler(out / "train.log")):
        handler.setFormatter(formatter)
        logger.addHandler(handler)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder's ``best.safetensors``."""
    path = Path(path)
    if path.is_dir():
        path = path / BEST_CHECKPOINT
    if not path.is_file():
        raise SonoInputError(
            path, "no checkpoint there (a .safetensors file or a run folder with best.safetensors)"
        )
    return path


@contextlib.contextmanager
def initialisation_seed(seed: int) -> Iterator[None]:
    """Build models under ``seed``: SonoVLM draws its adapter and head initialisation under
    ``sonovlm.model.sonovlm_model.INIT_SEED`` (0 unless set here, so every seed-0 run and the demo
    model are unchanged), a baseline under torch's global generator, seeded here. The global
    random state after the block is the one before it."""
    from sonovlm.model import sonovlm_model

    before = sonovlm_model.INIT_SEED
    sonovlm_model.INIT_SEED = seed
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        sonovlm_model.INIT_SEED = before


def run_config(args: argparse.Namespace) -> Any:
    """The :class:`~sonovlm.model.run_config.RunConfig` of a SonoVLM run's flags."""
    from sonovlm.model.run_config import RunConfig

    from .paper import adapter_options, head_options, reference_preprocess

    init_from = getattr(args, "init_from", None)
    return RunConfig(
        backbone=args.backbone,
        adapter=args.adapter,
        weights=resolve_checkpoint(init_from) if init_from else None,
        default_adapter="none" if args.command == "zero-shot" else DEFAULT_ADAPTER,
        adapter_options=adapter_options(args),
        heads=head_options(args),
        prompt_bank=getattr(args, "prompt_bank", None),
        preprocess_for=reference_preprocess if getattr(args, "preprocess", None) == "reference" else None,
    )


def build_model(args: argparse.Namespace) -> Any:
    """The model for this run: a baseline, or SonoVLM fresh (``--backbone``/``--adapter``) or from
    ``--init-from`` (:func:`sonovlm.model.run_config.build_model`, the loader every entry point uses)."""
    from sonovlm.model.run_config import build_model as build_sonovlm

    from .baselines import build_baseline, is_baseline

    if is_baseline(args):
        return build_baseline(args)
    config = run_config(args)
    model = build_sonovlm(config)
    if config.weights is not None:
        log.info("initialised from %s (version %s)", config.weights, model.version)
    return model


def _loader(
    dataset: Any,
    batch_size: int,
    info: DistInfo,
    num_workers: int,
    shuffle: bool,
    seed: int,
    drop_last: bool = False,
) -> tuple[Any, Any]:
    from monai.data import DataLoader
    from torch.utils.data import DistributedSampler, RandomSampler

    generator = None
    if info.distributed:
        sampler = DistributedSampler(dataset, info.world_size, info.rank, shuffle=shuffle, seed=seed)
    elif shuffle:
        generator = torch.Generator().manual_seed(seed)
        sampler = RandomSampler(dataset, generator=generator)
    else:
        sampler = None
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=info.device.type == "cuda",
        drop_last=drop_last,
        persistent_workers=False,
    )
    return loader, generator


def _cases(args: argparse.Namespace, stage: Stage) -> dict[str, list[Case]]:
    """train / val / test cases of the stage (for contrastive: train / val pairs, evaluated on val)."""
    if stage.task is None:
        pairs_file = Path(args.pairs) if args.pairs else Path(args.data_root) / "finetune" / "pairs.csv"
        pairs = pair_cases(pairs_file, args.captions)
        train = [c for c in pairs if c.dataset == "train"]
        val = [c for c in pairs if c.dataset == "val"]
        if not val:  # no split column: hold out a seeded tenth
            ordered = sorted(train, key=lambda c: seeded_key(args.seed, str(c.image)))
            n_val = max(1, len(ordered) // 10)
            held = {str(c.image) for c in ordered[:n_val]}
            val = [c for c in train if str(c.image) in held]
            train = [c for c in train if str(c.image) not in held]
        return {"train": train, "val": val, "test": val}
    layout = PublicLayout(args.data_root)
    datasets = [d.strip() for d in args.dataset.split(",") if d.strip()]
    if not datasets:
        raise SonoInputError("--dataset", "name at least one dataset")
    organs = {}
    for item in args.organ or []:
        dataset, sep, organ = item.partition("=")
        if not sep or not dataset or not organ:
            raise SonoInputError("--organ", f"{item!r} is not DATASET=ORGAN")
        organs[dataset] = organ
    out = {}
    shots = getattr(args, "shots", None)
    for split in ("train", "val", "test"):
        ratio = args.train_ratio if split == "train" else 1.0
        out[split] = split_cases(layout, stage.task, datasets, split, ratio, args.seed, organs, shots)
    return out


def few_shot_record(args: argparse.Namespace, stage: Stage, train: list[Case]) -> dict | None:
    """What ``run.json`` says about a few-shot train split (``--shots`` or ``--train-ratio``)."""
    shots = getattr(args, "shots", None)
    if shots is None and args.train_ratio >= 1:
        return None
    per_class: dict[str, dict[str, int]] = {}
    for case in train:
        key = "all" if case.label is None else ("benign", "malignant")[case.label]
        counts = per_class.setdefault(case.dataset, {})
        counts[key] = counts.get(key, 0) + 1
    record: dict = {"train_images": per_class, "seed": args.seed}
    if shots is not None:
        record["shots"] = shots
        record["per"] = "dataset and pathology" if stage.task == "classification" else "dataset (organ)"
    else:
        record["train_ratio"] = args.train_ratio
    return record


def _prepare_out(out: Path, resume: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if (out / RUN_FILE).exists() and not resume:
        raise SonoInputError(out, "already holds a run; pass --resume to continue it or choose another --out")


def run_stage(args: argparse.Namespace, stage: Stage) -> int:
    """``python -m training STAGE ...``: train (unless zero-shot), evaluate, write the run folder."""
    out = Path(args.out)
    info = init_distributed(args.device)
    try:
        on_main(info, _prepare_out, out, args.resume)
        setup_logging(out, info)
        settings = TrainSettings(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            patience=args.patience,
            precision=args.precision,
            seed=args.seed,
            num_workers=args.workers,
            betas=tuple(args.betas),
            lr_min=args.lr_min,
            val_every=args.val_every,
        )
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        seed_everything(args.seed + info.rank)
        init_seed = args.seed if getattr(args, "init_seed", None) is None else args.init_seed
        with initialisation_seed(init_seed):  # the same on every rank
            model = build_model(args).to(info.device)
        stage.configure(model, getattr(args, "freeze_adapter", False))
        cases = _cases(args, stage)
        trains = stage.name != "zero-shot"
        for split in ("train", "val", "test") if trains else ("test",):
            if not cases[split]:
                raise SonoInputError(split, f"the {split} split is empty")
        config = model.preprocess_config
        from .baselines import model_of

        run_info = {
            "stage": stage.name,
            "model": model_of(args),
            "init_seed": init_seed,
            "task": stage.task or "contrastive",
            "backbone": model.backbone_info.get("name"),
            "untrained_backbone": bool(model.backbone_info.get("untrained", False)),
            "adapter": model.config.adapter.kind,
            "datasets": sorted({c.dataset for c in cases["test"]}) if stage.task else ["pairs"],
            "counts": {split: len(items) for split, items in cases.items()},
            "few_shot": few_shot_record(args, stage, cases["train"]) if stage.task else None,
            "settings": vars(args).copy(),
            "model_config": model.config.to_dict(),
            "parameters": model.parameter_counts(),
            "trainable_in_stage": sum(p.numel() for p in model.trainable_parameters()),
            "world_size": info.world_size,
            "device": str(info.device),
            "gpu": torch.cuda.get_device_name(info.device) if info.device.type == "cuda" else None,
            "precision": str(settings.precision),
            "versions": {"torch": torch.__version__, "python": platform.python_version()},
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        run_info["settings"].pop("func", None)
        on_main(info, report.write_json, out / RUN_FILE, run_info)
        log.info(
            "%s: %s + %s on %s (%d process(es)); cases %s",
            stage.name,
            run_info["backbone"],
            run_info["adapter"],
            info.device,
            info.world_size,
            run_info["counts"],
        )

        cache = {"cache_rate": args.cache_rate}
        augmentation = (
            train_transforms(args.augment, seed=args.seed + info.rank) if args.augment != "none" else None
        )
        summary_fit: dict = {}
        if trains:
            val_ds = build_dataset(cases["val"], config, **cache)
            val_loader, _ = _loader(val_ds, settings.batch_size, info, 0, False, args.seed)
            train_ds = build_dataset(cases["train"], config, augmentation, **cache)
            per_rank = -(-len(train_ds) // info.world_size)
            train_loader, generator = _loader(
                train_ds,
                settings.batch_size,
                info,
                settings.num_workers,
                True,
                args.seed,
                drop_last=per_rank > settings.batch_size,
            )

            def make_train_loader(epoch: int) -> Any:
                if info.distributed:
                    train_loader.sampler.set_epoch(epoch)
                elif generator is not None:
                    generator.manual_seed(args.seed + epoch)
                if augmentation is not None:
                    augmentation.set_random_state(seed=(args.seed + 7919 * epoch + info.rank) % 2**32)
                torch.manual_seed(args.seed + 104729 * (epoch + 1) + info.rank)  # worker seeds
                return train_loader

            trainer = Trainer(
                model, stage, settings, info, out, make_train_loader, len(train_loader), val_loader
            )
            if args.resume:
                trainer.resume()
            summary_fit = trainer.fit()
            trainer.release()  # the DDP wrapper goes while the process group is alive and idle
            del trainer
            from safetensors.torch import load_file

            model.load_trainable_state_dict(
                {k: v.to(info.device) for k, v in load_file(out / BEST_CHECKPOINT).items()}
            )
            model.eval()
            calibration = stage.finish(model, val_loader, info)
            if calibration:
                on_main(info, stage.save_best, model, out / BEST_CHECKPOINT)
            summary_fit.update(calibration)
        else:
            on_main(info, stage.save_best, model, out / BEST_CHECKPOINT)

        model.eval()
        test_ds = build_dataset(cases["test"], config, keep_frame=True, **cache)
        test_loader, _ = _loader(test_ds, settings.batch_size, info, 0, False, args.seed)
        records = gather_records(info, stage.evaluate(model, test_loader, info))
        on_main(info, write_outputs, out, stage, model, run_info, summary_fit, records, cases["test"], args)
        return 0
    finally:
        cleanup()


def write_outputs(
    out: Path,
    stage: Stage,
    model: Any,
    run_info: dict,
    fit: dict,
    records: list[dict],
    test_cases: list[Case],
    args: argparse.Namespace,
) -> None:
    """metrics.json, results.md and figures (rank 0)."""
    if stage.name == "contrastive":
        summary = stage.summarize(records, args.bootstrap, args.seed, model=model)
        per_case = [{k: v for k, v in r.items() if k != "embedding"} for r in records]
    else:
        summary = stage.summarize(records, args.bootstrap, args.seed)
        per_case = [{k: v for k, v in r.items() if k != "logits"} for r in records]
    metrics = {
        **{
            k: run_info[k]
            for k in ("stage", "model", "task", "backbone", "untrained_backbone", "adapter", "datasets")
        },
        "split": "val" if stage.name == "contrastive" else "test",
        **summary,
        **fit,
        "checkpoint": BEST_CHECKPOINT,
        "model_version": model.version,
        "bootstrap_resamples": args.bootstrap,
        "per_case": per_case,
    }
    if stage.task == "segmentation":
        metrics["empty_prediction_rule"] = report.EMPTY_RULE
        metrics["asd_definition"] = (
            "symmetric average surface distance (MONAI SurfaceDistanceMetric symmetric=True)"
        )
        metrics["hd95_definition"] = "MONAI HausdorffDistanceMetric percentile=95"
    report.write_json(out / report.METRICS_FILE, metrics)
    if stage.task is not None:
        (out / report.RESULTS_FILE).write_text(report.results_markdown(metrics), encoding="utf-8")
    if getattr(args, "figures", True):
        write_figures(out, stage, model, records, test_cases)
    log.info(
        "test: %s",
        {k: metrics.get(k) for k in report.metric_keys(stage.task or "")} if stage.task else summary,
    )
    log.info("wrote %s", out / report.METRICS_FILE)


def write_figures(out: Path, stage: Stage, model: Any, records: list[dict], test_cases: list[Case]) -> None:
    """``figures/``: training curves, ROC (classification), overlays (segmentation)."""
    import json

    figures = out / report.FIGURES_DIR
    figures.mkdir(exist_ok=True)
    history_path = out / HISTORY
    if history_path.is_file():
        report.plot_training_curves(
            json.loads(history_path.read_text()), stage.monitor, figures / "training_curves.png"
        )
    if stage.task == "classification":
        report.plot_roc(
            [r["label"] for r in records], [r["probability"] for r in records], figures / "roc_curve.png"
        )
    if stage.task == "segmentation":
        from .baselines import BaselineModel, overlay_renderer

        by_name = {c.name: c for c in test_cases}
        render = (
            overlay_renderer(model, by_name)
            if isinstance(model, BaselineModel)
            else _overlay_renderer(model, by_name)
        )
        report.plot_overlays(report.pick_overlay_cases(records), render, figures / "overlays.png")


def _overlay_renderer(model: Any, by_name: dict[str, Case]) -> Any:
    """``record -> (grey frame, truth, prediction)`` through the server's own Predictor."""
    from sonovlm.io import load_image, load_mask
    from sonovlm.model import Predictor

    predictor = Predictor(model, device=next(model.parameters()).device)

    def render(record: dict) -> tuple:
        case = by_name[record["name"]]
        image = load_image(case.image)
        result = predictor.segment(image, case.organ)
        truth = load_mask(case.mask, shape=(image.height, image.width)) != 0
        return image.grey(result.frame), truth, result.mask != 0

    return render
