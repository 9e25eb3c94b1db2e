"""The figures of a training run, drawn the same way by ``python -m training`` and by the server.

* :func:`plot_training_curves`: training loss and the validation metric per epoch;
* :func:`plot_roc`: ROC curve of the malignant probability (classification);
* :func:`plot_overlays`: the best, median and worst case by Dice (:func:`pick_overlay_cases`),
  ground truth in green and prediction in red (segmentation).

Each writes one PNG and returns its path, or ``None`` when there is nothing to draw (no epochs,
one class only, no cases). Matplotlib runs on its non-interactive ``Agg`` backend.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(history: Sequence[dict], key: str) -> tuple[list[int], list[float]]:
    """Epochs and values of ``key`` where the record has a finite number (validation may skip epochs)."""
    epochs, values = [], []
    for record in history:
        value = record.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            epochs.append(record["epoch"])
            values.append(float(value))
    return epochs, values


def plot_training_curves(history: Sequence[dict], monitor: str, path: Path) -> Path | None:
    """Loss (train, and validation where recorded) and ``val_{monitor}`` per epoch.

    Args:
        history: one record per epoch with ``epoch``, ``train_loss`` and, on validation epochs,
            ``val_{monitor}`` (and optionally ``val_loss``).
        monitor: the validation metric's name without ``val_`` (``dice``, ``mean_dice``, ``acc``...).
        path: the PNG to write.
    """
    if not history:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    axes[0].plot(*_series(history, "train_loss"), marker=".", label="train")
    val_epochs, val_losses = _series(history, "val_loss")
    if val_epochs:
        axes[0].plot(val_epochs, val_losses, marker=".", label="validation")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("loss")
    axes[0].legend()
    metric_epochs, metric_values = _series(history, f"val_{monitor}")
    if metric_epochs:
        axes[1].plot(metric_epochs, metric_values, marker=".", color="tab:green")
    else:
        axes[1].text(0.5, 0.5, "no validation", ha="center", va="center", transform=axes[1].transAxes)
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel(f"validation {monitor}")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_roc(labels: Sequence[int], probabilities: Sequence[float], path: Path) -> Path | None:
    """ROC of ``probabilities`` (of malignant, label 1) against ``labels``; None with one class."""
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
    """``[("best", r), ("median", r), ("worst", r)]`` by ``dice`` (ties: by ``hd95_px``, then ``name``).

    With fewer than three records each is shown once (``best``, then ``worst``).
    """
    if not records:
        return []
    ordered = sorted(records, key=lambda r: (-r["dice"], r.get("hd95_px", 0.0), r["name"]))
    if len(ordered) == 1:
        return [("best", ordered[0])]
    if len(ordered) == 2:
        return [("best", ordered[0]), ("worst", ordered[1])]
    return [("best", ordered[0]), ("median", ordered[len(ordered) // 2]), ("worst", ordered[-1])]


def plot_overlays(
    picks: Sequence[tuple[str, dict]],
    render: Callable[[dict], tuple[np.ndarray, np.ndarray, np.ndarray]],
    path: Path,
) -> Path | None:
    """Grid of ``render(record) -> (grey frame, truth, prediction)`` with contours, titled by Dice.

    ``grey`` is (rows, cols); ``truth`` and ``prediction`` are boolean (rows, cols) masks.
    """
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


__all__ = ["pick_overlay_cases", "plot_overlays", "plot_roc", "plot_training_curves"]
