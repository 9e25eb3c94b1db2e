"""Trainable share of each adapter in the ViT-B/16 CLIP geometry (built on the meta device)."""

from __future__ import annotations

import pytest
import torch
from sonovlm.model.adapters import AdapterConfig, adapter_parameters, attach_adapter
from transformers import CLIPConfig, CLIPModel

VIT_B16 = dict(
    text_config=dict(
        hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8, vocab_size=49408
    ),
    vision_config=dict(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        image_size=224,
        patch_size=16,
    ),
    projection_dim=512,
)

# (upper bound on the trainable share, exact trainable count)
EXPECTED = {
    "lora": (0.02, 12 * 2 * (16 * 768 + 768 * 16)),
    "mona": (0.03, 1_342_464),
    "hybrid": (0.03, 1_539_876),
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_trainable_share_in_vit_b16_geometry(kind):
    with torch.device("meta"):
        model = CLIPModel(CLIPConfig(**VIT_B16))
    frozen_total = sum(p.numel() for p in model.parameters())
    assert 149_000_000 < frozen_total < 150_000_000  # openai/clip-vit-base-patch16 has 149.6 M
    attach_adapter(model, AdapterConfig(kind=kind))
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    share, count = EXPECTED[kind]
    assert trainable == count == sum(p.numel() for p in adapter_parameters(model))
    assert trainable / total < share
    if kind == "mona":
        assert 1_200_000 < trainable < 1_450_000  # the paper: about 1.3 M
