"""Evaluation metrics, computed with MONAI and scikit-learn, with no case silently dropped.

Segmentation (per image, on the image's own grid: the prediction is mapped back to the cropped
ultrasound region's rows × columns before it is compared):

* Dice and IoU: MONAI ``DiceMetric`` / ``MeanIoU`` on the lesion channel (``ignore_empty=False``).
* HD95: MONAI ``HausdorffDistanceMetric(percentile=95)``; ASD: MONAI ``SurfaceDistanceMetric``
  with ``symmetric=True`` (the mean of both directed average surface distances; the public code
  used MONAI's one-directional default). Both with the image's ``spacing_mm`` when it is
  calibrated, so in millimetres; else in pixels. A run's summary is in millimetres only when
  every test image is calibrated, else in pixels for all; ``distance_unit`` says which.
* Empty masks, which MONAI answers with NaN/inf and the public code then drops from its means:

  ======================  =====  =====  ===================  ===================
  prediction / truth       Dice   IoU    HD95                 ASD
  ======================  =====  =====  ===================  ===================
  empty / lesion           0      0      image diagonal       image diagonal
  lesion / empty           0      0      image diagonal       image diagonal
  empty / empty            1      1      0                    0
  ======================  =====  =====  ===================  ===================

  The diagonal (in the run's distance unit) is the largest distance the image allows, so an
  empty prediction costs the most a wrong one can. ``n_empty_predictions`` counts them.

Means come with the population standard deviation (``np.std``, as the public code) and a 95 %
percentile-bootstrap interval (cases resampled with replacement, 1,000 times, seeded).

Classification (malignant = positive class, threshold 0.5 on its probability): accuracy,
precision, recall, F1 and ROC AUC from scikit-learn, each with a 95 % bootstrap interval. AUC is
``None`` (with the reason) when the test set holds one class only; bootstrap resamples with one
class are skipped for AUC and their count reported.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch

SEGMENTATION_KEYS: tuple[str, ...] = ("dice", "iou", "hd95", "asd")
CLASSIFICATION_KEYS: tuple[str, ...] = ("accuracy", "precision", "recall", "f1", "auc")
N_BOOTSTRAP = 1000


def _one_hot(mask: np.ndarray) -> torch.Tensor:
    m = torch.as_tensor(np.asarray(mask, dtype=bool))
    return torch.stack([~m, m]).float()[None]  # (1, 2, rows, cols)


def image_diagonal(shape: Sequence[int], spacing_mm: Sequence[float] | None = None) -> float:
    """Diagonal of a ``(rows, cols)`` grid, in mm with ``spacing_mm`` (row_mm, col_mm), else pixels."""
    rows, cols = shape[:2]
    sy, sx = spacing_mm if spacing_mm is not None else (1.0, 1.0)
    return math.hypot(rows * sy, cols * sx)


def segmentation_case(
    prediction: np.ndarray, truth: np.ndarray, spacing_mm: Sequence[float] | None = None
) -> dict[str, float | bool | None]:
    """Metrics of one image: binary ``prediction`` and ``truth`` ``(rows, cols)``, non-zero = lesion.

    Returns ``dice``, ``iou``, ``hd95_px``, ``asd_px`` and, with ``spacing_mm``, ``hd95_mm`` and
    ``asd_mm`` (else ``None``), plus ``empty_prediction`` and ``empty_truth``.
    """
    from monai.metrics import DiceMetric, HausdorffDistanceMetric, MeanIoU, SurfaceDistanceMetric

    pred = np.asarray(prediction) > 0
    true = np.asarray(truth) > 0
    if pred.shape != true.shape:
        raise ValueError(f"prediction {pred.shape} and truth {true.shape} differ in shape")
    p, t = _one_hot(pred), _one_hot(true)
    out: dict[str, float | bool | None] = {
        "dice": float(DiceMetric(include_background=False, reduction="none", ignore_empty=False)(p, t)[0, 0]),
        "iou": float(MeanIoU(include_background=False, reduction="none", ignore_empty=False)(p, t)[0, 0]),
        "empty_prediction": not pred.any(),
        "empty_truth": not true.any(),
    }
    spacings = {"px": None, "mm": tuple(spacing_mm) if spacing_mm is not None else None}
    for unit, spacing in spacings.items():
        if unit == "mm" and spacing is None:
            out["hd95_mm"] = out["asd_mm"] = None
            continue
        if not pred.any() and not true.any():
            hd95 = asd = 0.0
        elif not pred.any() or not true.any():
            hd95 = asd = image_diagonal(pred.shape, spacing)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # MONAI's own deprecation notice
                kwargs = {"spacing": list(spacing)} if spacing is not None else {}
                hd95 = float(
                    HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")(
                        p, t, **kwargs
                    )[0, 0]
                )
                asd = float(
                    SurfaceDistanceMetric(include_background=False, symmetric=True, reduction="none")(
                        p, t, **kwargs
                    )[0, 0]
                )
        out[f"hd95_{unit}"] = hd95
        out[f"asd_{unit}"] = asd
    return out


def bootstrap_interval(
    n: int,
    statistic: Callable[[np.ndarray], float | None],
    n_boot: int = N_BOOTSTRAP,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[list[float] | None, int]:
    """Percentile bootstrap interval of ``statistic(indices)`` over ``n`` cases.

    Returns ``([low, high] or None, skipped)``; resamples where the statistic is undefined
    (``None``) are skipped and counted.
    """
    if n == 0:
        return None, 0
    rng = np.random.default_rng(seed)
    values, skipped = [], 0
    for _ in range(n_boot):
        v = statistic(rng.integers(0, n, n))
        if v is None or not np.isfinite(v):
            skipped += 1
        else:
            values.append(v)
    if not values:
        return None, skipped
    alpha = (1 - level) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return [float(low), float(high)], skipped


def summarize_segmentation(cases: Sequence[dict], n_boot: int = N_BOOTSTRAP, seed: int = 0) -> dict:
    """Means, standard deviations and bootstrap intervals over :func:`segmentation_case` records.

    Top-level keys ``dice``, ``iou``, ``hd95``, ``asd`` hold the means; ``{key}_std`` and
    ``{key}_ci95`` the spread; ``distance_unit`` is ``"mm"`` when every case is calibrated.
    """
    unit = "mm" if cases and all(c.get("hd95_mm") is not None for c in cases) else "px"
    columns = {
        "dice": np.array([c["dice"] for c in cases], dtype=float),
        "iou": np.array([c["iou"] for c in cases], dtype=float),
        "hd95": np.array([c[f"hd95_{unit}"] for c in cases], dtype=float),
        "asd": np.array([c[f"asd_{unit}"] for c in cases], dtype=float),
    }
    summary: dict = {
        "n_cases": len(cases),
        "n_empty_predictions": int(sum(bool(c["empty_prediction"]) for c in cases)),
        "n_empty_truths": int(sum(bool(c["empty_truth"]) for c in cases)),
        "distance_unit": unit,
    }
    for key, values in columns.items():
        if len(values) == 0:
            summary[key] = summary[f"{key}_std"] = summary[f"{key}_ci95"] = None
            continue
        summary[key] = float(values.mean())
        summary[f"{key}_std"] = float(values.std())
        summary[f"{key}_ci95"], _ = bootstrap_interval(
            len(values), lambda i, v=values: float(v[i].mean()), n_boot, seed
        )
    return summary


def classification_scores(labels: np.ndarray, probabilities: np.ndarray, threshold: float = 0.5) -> dict:
    """Accuracy, precision, recall, F1 (malignant positive) and AUC (``None`` with one class)."""
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

    y = np.asarray(labels, dtype=int)
    p = np.asarray(probabilities, dtype=float)
    pred = (p >= threshold).astype(int)
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "auc": float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else None,
    }


def _bootstrap_classification(
    y: np.ndarray, p: np.ndarray, threshold: float, n_boot: int, seed: int, level: float = 0.95
) -> tuple[dict[str, list[float] | None], int]:
    """Bootstrap intervals of every classification score at once, vectorised over resamples.

    The same formulas as scikit-learn (precision/recall/F1 with zero_division=0; AUC as the
    Mann-Whitney statistic with average ranks for ties, which is what ``roc_auc_score`` computes),
    so that 1,000 resamples take milliseconds rather than a minute of per-call validation.
    Returns the intervals and the number of resamples with one class (no AUC).
    """
    from scipy.stats import rankdata

    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), (n_boot, len(y)))
    yy, pp = y[idx], p[idx]
    pred = pp >= threshold
    pos = yy == 1
    tp = (pred & pos).sum(1)
    fp = (pred & ~pos).sum(1)
    fn = (~pred & pos).sum(1)
    n_pos = pos.sum(1)
    n_neg = len(y) - n_pos

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        return np.where(den > 0, num / np.maximum(den, 1), 0.0)

    precision = ratio(tp, tp + fp)
    recall = ratio(tp, tp + fn)
    scores = {
        "accuracy": (pred == pos).mean(1),
        "precision": precision,
        "recall": recall,
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
    }
    ranks = rankdata(pp, axis=1)
    both = (n_pos > 0) & (n_neg > 0)
    auc = (np.where(pos, ranks, 0).sum(1) - n_pos * (n_pos + 1) / 2) / np.maximum(n_pos * n_neg, 1)
    scores["auc"] = auc[both]
    alpha = (1 - level) / 2
    intervals = {
        k: ([float(q) for q in np.quantile(v, [alpha, 1 - alpha])] if len(v) else None)
        for k, v in scores.items()
    }
    return intervals, int((~both).sum())


def summarize_classification(
    labels: Sequence[int],
    probabilities: Sequence[float],
    threshold: float = 0.5,
    n_boot: int = N_BOOTSTRAP,
    seed: int = 0,
) -> dict:
    """:func:`classification_scores` plus ``{key}_ci95`` bootstrap intervals and counts."""
    y = np.asarray(labels, dtype=int)
    p = np.asarray(probabilities, dtype=float)
    summary: dict = classification_scores(y, p, threshold) if len(y) else dict.fromkeys(CLASSIFICATION_KEYS)
    summary.update(
        {
            "n_cases": len(y),
            "n_malignant": int(y.sum()),
            "n_benign": int(len(y) - y.sum()),
            "threshold": threshold,
            "positive_class": "malignant",
        }
    )
    if len(y) and summary["auc"] is None:
        summary["auc_note"] = "undefined: the test set holds one class only"
    if not len(y):
        summary.update({f"{k}_ci95": None for k in CLASSIFICATION_KEYS})
        return summary
    intervals, skipped = _bootstrap_classification(y, p, threshold, n_boot, seed)
    summary.update({f"{k}_ci95": v for k, v in intervals.items()})
    if skipped:
        summary["auc_bootstrap_skipped"] = skipped
    return summary
