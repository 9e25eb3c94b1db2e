"""Layout, splits, duplicates and the torch datasets (same preprocessing as serving)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from sonovlm.errors import SonoInputError

from training.data.datasets import build_dataset, collate, pair_cases, split_cases
from training.data.duplicates import find_duplicates
from training.data.layout import LayoutWriter, PublicLayout
from training.data.splits import assign_splits, few_shot_subset, parse_fractions


@pytest.fixture(scope="module")
def tiny_model():
    from sonovlm.model import AdapterConfig, ModelConfig, SonoVLM

    return SonoVLM(ModelConfig(backbone="tiny", adapter=AdapterConfig(kind="mona")))


def test_layout_reads_lists_labels_and_organs(tiny_layout):
    layout = PublicLayout(tiny_layout)
    assert layout.datasets("segmentation") == ["BUSI", "TN3K"]
    assert layout.split("segmentation", "BUSI", "test") == ["busi_008.png", "busi_009.png"]
    assert layout.labels("BUSI")["busi_001.png"] == 1
    assert layout.organ("segmentation", "TN3K") == "thyroid_nodule"  # by name: no dataset.json
    assert layout.organ("segmentation", "TN3K", {"TN3K": "lymph_node"}) == "lymph_node"
    with pytest.raises(SonoInputError, match="no test list"):
        layout.split("segmentation", "DDTI", "test")


def test_layout_errors_name_the_file(tmp_path):
    with pytest.raises(SonoInputError, match="not a dataset root"):
        PublicLayout(tmp_path)
    writer = LayoutWriter(tmp_path)
    writer.write_split("classification", "X", "train", ["a.png", "a.png"])
    (tmp_path / "classification" / "X" / "labels.csv").write_text("name,label\na.png,2\n")
    layout = PublicLayout(tmp_path)
    with pytest.raises(SonoInputError, match="twice"):
        layout.split("classification", "X", "train")
    with pytest.raises(SonoInputError, match="not 0 .benign. or 1"):
        layout.labels("X")
    with pytest.raises(SonoInputError, match="organ of dataset 'X' unknown"):
        layout.organ("classification", "X")


def test_assign_splits_keeps_groups_whole_and_follows_fractions():
    groups = {f"p{i}": [f"p{i}_a", f"p{i}_b"] if i % 4 == 0 else [f"p{i}_a"] for i in range(40)}
    strata = {key: "m" if i % 3 == 0 else "b" for i, key in enumerate(groups)}
    out = assign_splits(groups, (0.7, 0.1, 0.2), seed=3, strata=strata)
    assert out == assign_splits(groups, (0.7, 0.1, 0.2), seed=3, strata=strata)
    for members in groups.values():
        assert len({out[m] for m in members}) == 1
    counts = {s: sum(1 for v in out.values() if v == s) for s in ("train", "val", "test")}
    total = sum(counts.values())
    assert abs(counts["train"] / total - 0.7) < 0.1 and abs(counts["test"] / total - 0.2) < 0.1
    assert counts["val"] > 0
    for stratum in ("m", "b"):  # each stratum reaches every split
        assert {out[groups[k][0]] for k in groups if strata[k] == stratum} == {"train", "val", "test"}
    assert out != assign_splits(groups, (0.7, 0.1, 0.2), seed=4, strata=strata)


def test_few_shot_is_seeded_and_per_class():
    names = [f"c{i}" for i in range(40)]
    labels = {n: int(i < 10) for i, n in enumerate(names)}
    subset = few_shot_subset(names, 0.1, seed=0, labels=labels)
    assert sum(labels[n] for n in subset) == 1 and len(subset) == 4
    assert subset == few_shot_subset(names, 0.1, seed=0, labels=labels)
    assert few_shot_subset(names, 1.0) == names
    with pytest.raises(SonoInputError):
        few_shot_subset(names, 0.0)
    with pytest.raises(SonoInputError):
        parse_fractions("0.5,0.5,0.5")


def test_duplicates_across_formats(tmp_path):
    rng = np.random.default_rng(0)
    coarse = Image.fromarray((rng.random((5, 6)) * 255).astype(np.uint8)).resize(
        (120, 90), Image.Resampling.BICUBIC
    )
    base = np.clip(np.asarray(coarse, float) + rng.random((90, 120)) * 40, 0, 255).astype(np.uint8)
    Image.fromarray(base).save(tmp_path / "a.png")
    Image.fromarray(np.stack([base] * 3, -1)).save(tmp_path / "a_rgb.png")  # same pixels, RGB
    Image.fromarray(base).save(tmp_path / "a.jpg", quality=85)  # re-encoded
    other = np.clip(base.astype(int)[::-1] + 3, 0, 255).astype(np.uint8)
    Image.fromarray(other).save(tmp_path / "b.png")
    paths = {p.name: p for p in tmp_path.iterdir()}
    assert find_duplicates(paths, max_hamming_bits=None) == [["a.png", "a_rgb.png"]]
    assert find_duplicates(paths) == [["a.jpg", "a.png", "a_rgb.png"]]


def test_dataset_items_equal_the_models_own_preprocessing(tiny_layout, tiny_model):
    from sonovlm.io import load_image, load_mask

    cases = split_cases(PublicLayout(tiny_layout), "segmentation", ["BUSI", "TN3K"], "train")
    assert {c.organ for c in cases} == {"breast_lesion", "thyroid_nodule"}
    dataset = build_dataset(cases, tiny_model.preprocess_config, keep_frame=True)
    item = dataset[0]
    image = load_image(cases[0].image)
    pixels, mask = tiny_model.preprocess_pair(image, load_mask(cases[0].mask))
    assert torch.equal(item["pixel_values"], pixels)
    assert torch.equal(item["mask"], mask)
    assert item["geometry"].bbox[0] == 6  # the black strip is cropped away
    assert item["frame_mask"].shape == (80, 100) and item["spacing_mm"] is None
    batch = collate([dataset[0], dataset[1]])
    assert batch["pixel_values"].shape == (2, 3, 64, 64)
    assert isinstance(batch["geometry"], list) and batch["organ_id"].dtype == torch.long


def test_augmented_dataset_changes_pixels_but_keeps_masks_binary(tiny_layout, tiny_model):
    from sonovlm.model.augment import train_transforms

    cases = split_cases(PublicLayout(tiny_layout), "segmentation", ["BUSI"], "train")
    plain = build_dataset(cases, tiny_model.preprocess_config)
    augmented = build_dataset(cases, tiny_model.preprocess_config, train_transforms("all", seed=0))
    differs = 0
    for i in range(len(cases)):
        item = augmented[i]
        assert set(torch.unique(item["mask"]).tolist()) <= {0.0, 1.0}
        differs += not torch.equal(item["pixel_values"], plain[i]["pixel_values"])
    assert differs > 0
    assert torch.equal(plain[0]["pixel_values"], plain[0]["pixel_values"])  # the cache is not mutated


def test_few_shot_split_cases(tiny_layout):
    layout = PublicLayout(tiny_layout)
    full = split_cases(layout, "classification", ["BUSI"], "train")
    few = split_cases(layout, "classification", ["BUSI"], "train", train_ratio=0.3)
    assert len(few) == 2 and {c.label for c in few} == {0, 1}
    assert len(full) == 6


def test_pairs_csv_jsonl_and_refined(pairs_file, tmp_path):
    raw = pair_cases(pairs_file, "raw")
    refined = pair_cases(pairs_file, "refined")
    assert len(raw) == 10 and raw[0].caption.startswith("breast ultrasound")
    assert refined[0].caption.startswith("B-mode")
    assert [c.dataset for c in raw].count("val") == 2
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text(json.dumps({"image": str(raw[0].image), "caption": "a thyroid nodule"}) + "\n")
    assert pair_cases(jsonl)[0].caption == "a thyroid nodule"
    with pytest.raises(SonoInputError, match="refine-captions"):
        pair_cases(jsonl, "refined")
