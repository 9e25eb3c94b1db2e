"""The SAM 2 peers of ``python -m training.bench`` (issue 17 item 2): the SAM 2.1 Hiera-tiny
configuration written out in the benchmark matches the published one, and every timed function
runs (timings are never asserted)."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers.models.sam2")

from training.bench import (  # noqa: E402
    SAM2_IMAGE_SIZE,
    edgetam_encoder,
    sam2_hiera_tiny_config,
    sonovlm_first_click,
)


def test_sam2_hiera_tiny_config_has_the_published_sizes():
    config = sam2_hiera_tiny_config()
    hiera = config.vision_config.backbone_config
    assert hiera.model_type == "sam2_hiera_det_model"
    assert hiera.hidden_size == 96 and hiera.num_attention_heads == 1
    assert hiera.blocks_per_stage == [1, 2, 7, 2]  # Hiera-tiny: 12 blocks
    assert hiera.embed_dim_per_stage == [96, 192, 384, 768]
    assert hiera.num_attention_heads_per_stage == [1, 2, 4, 8]
    assert hiera.global_attention_blocks == [5, 7, 9]
    assert hiera.window_size_per_stage == [8, 4, 14, 7]
    assert hiera.image_size == [SAM2_IMAGE_SIZE, SAM2_IMAGE_SIZE] == [1024, 1024]
    assert config.vision_config.backbone_channel_list == [768, 384, 192, 96]
    assert config.vision_config.fpn_hidden_size == 256
    assert config.vision_config.backbone_feature_sizes == [[256, 256], [128, 128], [64, 64]]
    assert config.prompt_encoder_config.image_size == 1024


def test_sam2_hiera_tiny_encoder_has_the_published_parameter_count():
    """Hiera-tiny trunk about 27 M parameters (timm's sam2_hiera_tiny: 26.9 M) plus the FPN neck."""
    from transformers import Sam2Model

    model = Sam2Model(sam2_hiera_tiny_config())
    trunk = sum(p.numel() for p in model.vision_encoder.backbone.parameters())
    encoder = sum(p.numel() for p in model.vision_encoder.parameters())
    assert 26.5e6 < trunk < 27.5e6 and trunk < encoder < 28e6


def test_edgetam_is_measured_or_says_why_not():
    forward, info = edgetam_encoder()
    if forward is None:
        assert info["skipped"] and "EdgeTAM" in info["model"]
    else:
        assert info["image_size"] == 1024 and info["encoder_params"] > 0


def test_first_click_runs_on_a_new_image():
    first_click = sonovlm_first_click("tiny", "none")
    first_click()
    first_click()  # the cache is cleared each time: the same work again


def test_gflops_counts_a_matmul():
    import torch

    from training.bench import gflops

    a = torch.ones(100, 100)
    assert gflops(lambda: a @ a) == pytest.approx(2 * 100**3 / 1e9)
