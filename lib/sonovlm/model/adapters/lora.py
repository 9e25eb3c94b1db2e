"""LoRA on the vision tower's attention projections, through peft.

peft's ``inject_adapter_in_model`` puts ``lora.Linear`` wrappers in place of the chosen projections
of the vision encoder only (a regular expression on the module path keeps the text tower out), so
the CLIPModel stays a CLIPModel rather than a PeftModel. The adapter's name inside peft is
:data:`LORA_ADAPTER_NAME`; saved keys carry no adapter name (peft's ``get_peft_model_state_dict``).
"""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from transformers import CLIPModel

from sonovlm.model.adapters.config import AdapterConfig

LORA_ADAPTER_NAME = "default"


def vision_target_pattern(target_modules: tuple[str, ...]) -> str:
    """peft ``target_modules`` regex (matched in full) for the given projections of the vision encoder."""
    names = "|".join(sorted(target_modules))
    return rf"vision_model\.encoder\.layers\.\d+\.self_attn\.({names})"


def inject_lora(clip_model: CLIPModel, config: AdapterConfig) -> None:
    """Wrap the vision attention projections named in ``config`` with LoRA (B = 0: an identity at first)."""
    lora_config = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=vision_target_pattern(config.lora_target_modules),
        bias="none",
        use_rslora=config.lora_rslora,
    )
    inject_adapter_in_model(lora_config, clip_model, adapter_name=LORA_ADAPTER_NAME)


def lora_layers(clip_model: torch.nn.Module) -> list[LoraLayer]:
    """Every peft LoRA layer in the model, in module order."""
    return [module for module in clip_model.modules() if isinstance(module, LoraLayer)]


def lora_state_dict(clip_model: CLIPModel) -> dict[str, torch.Tensor]:
    """LoRA A/B weights keyed like ``vision_model.encoder.layers.0.self_attn.q_proj.lora_A.weight``."""
    return get_peft_model_state_dict(clip_model, adapter_name=LORA_ADAPTER_NAME)


def load_lora_state_dict(clip_model: CLIPModel, state: dict[str, torch.Tensor]) -> None:
    """Copy LoRA weights in; the caller has already checked keys and shapes."""
    result = set_peft_model_state_dict(clip_model, state, adapter_name=LORA_ADAPTER_NAME)
    if result.unexpected_keys:
        raise RuntimeError(f"peft did not place LoRA weights {sorted(result.unexpected_keys)}")


def merge_lora(clip_model: CLIPModel) -> None:
    """Add B·A·scale into each frozen projection weight; the wrappers then only call the base layer."""
    for layer in lora_layers(clip_model):
        if not layer.merged:
            layer.merge(adapter_names=[LORA_ADAPTER_NAME])


def unmerge_lora(clip_model: CLIPModel) -> None:
    """Undo :func:`merge_lora` (subtracts the update again, exact up to rounding)."""
    for layer in lora_layers(clip_model):
        if layer.merged:
            layer.unmerge()


def is_lora_merged(clip_model: CLIPModel) -> bool:
    """True when the LoRA updates sit inside the frozen weights."""
    return any(layer.merged for layer in lora_layers(clip_model))
