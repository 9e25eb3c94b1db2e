"""Adapters for the frozen CLIP vision tower: ``lora``, ``mona``, ``hybrid`` or ``none``.

Use :func:`attach_adapter` on a ``transformers.CLIPModel`` with an :class:`AdapterConfig`; the
backbone is frozen and only the adapter trains. :func:`adapter_state_dict` /
:func:`load_adapter_state_dict` move the adapter's weights to and from a checkpoint;
:func:`merge_adapter` folds LoRA into the frozen weights for inference.
"""

from __future__ import annotations

from sonovlm.model.adapters.config import ADAPTER_KINDS, AdapterConfig
from sonovlm.model.adapters.hybrid import HybridMona, ReferenceHybridMona
from sonovlm.model.adapters.inject import (
    adapter_parameters,
    adapter_state_dict,
    attach_adapter,
    attached_adapter_config,
    load_adapter_state_dict,
    merge_adapter,
    unmerge_adapter,
)
from sonovlm.model.adapters.mona import Mona, MultiScaleConv, patch_grid

__all__ = [
    "ADAPTER_KINDS",
    "AdapterConfig",
    "HybridMona",
    "Mona",
    "MultiScaleConv",
    "ReferenceHybridMona",
    "adapter_parameters",
    "adapter_state_dict",
    "attach_adapter",
    "attached_adapter_config",
    "load_adapter_state_dict",
    "merge_adapter",
    "patch_grid",
    "unmerge_adapter",
]
