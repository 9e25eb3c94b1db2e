"""What a run leaves behind: ``metrics.json``, ``results.md`` and PNG figures.

``metrics.json`` holds the test-set means under ``dice``, ``iou``, ``hd95``, ``asd``
(segmentation) or ``accuracy``, ``precision``, ``recall``, ``f1``, ``auc`` (classification), each
with ``{key}_std`` (segmentation) and ``{key}_ci95``, then ``per_dataset`` summaries,
``per_case`` values, the run's identity (stage, backbone, adapter, datasets) and the rules that
produced the numbers (empty predictions, distance unit, threshold).

Figures (``figures/``): ``training_curves.png`` (loss and validation metric per epoch),
``roc_curve.png`` (classification), ``overlays.png`` (segmentation: the best, median and worst
test case by Dice, ground truth in green, prediction in red, as the server predicts it), drawn
by :mod:`sonovlm.figures` (the server's training draws the same figures).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from sonovlm.figures import pick_overlay_cases, plot_overlays, plot_roc, plot_training_curves

from .metrics import CLASSIFICATION_KEYS, SEGMENTATION_KEYS

METRICS_FILE = "metrics.json"
RESULTS_FILE = "results.md"
FIGURES_DIR = "figures"

EMPTY_RULE = (
    "an empty prediction counts as Dice 0 and IoU 0 and as the image diagonal for HD95 and ASD "
    "(both empty: Dice 1, IoU 1, distances 0); no case is dropped"
)


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, data: dict) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_clean(data), indent=2, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def metric_keys(task: str) -> tuple[str, ...]:
    return SEGMENTATION_KEYS if task == "segmentation" else CLASSIFICATION_KEYS


def format_value(summary: dict, key: str) -> str:
    """``0.812 [0.790, 0.833]`` (``—`` for a missing value)."""
    value = summary.get(key)
    if value is None:
        return "—"
    digits = 2 if key in ("hd95", "asd") else 3
    text = f"{value:.{digits}f}"
    interval = summary.get(f"{key}_ci95")
    if interval:
        text += f" [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"
    return text


#: How a baseline is named in tables (``--model``; SonoVLM rows read ``backbone + adapter``).
BASELINE_LABELS = {
    "unet": "UNet (MONAI, from scratch)",
    "resnet18": "ResNet-18 (MONAI, from scratch)",
    "linear-probe": "linear probe on {backbone} (frozen)",
}


def model_label(metrics: dict) -> str:
    """``tiny + mona`` for a SonoVLM run, the baseline's name for a ``--model`` baseline."""
    model = metrics.get("model") or "sonovlm"
    if model == "sonovlm":
        return f"{metrics['backbone']} + {metrics['adapter']}"
    return BASELINE_LABELS.get(model, model).format(backbone=metrics.get("backbone"))


def results_markdown(metrics: dict) -> str:
    """The run's Markdown table: one row per dataset plus the pooled test set."""
    task = metrics["task"]
    keys = metric_keys(task)
    unit = metrics.get("distance_unit")
    headers = [k.upper() + (f" ({unit})" if k in ("hd95", "asd") and unit else "") for k in keys]
    lines = [
        f"# {metrics['stage']}: {model_label(metrics)}",
        "",
        f"Test split of {', '.join(metrics['datasets'])}; mean [95 % bootstrap interval].",
        "",
        "| dataset | n | " + " | ".join(headers) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    rows = list(metrics.get("per_dataset", {}).items())
    if len(rows) != 1:
        rows.append(("all", metrics))
    for name, summary in rows:
        cells = [format_value(summary, k) for k in keys]
        lines.append(f"| {name} | {summary.get('n_cases', '')} | " + " | ".join(cells) + " |")
    lines.append("")
    if task == "segmentation":
        lines.append(
            f"Empty predictions: {metrics.get('n_empty_predictions', 0)} of {metrics.get('n_cases', 0)}; "
            f"{EMPTY_RULE}."
        )
    if metrics.get("untrained_backbone"):
        lines.append("")
        lines.append("**Untrained backbone preset: these numbers say nothing about a real model.**")
    return "\n".join(lines) + "\n"


__all__ = [
    "EMPTY_RULE",
    "FIGURES_DIR",
    "METRICS_FILE",
    "RESULTS_FILE",
    "format_value",
    "metric_keys",
    "model_label",
    "pick_overlay_cases",
    "plot_overlays",
    "plot_roc",
    "plot_training_curves",
    "results_markdown",
    "write_json",
]
