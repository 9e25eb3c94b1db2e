"""Attach an adapter to a CLIP model's vision tower, and save, load and merge its weights.

Everything happens in place on a ``transformers.CLIPModel``: every backbone parameter (both towers,
projections, logit scale) is frozen, the adapter goes into the vision tower only, and only the
adapter's parameters are trainable. The attached :class:`AdapterConfig` is kept on the model as
``clip_model.sonovlm_adapter_config``.

Where the adapters sit:

- ``lora``: peft ``lora.Linear`` wrappers replace the chosen attention projections
  (see :mod:`sonovlm.model.adapters.lora`).
- ``mona`` / ``hybrid``: one adapter per encoder block, a submodule ``mona`` of each
  ``CLIPEncoderLayer``, applied to the block's output by a forward hook registered first
  (``prepend=True``). transformers 5 records ``hidden_states`` with its own forward hooks on the
  encoder layers; ours runs before them whenever they were installed, so ``hidden_states[k]``
  (k >= 1) and ``last_hidden_state`` are the adapted ones.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPModel

from sonovlm.errors import ModelLoadError
from sonovlm.model.adapters import lora
from sonovlm.model.adapters.config import AdapterConfig
from sonovlm.model.adapters.hybrid import HybridMona, ReferenceHybridMona
from sonovlm.model.adapters.mona import Mona, mona_bottleneck_width

CONFIG_ATTRIBUTE = "sonovlm_adapter_config"
BLOCK_ADAPTER_ATTRIBUTE = "mona"


def _vision_layers(clip_model: CLIPModel) -> nn.ModuleList:
    return clip_model.vision_model.encoder.layers


def _run_block_adapter(layer: nn.Module, args: tuple, output: torch.Tensor | tuple) -> torch.Tensor | tuple:
    """Forward hook: pass the encoder block's output through its Mona adapter."""
    adapter = getattr(layer, BLOCK_ADAPTER_ATTRIBUTE)
    if isinstance(output, tuple):
        return (adapter(output[0]), *output[1:])
    return adapter(output)


def attached_adapter_config(clip_model: CLIPModel) -> AdapterConfig:
    """The config of the adapter attached by :func:`attach_adapter`; ValueError when there is none."""
    config = getattr(clip_model, CONFIG_ATTRIBUTE, None)
    if config is None:
        raise ValueError("no adapter is attached to this CLIP model; call attach_adapter first")
    return config


def attach_adapter(clip_model: CLIPModel, config: AdapterConfig) -> None:
    """Freeze the whole backbone and inject the configured adapter into its vision tower, in place.

    The adapted model starts equal to the frozen one (LoRA's B and Mona's ``project2`` are zero).
    Adapter modules take the device, dtype and train/eval mode of the vision tower.

    Raises:
        ValueError: an adapter is already attached.
    """
    if getattr(clip_model, CONFIG_ATTRIBUTE, None) is not None:
        raise ValueError("an adapter is already attached to this CLIP model")
    clip_model.requires_grad_(False)
    reference = clip_model.vision_model.embeddings.patch_embedding.weight
    if config.kind == "lora":
        lora.inject_lora(clip_model, config)
    elif config.kind in ("mona", "hybrid"):
        vision_config = clip_model.config.vision_config
        width = vision_config.hidden_size
        bottleneck = mona_bottleneck_width(config.mona_bottleneck, width)
        side = vision_config.image_size // vision_config.patch_size
        for layer in _vision_layers(clip_model):
            if config.kind == "mona":
                adapter = Mona(width, bottleneck, config.mona_kernel_sizes, config.mona_dropout)
            elif config.hybrid_variant == "reference":
                adapter = ReferenceHybridMona(
                    width, bottleneck, config.mona_kernel_sizes, config.mona_dropout
                )
            else:
                adapter = HybridMona(
                    width, bottleneck, (side, side), config.mona_kernel_sizes, config.mona_dropout
                )
            adapter.to(device=reference.device, dtype=reference.dtype).train(layer.training)
            layer.add_module(BLOCK_ADAPTER_ATTRIBUTE, adapter)
            layer.register_forward_hook(_run_block_adapter, prepend=True)
    setattr(clip_model, CONFIG_ATTRIBUTE, config)
    for parameter in adapter_parameters(clip_model):
        parameter.requires_grad_(True)


