"""attach_adapter for every kind: identity start, frozen backbone, hidden states, training, state dicts."""

from __future__ import annotations

import pytest
import torch
from sonovlm.errors import ModelLoadError
from sonovlm.model.adapters import (
    AdapterConfig,
    adapter_parameters,
    adapter_state_dict,
    attach_adapter,
    attached_adapter_config,
    load_adapter_state_dict,
    merge_adapter,
)

KINDS = ("lora", "mona", "hybrid", "none")
TRAINABLE_KINDS = ("lora", "mona", "hybrid")


def perturb_adapter(model: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in adapter_parameters(model):
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)


def vision_outputs(model: torch.nn.Module, pixels: torch.Tensor):
    with torch.no_grad():
        return model.vision_model(pixels, output_hidden_states=True)


@pytest.mark.parametrize("kind", KINDS)
def test_adapter_starts_as_identity(kind, make_clip, pixels):
    frozen = make_clip()
    adapted = make_clip()
    attach_adapter(adapted, AdapterConfig(kind=kind))
    expected, got = vision_outputs(frozen, pixels), vision_outputs(adapted, pixels)
    torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state, atol=1e-6, rtol=0)
    torch.testing.assert_close(got.pooler_output, expected.pooler_output, atol=1e-6, rtol=0)
    assert (
        len(got.hidden_states)
        == len(expected.hidden_states)
        == adapted.config.vision_config.num_hidden_layers + 1
    )
    for ours, theirs in zip(got.hidden_states, expected.hidden_states, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    # Also in training mode (dropout active): the zero output projection keeps the identity.
    adapted.train()
    with torch.no_grad():
        torch.testing.assert_close(
            adapted.vision_model(pixels).last_hidden_state, expected.last_hidden_state, atol=1e-6, rtol=0
        )


@pytest.mark.parametrize("kind", TRAINABLE_KINDS)
@pytest.mark.parametrize("hooks_installed_before_attach", [False, True])
def test_hidden_states_are_the_adapted_ones(kind, hooks_installed_before_attach, make_clip, pixels):
    frozen = make_clip()
    expected = vision_outputs(frozen, pixels)
    model = make_clip()
    if hooks_installed_before_attach:
        # transformers installs its output-recording hooks on the first output_hidden_states call.
        vision_outputs(model, pixels)
    attach_adapter(model, AdapterConfig(kind=kind))
    perturb_adapter(model)
    got = vision_outputs(model, pixels)
    torch.testing.assert_close(got.hidden_states[0], expected.hidden_states[0], atol=0, rtol=0)
    for index in range(1, len(got.hidden_states)):
        assert not torch.allclose(got.hidden_states[index], expected.hidden_states[index], atol=1e-4)
    torch.testing.assert_close(got.hidden_states[-1], got.last_hidden_state, atol=0, rtol=0)
    # Selecting blocks by index returns the same adapted states.
    with torch.no_grad():
        selected = model.vision_model(pixels, output_hidden_states=[1, 2]).hidden_states
    torch.testing.assert_close(selected[1], got.hidden_states[1], atol=0, rtol=0)
    torch.testing.assert_close(selected[2], got.hidden_states[2], atol=0, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_backbone_is_frozen_and_only_the_adapter_gets_gradients(kind, make_clip, pixels):
    model = make_clip()
    attach_adapter(model, AdapterConfig(kind=kind))
    model.train()
    adapter_ids = {id(parameter) for parameter in adapter_parameters(model)}
    trainable_ids = {id(parameter) for parameter in model.parameters() if parameter.requires_grad}
    assert trainable_ids == adapter_ids
    if kind == "none":
        assert not adapter_ids
        return
    assert all("vision_model." in name for name, p in model.named_parameters() if id(p) in adapter_ids)
    input_ids = torch.tensor([[0, 5, 6, 1], [0, 7, 1, 1]])
    output = model(input_ids=input_ids, pixel_values=pixels, return_loss=True)
    output.loss.backward()
    for name, parameter in model.named_parameters():
        if id(parameter) in adapter_ids:
            assert parameter.grad is not None, name
        else:
            assert parameter.grad is None, name
    # The output side of each adapter gets a non-zero gradient at the very first step.
    nonzero = [name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert any("lora_B" in name or "project2" in name for name in nonzero)


@pytest.mark.parametrize("kind", TRAINABLE_KINDS)
def test_a_few_steps_lower_a_toy_regression_loss(kind, make_clip, pixels):
    model = make_clip()
    attach_adapter(model, AdapterConfig(kind=kind, mona_dropout=0.0))
    model.train()
    target = torch.randn(
        pixels.shape[0], model.config.vision_config.hidden_size, generator=torch.Generator().manual_seed(3)
    )
    optimiser = torch.optim.AdamW(adapter_parameters(model), lr=1e-2)
    losses = []
    for _ in range(8):
        optimiser.zero_grad()
        loss = torch.nn.functional.mse_loss(model.vision_model(pixels).pooler_output, target)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_round_trip_reproduces_outputs_on_a_fresh_model(kind, make_clip, pixels):
    trained = make_clip()
    attach_adapter(trained, AdapterConfig(kind=kind))
    perturb_adapter(trained, seed=4)
    state = {key: value.clone() for key, value in adapter_state_dict(trained).items()}
    assert sum(value.numel() for value in state.values()) == sum(
        p.numel() for p in adapter_parameters(trained)
    )
    fresh = make_clip()
    attach_adapter(fresh, AdapterConfig(kind=kind))
    load_adapter_state_dict(fresh, state)
    expected, got = vision_outputs(trained, pixels), vision_outputs(fresh, pixels)
    assert torch.equal(got.last_hidden_state, expected.last_hidden_state)
    for ours, theirs in zip(got.hidden_states, expected.hidden_states, strict=True):
        assert torch.equal(ours, theirs)


def test_state_dict_keys_are_stable(make_clip):
    lora_model, mona_model = make_clip(), make_clip()
    attach_adapter(lora_model, AdapterConfig(kind="lora"))
    attach_adapter(mona_model, AdapterConfig(kind="mona"))
    lora_keys, mona_keys = set(adapter_state_dict(lora_model)), set(adapter_state_dict(mona_model))
    assert "vision_model.encoder.layers.0.self_attn.q_proj.lora_A.weight" in lora_keys
    assert "vision_model.encoder.layers.2.self_attn.v_proj.lora_B.weight" in lora_keys
    assert len(lora_keys) == 3 * 2 * 2
    assert "vision_model.encoder.layers.0.mona.project1.weight" in mona_keys
    assert "vision_model.encoder.layers.2.mona.spatial.branches.2.weight" in mona_keys
    assert all(key.startswith("vision_model.encoder.layers.") for key in lora_keys | mona_keys)


@pytest.mark.parametrize("kind", TRAINABLE_KINDS)
def test_loading_is_strict(kind, make_clip):
    model = make_clip()
    attach_adapter(model, AdapterConfig(kind=kind))
    state = adapter_state_dict(model)
    first = sorted(state)[0]
    with pytest.raises(ModelLoadError, match="missing keys"):
        load_adapter_state_dict(model, {k: v for k, v in state.items() if k != first})
    with pytest.raises(ModelLoadError, match="unexpected keys"):
        load_adapter_state_dict(
            model, {**state, "vision_model.encoder.layers.0.extra.weight": torch.zeros(1)}
        )
    with pytest.raises(ModelLoadError, match="wrong shapes"):
        load_adapter_state_dict(model, {**state, first: torch.zeros(*state[first].shape, 2)})


def test_loading_another_kinds_weights_fails(make_clip):
    lora_model, mona_model = make_clip(), make_clip()
    attach_adapter(lora_model, AdapterConfig(kind="lora"))
    attach_adapter(mona_model, AdapterConfig(kind="mona"))
    with pytest.raises(ModelLoadError):
        load_adapter_state_dict(mona_model, adapter_state_dict(lora_model))


def test_attaching_twice_fails_and_config_is_kept(make_clip):
    model = make_clip()
    config = AdapterConfig(kind="mona", mona_bottleneck=8)
    attach_adapter(model, config)
    assert attached_adapter_config(model) == config
    with pytest.raises(ValueError, match="already attached"):
        attach_adapter(model, AdapterConfig(kind="lora"))
    with pytest.raises(ValueError, match="no adapter"):
        adapter_state_dict(make_clip())


@pytest.mark.parametrize("kind", ("mona", "hybrid", "none"))
def test_merge_is_a_no_op_for_non_lora_kinds(kind, make_clip, pixels):
    model = make_clip()
    attach_adapter(model, AdapterConfig(kind=kind))
    perturb_adapter(model)
    before = vision_outputs(model, pixels).last_hidden_state
    merge_adapter(model)
    assert torch.equal(vision_outputs(model, pixels).last_hidden_state, before)
