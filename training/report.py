"""What a run leaves behind: ``metrics.json``, ``results.md`` and PNG figures.

``metrics.json`` holds the test-set means under ``dice``, ``iou``, ``hd95``, ``asd``
(segmentation) or ``accuracy``, ``precision``, ``recall``, ``f1``, ``auc`` (classification), each
with ``{key}_std`` (segmentation) and ``{key}_ci95``, then ``per_dataset`` summaries,
``per_case`` values, the run's identity (stage, backbone, adapter, datasets) and the rules that
produced the numbers (empty predictions, distance unit, threshold).

Figures (``figures/``): ``training_curves.png`` (loss and validation metric per epoch),
``roc_curve.png`` (classification), ``overlays.png`` (segmentation: the best, median and worst
test case by Dice, ground truth in green, prediction in red, as the server predicts it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

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


def results_markdown(metrics: dict) -> str:
    """The run's Markdown table: one row per dataset plus the pooled test set."""
    task = metrics["task"]
    keys = metric_keys(task)
    unit = metrics.get("distance_unit")
    headers = [k.upper() + (f" ({unit})" if k in ("hd95", "asd") and unit else "") for k in keys]
    lines = [
        f"# {metrics['stage']}: {metrics['backbone']} + {metrics['adapter']}",
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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(history: Sequence[dict], monitor: str, path: Path) -> Path | None:
    if not history:
        return None
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    axes[0].plot(epochs, [h["train_loss"] for h in history], label="train")
    if all("val_loss" in h for h in history):
        axes[0].plot(epochs, [h["val_loss"] for h in history], label="validation")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("loss")
    axes[0].legend()
    axes[1].plot(epochs, [h.get(f"val_{monitor}") for h in history], color="tab:green")
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel(f"validation {monitor}")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_roc(labels: Sequence[int], probabilities: Sequence[float], path: Path) -> Path | None:
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.asarray(labels)
    if len(np.unique(y)) < 2:
        return None
    fpr, tpr, _ = roc_curve(y, probabilities)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(fpr, tpr, label=f"AUC {roc_auc_score(y, probabilities):.3f}")
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate (malignant)")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def pick_overlay_cases(records: Sequence[dict]) -> list[tuple[str, dict]]:
    """``[("best", r), ("median", r), ("worst", r)]`` by Dice (ties: by HD95, then name)."""
    if not records:
        return []
    ordered = sorted(records, key=lambda r: (-r["dice"], r.get("hd95_px", 0.0), r["name"]))
    picks = [("best", ordered[0]), ("median", ordered[len(ordered) // 2]), ("worst", ordered[-1])]
    return picks


def plot_overlays(
    picks: Sequence[tuple[str, dict]],
    render: Callable[[dict], tuple[np.ndarray, np.ndarray, np.ndarray]],
    path: Path,
) -> Path | None:
    """Grid of ``render(record) -> (grey frame, truth, prediction)`` with contours, titled by Dice."""
    if not picks:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(picks), figsize=(4 * len(picks), 4))
    axes = np.atleast_1d(axes)
    for ax, (title, record) in zip(axes, picks, strict=True):
        grey, truth, prediction = render(record)
        ax.imshow(grey, cmap="gray")
        if truth.any():
            ax.contour(truth.astype(float), levels=[0.5], colors="lime", linewidths=1.2)
        if prediction.any():
            ax.contour(prediction.astype(float), levels=[0.5], colors="red", linewidths=1.2)
        ax.set_title(f"{title}: {record['name']}\nDice {record['dice']:.3f}", fontsize=9)
        ax.axis("off")
    fig.suptitle("green: ground truth, red: prediction", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.94))  # leave the suptitle its own row
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
