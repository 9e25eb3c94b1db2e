"""``--shots K``: K training images per dataset (segmentation) or per dataset and pathology."""

from __future__ import annotations

import pytest
from sonovlm.errors import SonoInputError

from training.data.datasets import split_cases
from training.data.layout import PublicLayout
from training.data.splits import few_shot_subset, k_shot_subset


def test_k_shot_is_seeded_per_class_and_a_prefix_of_the_ratio_order():
    names = [f"case{i:02d}" for i in range(20)]
    labels = {n: i % 2 for i, n in enumerate(names)}
    three = k_shot_subset(names, 3, seed=4, labels=labels)
    assert len(three) == 6 and sorted(labels[n] for n in three) == [0, 0, 0, 1, 1, 1]
    assert three == k_shot_subset(names, 3, seed=4, labels=labels)  # seeded
    assert three != k_shot_subset(names, 3, seed=5, labels=labels)
    assert set(three) <= set(k_shot_subset(names, 5, seed=4, labels=labels))  # nested in K
    # the ratio subset with 3 per class takes the same images from the same order
    assert set(few_shot_subset(names, 0.3, seed=4, labels=labels)) == set(three)
    assert [n for n in names if n in three] == three  # the list's own order kept


def test_k_shot_errors_name_the_class_and_the_split():
    names = ["a", "b", "c"]
    with pytest.raises(SonoInputError, match=r"BUSI train split holds 1 images of class 1 \(malignant\)"):
        k_shot_subset(names, 2, labels={"a": 0, "b": 0, "c": 1}, where="classification/BUSI train split")
    with pytest.raises(SonoInputError, match="holds 3 images, fewer than the 4"):
        k_shot_subset(names, 4)
    with pytest.raises(SonoInputError, match="--shots"):
        k_shot_subset(names, 0)


def test_split_cases_with_shots(tiny_layout):
    layout = PublicLayout(tiny_layout)
    seg = split_cases(layout, "segmentation", ["BUSI", "TN3K"], "train", shots=2, seed=1)
    assert sorted(c.dataset for c in seg) == ["BUSI", "BUSI", "TN3K", "TN3K"]
    cls = split_cases(layout, "classification", ["BUSI"], "train", shots=2, seed=1)
    assert sorted(c.label for c in cls) == [0, 0, 1, 1]
    assert len(split_cases(layout, "segmentation", ["BUSI"], "val", shots=1)) == 2  # train only
    with pytest.raises(SonoInputError, match="not both"):
        split_cases(layout, "segmentation", ["BUSI"], "train", train_ratio=0.5, shots=2)
