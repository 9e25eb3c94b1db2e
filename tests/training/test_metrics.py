"""Metrics against values computed by hand on known masks, and the empty-prediction rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.metrics import (
    classification_scores,
    image_diagonal,
    segmentation_case,
    summarize_classification,
    summarize_segmentation,
)


def square(shape, top, left, side):
    mask = np.zeros(shape, bool)
    mask[top : top + side, left : left + side] = True
    return mask


def test_dice_and_iou_of_half_overlapping_squares():
    # 10x10 squares shifted by 5 columns: overlap 50 px, union 150 px
    truth = square((60, 80), 10, 10, 10)
    pred = square((60, 80), 10, 15, 10)
    case = segmentation_case(pred, truth)
    assert case["dice"] == pytest.approx(2 * 50 / 200)
    assert case["iou"] == pytest.approx(50 / 150)
    assert case["empty_prediction"] is False


def test_identical_masks_are_perfect():
    truth = square((40, 40), 5, 5, 12)
    case = segmentation_case(truth, truth, spacing_mm=(0.3, 0.3))
    assert (case["dice"], case["iou"], case["hd95_px"], case["asd_px"], case["hd95_mm"]) == (
        1.0,
        1.0,
        0,
        0,
        0,
    )


def test_distances_of_single_pixels_in_pixels_and_mm():
    truth = np.zeros((30, 30), bool)
    pred = np.zeros((30, 30), bool)
    truth[10, 10] = True
    pred[13, 14] = True  # 3 rows, 4 columns away: 5 px
    case = segmentation_case(pred, truth, spacing_mm=(0.5, 2.0))
    assert case["hd95_px"] == pytest.approx(5.0)
    assert case["asd_px"] == pytest.approx(5.0)
    expected_mm = math.hypot(3 * 0.5, 4 * 2.0)  # rows scale by row_mm, columns by col_mm
    assert case["hd95_mm"] == pytest.approx(expected_mm, rel=1e-5)
    assert case["asd_mm"] == pytest.approx(expected_mm, rel=1e-5)
    assert case["dice"] == 0.0


def test_asd_is_symmetric_and_hd95_takes_the_95th_percentile():
    # truth: two pixels 10 columns apart; prediction: the first of them.
    # pred -> truth distances [0]; truth -> pred [0, 10].
    # symmetric ASD = mean([0, 0, 10]) = 10/3; HD95 = max(p95([0]), p95([0, 10])) = 9.5 (linear)
    truth = np.zeros((30, 30), bool)
    truth[10, 10] = truth[10, 20] = True
    pred = np.zeros((30, 30), bool)
    pred[10, 10] = True
    case = segmentation_case(pred, truth)
    assert case["asd_px"] == pytest.approx(10 / 3)
    assert case["hd95_px"] == pytest.approx(9.5)


def test_empty_prediction_counts_as_zero_and_diagonal():
    truth = square((100, 200), 10, 10, 10)
    case = segmentation_case(np.zeros_like(truth), truth, spacing_mm=(0.5, 0.25))
    assert case["empty_prediction"] is True
    assert (case["dice"], case["iou"]) == (0.0, 0.0)
    assert case["hd95_px"] == pytest.approx(math.hypot(100, 200))
    assert case["asd_px"] == pytest.approx(math.hypot(100, 200))
    assert case["hd95_mm"] == pytest.approx(math.hypot(50, 50))
    assert image_diagonal((100, 200), (0.5, 0.25)) == pytest.approx(math.hypot(50, 50))


def test_lesion_predicted_on_an_empty_truth_and_both_empty():
    empty = np.zeros((20, 20), bool)
    blob = square((20, 20), 2, 2, 4)
    wrong = segmentation_case(blob, empty)
    assert (wrong["dice"], wrong["hd95_px"]) == (0.0, pytest.approx(math.hypot(20, 20)))
    both = segmentation_case(empty, empty)
    assert (both["dice"], both["iou"], both["hd95_px"], both["asd_px"]) == (1.0, 1.0, 0.0, 0.0)


def test_summary_keeps_every_case_and_counts_empty_predictions():
    truth = square((100, 200), 10, 10, 10)
    good = segmentation_case(truth, truth)
    empty = segmentation_case(np.zeros_like(truth), truth)
    summary = summarize_segmentation([good, empty], n_boot=200)
    assert summary["n_cases"] == 2
    assert summary["n_empty_predictions"] == 1
    assert summary["dice"] == pytest.approx(0.5)  # the public code would report 1.0 here
    assert summary["dice_std"] == pytest.approx(0.5)
    assert summary["hd95"] == pytest.approx(math.hypot(100, 200) / 2)
    assert summary["distance_unit"] == "px"
    low, high = summary["dice_ci95"]
    assert 0.0 <= low <= 0.5 <= high <= 1.0


def test_summary_is_in_mm_only_when_every_case_is_calibrated():
    truth = square((40, 40), 5, 5, 10)
    calibrated = segmentation_case(truth, truth, spacing_mm=(0.1, 0.1))
    plain = segmentation_case(truth, truth)
    assert summarize_segmentation([calibrated], n_boot=10)["distance_unit"] == "mm"
    assert summarize_segmentation([calibrated, plain], n_boot=10)["distance_unit"] == "px"


def test_classification_scores_by_hand():
    labels = [0, 0, 1, 1]
    probabilities = [0.1, 0.6, 0.4, 0.9]  # predictions 0 1 0 1
    scores = classification_scores(np.array(labels), np.array(probabilities))
    assert scores["accuracy"] == pytest.approx(0.5)
    assert scores["precision"] == pytest.approx(0.5)
    assert scores["recall"] == pytest.approx(0.5)
    assert scores["f1"] == pytest.approx(0.5)
    assert scores["auc"] == pytest.approx(0.75)  # 3 of 4 malignant/benign pairs ranked right


def test_classification_summary_intervals_and_one_class():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    probabilities = np.clip(labels * 0.3 + rng.random(60) * 0.7, 0, 1)
    summary = summarize_classification(labels, probabilities, n_boot=300, seed=1)
    for key in ("accuracy", "precision", "recall", "f1", "auc"):
        low, high = summary[f"{key}_ci95"]
        assert low <= summary[key] <= high
    assert summary == summarize_classification(labels, probabilities, n_boot=300, seed=1)  # seeded
    single = summarize_classification([1, 1, 1], [0.2, 0.7, 0.9], n_boot=50)
    assert single["auc"] is None and "one class" in single["auc_note"]
    assert single["recall"] == pytest.approx(2 / 3)


def test_vectorised_bootstrap_auc_equals_sklearn():
    from sklearn.metrics import roc_auc_score

    from training.metrics import _bootstrap_classification

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 40)
    probabilities = np.round(rng.random(40), 1)  # ties on purpose
    intervals, _ = _bootstrap_classification(labels, probabilities, 0.5, n_boot=1, seed=5)
    index = np.random.default_rng(5).integers(0, 40, (1, 40))[0]
    assert intervals["auc"][0] == pytest.approx(roc_auc_score(labels[index], probabilities[index]))
