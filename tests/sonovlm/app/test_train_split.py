"""Training/validation split by image (frames of one cine stay on one side)."""

from __future__ import annotations

from sonovlm.app.train_data import split_by_image


def items(ids):
    return [{"image_id": i, "frame": f} for i in ids for f in range(2 if i.startswith("cine") else 1)]


def test_split_keeps_cine_frames_together_and_validates_at_least_one():
    data = items(["a", "b", "cine1", "d", "e"])
    train, val = split_by_image(data, 0.2)
    assert {i["image_id"] for i in train}.isdisjoint({i["image_id"] for i in val})
    assert len({i["image_id"] for i in val}) == 1 and len(train) + len(val) == len(data)
    assert split_by_image(data, 0.2) == (train, val)  # reproducible


def test_small_sets():
    assert split_by_image(items(["a"]), 0.5) == (items(["a"]), [])
    train, val = split_by_image(items(["a", "b"]), 0.01)
    assert len(train) == 1 and len(val) == 1
    assert split_by_image(items(["a", "b"]), 0.0)[1] == []
