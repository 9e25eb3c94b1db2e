"""AdapterConfig: JSON round trip and validation."""

from __future__ import annotations

import json

import pytest
from sonovlm.errors import SonoInputError
from sonovlm.model.adapters import AdapterConfig


def test_json_round_trip():
    config = AdapterConfig(kind="hybrid", lora_target_modules=("q_proj", "k_proj"), mona_bottleneck=32)
    data = json.loads(json.dumps(config.to_dict()))
    assert AdapterConfig.from_dict(data) == config
    assert data["kind"] == "hybrid" and data["lora_target_modules"] == ["q_proj", "k_proj"]


def test_defaults():
    config = AdapterConfig()
    assert (config.kind, config.lora_rank, config.lora_alpha) == ("lora", 16, 16)
    assert config.lora_target_modules == ("q_proj", "v_proj")
    assert config.mona_bottleneck == 64 and config.mona_kernel_sizes == (3, 5, 7)


@pytest.mark.parametrize(
    "fields",
    [
        {"kind": "prefix"},
        {"lora_rank": 0},
        {"lora_target_modules": ("fc1",)},
        {"lora_target_modules": ()},
        {"mona_kernel_sizes": (3, 4)},
        {"mona_dropout": 1.0},
    ],
)
def test_invalid_values_are_input_errors(fields):
    with pytest.raises(SonoInputError):
        AdapterConfig(**fields)


def test_unknown_keys_are_refused():
    with pytest.raises(SonoInputError, match="unknown keys"):
        AdapterConfig.from_dict({"kind": "lora", "rank": 4})