def adapter_parameters(clip_model: CLIPModel) -> list[nn.Parameter]:
    """The adapter's parameters, in module order (empty for ``none``)."""
    kind = attached_adapter_config(clip_model).kind
    if kind == "lora":
        return [
            parameter
            for layer in lora.lora_layers(clip_model)
            for part in (layer.lora_A, layer.lora_B)
            for parameter in part[lora.LORA_ADAPTER_NAME].parameters()
        ]
    if kind in ("mona", "hybrid"):
        return [
            parameter
            for layer in _vision_layers(clip_model)
            for parameter in getattr(layer, BLOCK_ADAPTER_ATTRIBUTE).parameters()
        ]
    return []


def adapter_state_dict(clip_model: CLIPModel) -> dict[str, torch.Tensor]:
    """The adapter's weights only, with stable keys (empty for ``none``).

    LoRA keys are peft's, without the adapter name
    (``vision_model.encoder.layers.0.self_attn.q_proj.lora_A.weight``);
    Mona keys are the module paths (``vision_model.encoder.layers.0.mona.project1.weight``).
    """
    kind = attached_adapter_config(clip_model).kind
    if kind == "lora":
        return dict(lora.lora_state_dict(clip_model))
    if kind in ("mona", "hybrid"):
        state: dict[str, torch.Tensor] = {}
        for index, layer in enumerate(_vision_layers(clip_model)):
            prefix = f"vision_model.encoder.layers.{index}.{BLOCK_ADAPTER_ATTRIBUTE}."
            for key, tensor in getattr(layer, BLOCK_ADAPTER_ATTRIBUTE).state_dict().items():
                state[prefix + key] = tensor
        return state
    return {}


def load_adapter_state_dict(clip_model: CLIPModel, state: dict[str, torch.Tensor]) -> None:
    """Copy adapter weights saved by :func:`adapter_state_dict` into an attached adapter of the same config.

    Raises:
        ModelLoadError: keys missing or unexpected, or shapes that differ (names the keys).
        ValueError: the LoRA adapter is merged (loading would not change the merged weights).
    """
    config = attached_adapter_config(clip_model)
    if config.kind == "lora" and lora.is_lora_merged(clip_model):
        raise ValueError("the LoRA adapter is merged; load its weights before merge_adapter")
    expected = adapter_state_dict(clip_model)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(
        f"{key} {tuple(state[key].shape)} != {tuple(expected[key].shape)}"
        for key in set(expected) & set(state)
        if state[key].shape != expected[key].shape
    )
    if missing or unexpected or wrong_shape:
        problems = []
        if missing:
            problems.append(f"missing keys {_abbreviate(missing)}")
        if unexpected:
            problems.append(f"unexpected keys {_abbreviate(unexpected)}")
        if wrong_shape:
            problems.append(f"wrong shapes {_abbreviate(wrong_shape)}")
        raise ModelLoadError(
            f"adapter weights do not fit the {config.kind!r} adapter: " + "; ".join(problems)
        )
    if config.kind == "lora":
        lora.load_lora_state_dict(clip_model, state)
    elif config.kind in ("mona", "hybrid"):
        for index, layer in enumerate(_vision_layers(clip_model)):
            prefix = f"vision_model.encoder.layers.{index}.{BLOCK_ADAPTER_ATTRIBUTE}."
            block_state = {
                key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)
            }
            getattr(layer, BLOCK_ADAPTER_ATTRIBUTE).load_state_dict(block_state, strict=True)


def merge_adapter(clip_model: CLIPModel) -> None:
    """Prepare the adapter for inference.

    ``lora``: adds each update into its frozen projection weight (same outputs up to rounding; the
    wrappers then call only the base layer, so the extra matrix products are gone). Idempotent;
    :func:`unmerge_adapter` undoes it. ``mona`` / ``hybrid``: nothing to do and nothing changes: they
    are non-linear, so they cannot fold into the backbone, and their branches already run as one fused
    depthwise convolution. ``none``: nothing to do.
    """
    if attached_adapter_config(clip_model).kind == "lora":
        lora.merge_lora(clip_model)


def unmerge_adapter(clip_model: CLIPModel) -> None:
    """Undo :func:`merge_adapter` (LoRA only; a no-op for the others)."""
    if attached_adapter_config(clip_model).kind == "lora":
        lora.unmerge_lora(clip_model)


def _abbreviate(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{f', ... ({len(items) - limit} more)' if len(items) > limit else ''}]"
