"""``python -m training export RUN_DIR FILE``: the server's checkpoint plus a model card.

FILE is the run's best checkpoint, copied atomically after checking that it is a SonoVLM
checkpoint; the server loads it with ``--conf weights FILE`` (and ``sonovlm segment/classify
--weights FILE``). The model card (FILE with the suffix ``.md``) records what the model is, the
data and splits it learnt from, its test metrics with intervals, its intended use and its limits.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from sonovlm.errors import SonoInputError

from .compare import load_run
from .data.layout import PublicLayout
from .engine import BEST_CHECKPOINT
from .report import metric_keys, results_markdown


def _copy_atomic(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(handle)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _data_section(run_info: dict) -> list[str]:
    settings = run_info.get("settings", {})
    lines = ["## Data", ""]
    if run_info.get("task") == "contrastive":
        lines.append(
            f"Image-caption pairs from `{settings.get('pairs')}` ({settings.get('captions')} captions)."
        )
    else:
        root = settings.get("data_root")
        lines.append(f"Dataset root `{root}`; datasets: {', '.join(run_info.get('datasets', []))}.")
        try:
            layout = PublicLayout(root)
            for dataset in run_info.get("datasets", []):
                info = layout.info(run_info["task"], dataset)
                if info:
                    lines.append(
                        f"- {dataset} ({info.get('organ')}): source `{info.get('source')}`; "
                        f"split rule: {info.get('split_rule')}; "
                        f"duplicate groups: {len(info.get('duplicate_groups', []))}"
                    )
        except SonoInputError:
            lines.append("(dataset root not readable now; splits as recorded below)")
    counts = run_info.get("counts", {})
    lines.append(f"- cases per split: {', '.join(f'{k} {v}' for k, v in counts.items())}")
    if settings.get("train_ratio", 1.0) < 1:
        lines.append(
            f"- few-shot: {settings['train_ratio']:.0%} of the train split (seed {settings.get('seed')})"
        )
    lines.append(f"- augmentation: {settings.get('augment')}")
    return lines + [""]


def model_card(metrics: dict, run_info: dict, checkpoint: Path) -> str:
    from sonovlm.model import read_checkpoint_metadata

    meta = read_checkpoint_metadata(checkpoint)
    settings = run_info.get("settings", {})
    config = meta["config"]
    untrained = bool(metrics.get("untrained_backbone"))
    lines = [
        f"# SonoVLM model card: {meta['version']}",
        "",
        f"- checkpoint: `{checkpoint.name}`; serve it with `.venv/bin/python -m monailabel.main start_server "
        f"--app monailabel_app --studies DIR --conf backbone {metrics['backbone']} --conf weights "
        f"{checkpoint.name} --host 127.0.0.1` (or `sonovlm segment/classify --backbone {metrics['backbone']} "
        f"--weights {checkpoint.name}`)",
        f"- backbone: `{metrics['backbone']}`"
        + (" **(untrained preset: random weights)**" if untrained else ""),
        f"- adapter: `{metrics['adapter']}`; trained in stage `{metrics['stage']}`"
        + (f", initialised from `{settings['init_from']}`" if settings.get("init_from") else ""),
        f"- prompt bank: `{config.get('prompt_bank')}` (hash {str(config.get('prompt_hash'))[:12]})",
        f"- trainable parameters in this stage: {run_info.get('trainable_in_stage')} of "
        f"{run_info.get('parameters', {}).get('total')}",
        f"- training: {settings.get('epochs')} epochs max, batch {settings.get('batch_size')}, AdamW lr "
        f"{settings.get('lr')} cosine, early stopping patience {settings.get('patience')}; best epoch "
        f"{metrics.get('best_epoch')} of {metrics.get('epochs_run')}; "
        f"{run_info.get('world_size')} process(es) on "
        f"{run_info.get('gpu') or run_info.get('device')}",
        "",
    ]
    lines += _data_section(run_info)
    lines += ["## Test results", ""]
    if metrics.get("task") in ("segmentation", "classification"):
        table = results_markdown(metrics).split("\n", 2)[2]
        lines += [table.strip(), ""]
        if metrics["task"] == "segmentation":
            lines.append(f"Distances in {metrics.get('distance_unit')}; {metrics.get('asd_definition')}.")
        else:
            lines.append(
                f"Malignant is positive; threshold {metrics.get('threshold')}; probabilities "
                f"{'temperature-calibrated on validation' if metrics.get('temperature') else 'uncalibrated'}."
            )
        keys = ", ".join(metric_keys(metrics["task"]))
        lines.append(f"Per-case values of {keys} are in the run's metrics.json.")
    else:
        lines.append(json.dumps({k: v for k, v in metrics.items() if k.startswith(("image_to", "text_to"))}))
    lines += [
        "",
        "## Intended use",
        "",
        "Research and annotation assistance: a proposal that a sonographer reviews and corrects in the",
        "annotation tool, for the organ and image type it was trained on. Not a diagnostic device; no",
        "clinical decision may rest on its output.",
        "",
        "## Limits",
        "",
        "- Trained and tested on the public data named above: single sources, one scanner population each;",
        "  performance on other scanners, presets and populations is unknown until measured there.",
        "- Test intervals are bootstrap intervals over the test images of those datasets only.",
        "- Distances are in pixels when the images carry no calibration (PNG/JPEG datasets).",
        "- Classification probabilities are calibrated on the validation split of the same datasets only.",
    ]
    if untrained:
        lines.append(
            "- **The backbone is an untrained preset: this checkpoint demonstrates the pipeline only.**"
        )
    return "\n".join(lines) + "\n"


def export_run(run: Path, file: Path) -> tuple[Path, Path]:
    """Write ``file`` (the checkpoint) and its model card; returns both paths."""
    from sonovlm.model import read_checkpoint_metadata

    metrics, run_info = load_run(run)
    if (metrics.get("model") or "sonovlm") != "sonovlm":
        raise SonoInputError(
            run, f"a --model {metrics['model']} baseline run: the server serves SonoVLM checkpoints only"
        )
    checkpoint = run / BEST_CHECKPOINT
    if not checkpoint.is_file():
        raise SonoInputError(run, f"no {BEST_CHECKPOINT} in the run folder")
    read_checkpoint_metadata(checkpoint)  # refuses anything that is not a SonoVLM checkpoint
    if file.suffix != ".safetensors":
        raise SonoInputError(file, "name the checkpoint FILE with the .safetensors suffix")
    _copy_atomic(checkpoint, file)
    card = file.with_suffix(".md")
    card.write_text(model_card(metrics, run_info, file), encoding="utf-8")
    return file, card
