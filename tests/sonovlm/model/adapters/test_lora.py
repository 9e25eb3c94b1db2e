"""LoRA specifics: only the vision attention projections, configurable targets, merge for inference."""

from __future__ import annotations

import pytest
import torch
from peft.tuners.lora import LoraLayer
from sonovlm.model.adapters import (
    AdapterConfig,
    adapter_parameters,
    adapter_state_dict,
    attach_adapter,
    load_adapter_state_dict,
    merge_adapter,
    unmerge_adapter,
)


def trained_lora_model(make_clip, **config):
    model = make_clip()
    attach_adapter(model, AdapterConfig(kind="lora", **config))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in adapter_parameters(model):
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model


def test_lora_wraps_only_the_configured_vision_projections(make_clip):
    model = make_clip()
    attach_adapter(model, AdapterConfig(kind="lora", lora_rank=4, lora_target_modules=("k_proj", "out_proj")))
    wrapped = sorted(name for name, module in model.named_modules() if isinstance(module, LoraLayer))
    layers = model.config.vision_config.num_hidden_layers
    assert wrapped == sorted(
        f"vision_model.encoder.layers.{i}.self_attn.{proj}"
        for i in range(layers)
        for proj in ("k_proj", "out_proj")
    )
    width = model.config.vision_config.hidden_size
    assert sum(p.numel() for p in adapter_parameters(model)) == layers * 2 * (2 * 4 * width)


def test_lora_scale_follows_alpha_over_rank(make_clip):
    model = make_clip()
    attach_adapter(model, AdapterConfig(kind="lora", lora_rank=8, lora_alpha=32))
    layer = model.vision_model.encoder.layers[0].self_attn.q_proj
    assert layer.scaling["default"] == pytest.approx(4.0)


def test_merge_gives_the_unmerged_outputs_and_skips_the_lora_products(make_clip, pixels):
    model = trained_lora_model(make_clip)
    with torch.no_grad():
        unmerged = model.vision_model(pixels, output_hidden_states=True)
    calls = []
    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.lora_A["default"].register_forward_hook(lambda *args: calls.append(1))
    merge_adapter(model)
    merge_adapter(model)  # idempotent
    with torch.no_grad():
        merged = model.vision_model(pixels, output_hidden_states=True)
    assert calls == []
    torch.testing.assert_close(merged.last_hidden_state, unmerged.last_hidden_state, atol=1e-5, rtol=0)
    for ours, theirs in zip(merged.hidden_states, unmerged.hidden_states, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert not torch.allclose(merged.last_hidden_state, make_clip().vision_model(pixels).last_hidden_state)


def test_loading_into_a_merged_model_is_refused_and_unmerge_restores(make_clip, pixels):
    model = trained_lora_model(make_clip)
    state = {key: value.clone() for key, value in adapter_state_dict(model).items()}
    with torch.no_grad():
        before = model.vision_model(pixels).last_hidden_state
    merge_adapter(model)
    with pytest.raises(ValueError, match="merged"):
        load_adapter_state_dict(model, state)
    unmerge_adapter(model)
    load_adapter_state_dict(model, state)
    with torch.no_grad():
        torch.testing.assert_close(model.vision_model(pixels).last_hidden_state, before, atol=1e-5, rtol=0)
