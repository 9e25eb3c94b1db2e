"""``--paper``: the reference configuration end to end on the toy layout, and each of its parts."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from sonovlm.errors import SonoInputError
from sonovlm.model import AdapterConfig, HeadConfig, ModelConfig, SonoVLM, load_checkpoint
from sonovlm.model.adapters import ReferenceHybridMona
from sonovlm.model.heads import ReferenceClassificationHead, ReferenceSegmentationHead

from training.cli import build_parser, main
from training.engine import cosine_factor
from training.paper import resolve

COMMON = ["--backbone", "tiny", "--epochs", "1", "--batch-size", "4", "--bootstrap", "20"]


def _args(*argv: str) -> argparse.Namespace:
    return resolve(build_parser().parse_args(list(argv)))


def test_paper_resolves_every_reference_setting():
    base = ["segmentation", "--data-root", "d", "--dataset", "X", "--out", "o"]
    args = _args(*base, "--paper")
    assert args.decoder == "reference" and args.classifier == "reference-mlp" and args.loss == "reference"
    assert args.preprocess == "reference"
    assert args.betas == (0.9, 0.95) and args.lr_min == 1e-8 and args.val_every == 10
    assert args.patience == 15 and args.augment == "reference" and args.interactive_fraction == 0.0
    assert (args.lora_rank, args.lora_alpha, args.lora_dropout, args.rslora) == (16, 32, 0.1, True)
    assert args.lora_targets == "q,k,v,out" and args.hybrid_variant == "reference"
    # without --paper: SonoVLM's own choices
    plain = _args(*base)
    assert plain.decoder == "sonovlm" and plain.betas == (0.9, 0.999) and plain.interactive_fraction == 0.5
    assert plain.patience == 10 and plain.augment == "all" and plain.val_every == 1
    # an explicit option wins over --paper
    mixed = _args(*base, "--paper", "--interactive-fraction", "0.25", "--patience", "3", "--no-rslora")
    assert mixed.interactive_fraction == 0.25 and mixed.patience == 3 and mixed.rslora is False
    # MetaCLIP's reference head is the open_clip one (dropout 0.5 + linear)
    meta = _args(*base, "--paper", "--backbone", "facebook/metaclip-b16-fullcc2.5b")
    assert meta.classifier == "reference-linear"


def test_paper_segmentation_runs_one_epoch_on_the_toy_layout(tiny_layout, tmp_path):
    out = tmp_path / "paper-seg"
    code = main(
        ["segmentation", "--data-root", str(tiny_layout), "--dataset", "BUSI", "--adapter", "hybrid"]
        + ["--paper", "--out", str(out), *COMMON]
    )
    assert code == 0
    run = json.loads((out / "run.json").read_text())
    config = run["model_config"]
    assert config["heads"]["decoder"] == "reference" and config["adapter"]["hybrid_variant"] == "reference"
    assert config["preprocess"]["crop_to_region"] is False and config["preprocess"]["image_mean"] == [0, 0, 0]
    assert run["settings"]["augment"] == "reference" and run["settings"]["interactive_fraction"] == 0.0
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 1 and "val_dice" in history[0]  # the last epoch is always validated
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["dice"] <= 1.0
    model = load_checkpoint(out / "best.safetensors")
    assert isinstance(model.seg_head, ReferenceSegmentationHead)
    assert isinstance(model.clip.vision_model.encoder.layers[0].mona, ReferenceHybridMona)


def test_paper_classification_uses_the_pooled_patch_head(tiny_layout, tmp_path):
    out = tmp_path / "paper-cls"
    code = main(
        ["classification", "--data-root", str(tiny_layout), "--dataset", "BUSI", "--adapter", "lora"]
        + ["--paper", "--out", str(out), *COMMON]
    )
    assert code == 0
    model = load_checkpoint(out / "best.safetensors")
    assert isinstance(model.cls_head, ReferenceClassificationHead)
    layer = model.clip.vision_model.encoder.layers[0].self_attn
    assert {"q_proj", "k_proj", "v_proj", "out_proj"} <= {
        name for name, module in layer.named_children() if hasattr(module, "lora_A")
    }
    assert layer.q_proj.scaling["default"] == pytest.approx(32 / 16**0.5)  # rsLoRA
    assert json.loads((out / "metrics.json").read_text())["auc"] is not None


def test_reference_heads_shapes_and_no_clicks():
    model = SonoVLM(
        ModelConfig(backbone="tiny", heads=HeadConfig(decoder="reference", classifier="reference-linear"))
    )
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(pixels, organ_ids=torch.tensor([0, 1]))
        features = model.encode_image(pixels)
        # no text conditioning: another organ's prompt gives the same mask logits
        a = model.segment_logits(features, model.organ_text[0])
        b = model.segment_logits(features, model.organ_text[2])
    assert out["seg_logits"].shape == (2, 2, 64, 64) and out["cls_logits"].shape == (2, 2)
    assert torch.equal(a, b)
    with pytest.raises(SonoInputError, match="no clicks"):
        model.segment_logits(features, model.organ_text[0], torch.zeros(2, 4, 64, 64))
    with pytest.raises(SonoInputError):
        HeadConfig(decoder="unet")


def test_reference_hybrid_is_an_identity_at_start_and_its_filter_is_a_gain():
    adapter = ReferenceHybridMona(32, 8)
    tokens = torch.randn(2, 1 + 16, 32)
    torch.testing.assert_close(adapter(tokens), tokens)
    grid = torch.randn(2, 8, 4, 4)
    with torch.no_grad():
        adapter.channel_gain.copy_(torch.linspace(0.5, 2.0, 8))
    expected = grid * adapter.channel_gain.view(1, -1, 1, 1)
    torch.testing.assert_close(adapter.filtered(grid), expected, rtol=1e-5, atol=1e-5)
    assert AdapterConfig(kind="hybrid", hybrid_variant="reference").to_dict()["hybrid_variant"] == "reference"


def test_cosine_reaches_the_floor():
    factor = cosine_factor(100, floor=1e-8 / 1e-4)
    assert factor(0) == pytest.approx(1.0) and factor(100) == pytest.approx(1e-4)
