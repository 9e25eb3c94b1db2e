"""``sonovlm model-info``: parameter counts and checkpoint size of a configuration."""

from __future__ import annotations

import json

import pytest
from sonovlm.cli.main import main
from sonovlm.cli.model_info import describe

KEYS = {
    "backbone", "adapter", "total_params", "trainable_params", "trainable_percent", "heads_params",
    "checkpoint_bytes", "levels", "untrained", "backbone_info",
}


def test_json_for_tiny(capsys):
    assert main(["model-info", "--backbone", "tiny", "--adapter", "mona", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info) == KEYS
    assert info["backbone"] == "tiny" and info["adapter"] == "mona" and info["untrained"] is True
    # total counts both towers: far more than the vision tower's adapter and the heads.
    assert info["total_params"] > 1_600_000 > info["trainable_params"] > info["heads_params"] > 0
    assert info["checkpoint_bytes"] > 4 * info["trainable_params"]  # float32 weights plus metadata
    assert info["backbone_info"]["name"] == "tiny"


def test_text_output(capsys):
    assert main(["model-info", "--backbone", "tiny", "--adapter", "none"]) == 0
    out = capsys.readouterr().out
    assert "untrained" in out and "trainable" in out


def test_default_backbone_offline_exits_2(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert main(["model-info", "--json"]) == 2
    assert "openai/clip-vit-base-patch16" in capsys.readouterr().err


@pytest.mark.parametrize(("adapter", "limit_percent"), [("lora", 2.0), ("mona", 3.0), ("hybrid", 3.0)])
def test_vit_b16_trainable_share_and_checkpoint_size(adapter, limit_percent):
    info = describe("vit-b16", adapter)
    assert 149_000_000 < info["total_params"] < 160_000_000  # CLIP ViT-B/16 is 149.6 M
    assert info["trainable_params"] / info["total_params"] * 100 < limit_percent
    assert info["heads_params"] <= 2_400_000
    assert info["levels"] == [4, 7, 10]  # the 4th, 7th, 10th blocks (reference: 0-based 3, 6, 9)
    assert info["checkpoint_bytes"] < 25_000_000
