"""The demo model's recipe (``python -m training demo-model``) and the packaged checkpoint."""

from __future__ import annotations

import pytest
from sonovlm.app.config import AppConfig
from sonovlm.demo_model import DEMO_CARD, DEMO_CHECKPOINT_BYTES_MAX, DEMO_NAME, TRAIN_SEED, demo_checkpoint
from sonovlm.errors import SonoInputError
from sonovlm.model import load_checkpoint, read_checkpoint_metadata

from training.cli import main as training_main
from training.demo import DATASETS, write_phantom_layout


def test_recipe_writes_a_checkpoint_that_says_phantoms_not_for_clinical_use(tmp_path):
    out = tmp_path / "demo.safetensors"
    argv = ["demo-model", str(out), "--work", str(tmp_path / "work"), "--per-organ", "6", "--epochs", "1",
            "--classification-epochs", "1", "--backbone", "tiny"]
    assert training_main(argv) == 0
    metadata = read_checkpoint_metadata(out)
    assert metadata["model_card"] == DEMO_CARD and metadata["model_card"]["clinical_use"] is False
    card = (tmp_path / "demo.md").read_text()
    assert card.startswith(f"> **{DEMO_CARD['notice']}**") and DEMO_NAME in card
    model = load_checkpoint(out)
    assert model.describe()["model_card"]["name"] == DEMO_NAME
    assert model.describe()["untrained"] is True  # a random backbone, never a real model's name


def test_phantom_layout_keeps_organs_apart_and_splits_disjoint(tmp_path):
    counts = write_phantom_layout(tmp_path, per_organ=12)
    assert set(counts) == set(DATASETS.values())
    seen: set[str] = set()
    for dataset, split_counts in counts.items():
        assert sum(split_counts.values()) == 12 and min(split_counts.values()) >= 2
        names = {
            split: (tmp_path / "data" / "segmentation" / dataset / f"{split}.txt").read_text().split()
            for split in ("train", "val", "test")
        }
        every = [n for split in names.values() for n in split]
        assert len(every) == len(set(every)) == 12  # each phantom in exactly one split
        assert all(n.startswith(dataset.lower()) for n in every) and not seen & set(every)
        seen |= set(every)


def test_too_few_phantoms_is_an_input_error(tmp_path):
    with pytest.raises(SonoInputError, match="per-organ"):
        write_phantom_layout(tmp_path, per_organ=5)


def test_packaged_checkpoint_is_small_and_carries_the_card():
    path = demo_checkpoint()
    assert path.stat().st_size <= DEMO_CHECKPOINT_BYTES_MAX
    metadata = read_checkpoint_metadata(path)
    assert metadata["model_card"] == DEMO_CARD
    assert metadata["config"]["backbone"] == "small" and metadata["backbone_info"]["untrained"] is True
    assert str(TRAIN_SEED) in path.with_suffix(".md").read_text()


def test_conf_weights_demo_serves_the_packaged_checkpoint(tmp_path):
    config = AppConfig.from_conf({"weights": "demo"}, tmp_path)
    assert config.weights == str(demo_checkpoint()) and config.backbone == "small"
