"""A tiny CLIP built from a config (no weights are downloaded) for the adapter tests."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from transformers import CLIPConfig, CLIPModel

TINY_IMAGE_SIZE = 96  # 6 x 6 patch grid with patch 16
TINY_VISION_LAYERS = 3


def tiny_clip_config() -> CLIPConfig:
    return CLIPConfig(
        text_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            vocab_size=100,
            max_position_embeddings=16,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        ),
        vision_config=dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=TINY_VISION_LAYERS,
            num_attention_heads=4,
            image_size=TINY_IMAGE_SIZE,
            patch_size=16,
        ),
        projection_dim=32,
    )


@pytest.fixture(scope="session")
def _tiny_clip_prototype() -> CLIPModel:
    torch.manual_seed(0)
    return CLIPModel(tiny_clip_config()).eval()


@pytest.fixture
def make_clip(_tiny_clip_prototype: CLIPModel) -> Callable[[], CLIPModel]:
    """Factory of independent copies of one randomly initialised tiny CLIP (same weights each time)."""
    return lambda: copy.deepcopy(_tiny_clip_prototype)


@pytest.fixture
def pixels() -> torch.Tensor:
    """(2, 3, 96, 96) normalised-looking pixel values."""
    return torch.randn(2, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, generator=torch.Generator().manual_seed(1))
