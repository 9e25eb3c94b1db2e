"""``--shots K``: K training images per dataset (segmentation) or per dataset and pathology."""

from __future__ import annotations

import json

import pytest
from sonovlm.errors import SonoInputError

from training.cli import main
from training.data.datasets import split_cases
from training.data.layout import PublicLayout
from training.data.splits import few_shot_subset, k_shot_subset

COMMON = ["--backbone", "tiny", "--epochs", "1", "--batch-size", "4", "--bootstrap", "20", "--no-figures"]


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


def test_shots_run_records_its_subset(tiny_layout, tmp_path, capsys):
    out = tmp_path / "k2"
    argv = ["classification", "--data-root", str(tiny_layout), "--dataset", "BUSI", *COMMON]
    assert main([*argv, "--shots", "2", "--adapter", "none", "--out", str(out)]) == 0
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["counts"]["train"] == 4 and run_info["settings"]["shots"] == 2
    assert run_info["few_shot"] == {
        "train_images": {"BUSI": {"benign": 2, "malignant": 2}},
        "seed": 0,
        "shots": 2,
        "per": "dataset and pathology",
    }
    # 6 train images, 3 per class: 4 shots is an error naming the class, before anything trains
    assert main([*argv, "--shots", "4", "--out", str(tmp_path / "k4")]) == 2
    assert "classification/BUSI train split holds 3 images of class 0 (benign)" in capsys.readouterr().err
    assert not (tmp_path / "k4" / "metrics.json").exists()
