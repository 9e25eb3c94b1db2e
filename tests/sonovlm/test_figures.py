"""The training figures shared by ``python -m training`` and the server's training."""

from __future__ import annotations

import numpy as np
from PIL import Image
from sonovlm import figures


def _png(path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_training_curves_skip_epochs_without_validation(tmp_path):
    history = [
        {"epoch": 1, "train_loss": 1.0, "val_dice": 0.2},
        {"epoch": 2, "train_loss": 0.8},  # not a validation epoch
        {"epoch": 3, "train_loss": 0.7, "val_dice": float("nan")},  # undefined validation
        {"epoch": 4, "train_loss": 0.6, "val_dice": 0.5},
    ]
    path = figures.plot_training_curves(history, "dice", tmp_path / "curves.png")
    assert path == tmp_path / "curves.png" and _png(path)[0] > 500
    assert figures._series(history, "val_dice") == ([1, 4], [0.2, 0.5])
    assert figures.plot_training_curves([], "dice", tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_roc_needs_both_classes(tmp_path):
    assert figures.plot_roc([1, 1, 1], [0.2, 0.5, 0.9], tmp_path / "one.png") is None
    path = figures.plot_roc([0, 1, 0, 1], [0.1, 0.8, 0.4, 0.6], tmp_path / "roc.png")
    assert _png(path) == (480, 480)


def test_overlay_picks_and_drawing(tmp_path):
    records = [{"name": n, "dice": d} for n, d in [("a", 0.5), ("b", 0.9), ("c", 0.1), ("d", 0.7)]]
    picks = figures.pick_overlay_cases(records)
    assert [(t, r["name"]) for t, r in picks] == [("best", "b"), ("median", "a"), ("worst", "c")]
    assert [t for t, _ in figures.pick_overlay_cases(records[:2])] == ["best", "worst"]
    assert [t for t, _ in figures.pick_overlay_cases(records[:1])] == ["best"]
    assert figures.pick_overlay_cases([]) == []

    rendered = []

    def render(record):
        rendered.append(record["name"])
        truth = np.zeros((40, 60), bool)
        truth[10:30, 20:40] = True
        return np.random.default_rng(0).random((40, 60)), truth, np.roll(truth, 3, axis=1)

    path = figures.plot_overlays(picks, render, tmp_path / "overlays.png")
    assert rendered == ["b", "a", "c"]
    width, height = _png(path)
    assert width > 2 * height
