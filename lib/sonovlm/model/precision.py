"""Reduced-precision inference: ``fp32``, ``bf16`` autocast or ``int8`` dynamic quantisation.

What ``--conf precision`` (``auto``, ``fp32``, ``bf16``, ``int8``) means for a
:class:`~sonovlm.model.Predictor`:

* ``fp32``: everything in float32, as trained.
* ``bf16``: the vision backbone and the heads run under ``torch.autocast(dtype=torch.bfloat16)``
  (matrix products and convolutions in bfloat16, accumulation and normalisation as autocast
  decides), and the backbone's frozen ``nn.Linear`` weights are stored in bfloat16 (the same
  outputs as casting them on every forward, which autocast does for weights that do not train,
  about 30 % less time). Worth it where the CPU multiplies bfloat16 natively (Intel AMX
  ``amx_bf16`` or ``avx512_bf16``); elsewhere oneDNN emulates it and it is slower than float32.
* ``int8``: the frozen ``nn.Linear`` layers of the vision backbone (attention projections and MLPs
  of every block) are replaced, in place, by dynamically quantised int8 layers
  (``torch.ao.quantization.quantize_dynamic``: int8 weights per tensor, activations quantised per
  call). Adapter layers stay float32: LoRA's A/B factors (peft ``lora.Linear`` keeps its
  ``base_layer`` quantised beside them, the LoRA is left unmerged) and Mona's projections, so the
  checkpoint's trainable state, its hash and in-place loading of a newly published checkpoint are
  unchanged. The text tower, the projections and the heads stay float32. CPU only.
* ``auto``: on CPU, ``bf16`` when the CPU has ``amx_bf16`` or ``avx512_bf16``, else ``int8`` when
  torch has a quantised engine, else ``fp32``; on CUDA, ``bf16`` when the GPU supports it, else
  ``fp32``.

Results returned to callers stay float32 (probabilities, masks, embeddings, cached features).
:class:`Precision` (requested, resolved, reason) is what ``/info`` and every reply report.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
from torch.ao.nn.quantized.modules.linear import LinearPackedParams

from ..errors import SonoInputError
from ..vocabulary import PRECISION_KEY, PRECISIONS

#: CPU flags (``/proc/cpuinfo``) meaning native bfloat16 arithmetic.
BF16_CPU_FLAGS: tuple[str, ...] = ("amx_bf16", "avx512_bf16")


@dataclass(frozen=True)
class CpuSupport:
    """What this CPU and this torch build offer for reduced precision.

    Attributes:
        flags: the :data:`BF16_CPU_FLAGS` found in ``/proc/cpuinfo`` (empty where it is unreadable).
        capability: ``torch.backends.cpu.get_cpu_capability()`` (``AVX512``, ``AVX2``, ...).
        quantized_engine: torch's quantised engine for int8 (``x86``, ``fbgemm``, ``qnnpack``), or None.
    """

    flags: tuple[str, ...]
    capability: str
    quantized_engine: str | None

    @property
    def bf16(self) -> bool:
        """Native bfloat16 matrix arithmetic (AMX or AVX512-BF16)."""
        return bool(self.flags)

    @property
    def int8(self) -> bool:
        return self.quantized_engine is not None


def _cpuinfo_flags(path: str | Path = "/proc/cpuinfo") -> set[str]:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.split(":", 1)[0].strip() in ("flags", "Features"):
            return set(line.split(":", 1)[1].split())
    return set()


@functools.lru_cache(maxsize=1)
def cpu_support() -> CpuSupport:
    """:class:`CpuSupport` of this machine (read once per process)."""
    flags = _cpuinfo_flags()
    try:
        capability = str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        capability = "unknown"
    engine = str(torch.backends.quantized.engine)
    if engine == "none":
        engines = [e for e in torch.backends.quantized.supported_engines if e != "none"]
        engine = engines[0] if engines else "none"
    return CpuSupport(
        flags=tuple(flag for flag in BF16_CPU_FLAGS if flag in flags),
        capability=capability,
        quantized_engine=None if engine == "none" else engine,
    )


@dataclass(frozen=True)
class Precision:
    """The precision a predictor runs at.

    Attributes:
        requested: what was asked (one of :data:`PRECISIONS`).
        resolved: what runs: ``fp32``, ``bf16`` or ``int8``.
        reason: why, in words (the CPU flags found, the device).
    """

    requested: str
    resolved: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"requested": self.requested, "resolved": self.resolved, "reason": self.reason}


def parse_precision(value: Any, key: str = PRECISION_KEY) -> str:
    """``value`` checked against :data:`PRECISIONS` (case and blanks ignored; blank = ``auto``).

    Raises:
        SonoInputError: naming ``key``, for any other value.
    """
    text = "auto" if value is None else str(value).strip().lower()
    text = text or "auto"
    aliases = {"float32": "fp32", "bfloat16": "bf16", "qint8": "int8"}
    text = aliases.get(text, text)
    if text not in PRECISIONS:
        raise SonoInputError(key, f"unknown precision {value!r}; choose one of {', '.join(PRECISIONS)}")
    return text


def _cpu_flags_text(support: CpuSupport) -> str:
    found = ", ".join(support.flags) if support.flags else f"no {' or '.join(BF16_CPU_FLAGS)}"
    return f"CPU {support.capability}, {found}"


def resolve_precision(
    requested: str | Precision, device: str | torch.device = "cpu", key: str = PRECISION_KEY
) -> Precision:
    """What ``requested`` means on ``device`` (see the module notes for ``auto``).

    Raises:
        SonoInputError: naming ``key``: an unknown value, ``int8`` on a GPU or without a quantised
            engine, ``bf16`` on a GPU without bfloat16.
    """
    if isinstance(requested, Precision):
        return requested
    requested = parse_precision(requested, key)
    device = torch.device(device)
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        if requested == "int8":
            raise SonoInputError(
                key, "int8 dynamic quantisation runs on the CPU only; use bf16 or fp32 on CUDA"
            )
        if requested == "bf16" and not bf16_ok:
            raise SonoInputError(key, f"bf16 asked for but {device} does not support bfloat16")
        if requested == "auto":
            if bf16_ok:
                return Precision("auto", "bf16", f"{device} supports bfloat16")
            return Precision("auto", "fp32", f"{device} without bfloat16")
        return Precision(requested, requested, f"requested, on {device}")
    if device.type != "cpu":
        if requested in ("auto", "fp32"):
            return Precision(requested, "fp32", f"reduced precision is not supported on {device.type}")
        raise SonoInputError(key, f"{requested} is supported on cpu and cuda only, not {device.type}")

    support = cpu_support()
    cpu = _cpu_flags_text(support)
    if requested == "auto":
        if support.bf16:
            return Precision("auto", "bf16", f"{cpu}: native bfloat16")
        if support.int8:
            return Precision("auto", "int8", f"{cpu}: no native bfloat16; int8 ({support.quantized_engine})")
        return Precision("auto", "fp32", f"{cpu}: no native bfloat16 and no quantised engine")
    if requested == "int8" and not support.int8:
        raise SonoInputError(key, "int8 asked for but this torch build has no quantised CPU engine")
    if requested == "bf16" and not support.bf16:
        return Precision("bf16", "bf16", f"requested; {cpu}: bfloat16 is emulated (slower than fp32)")
    if requested == "int8":
        return Precision("int8", "int8", f"requested; {cpu}, engine {support.quantized_engine}")
    return Precision(requested, requested, f"requested; {cpu}")


def autocast(precision: Precision, device: str | torch.device) -> contextlib.AbstractContextManager:
    """The context a forward runs in: bf16 autocast on ``device``'s type for ``bf16``, else nothing."""
    if precision.resolved != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def _names_no_key(state_dict: dict[str, Any], prefix: str) -> bool:
    return not any(key.startswith(prefix) for key in state_dict)


class _FrozenPackedParams(LinearPackedParams):
    """:class:`LinearPackedParams` that a state dict without its keys leaves as it is."""

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        if _names_no_key(state_dict, prefix):
            return
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class FrozenInt8Linear(DynamicLinear):
    """torch's dynamic int8 ``Linear`` for a frozen backbone layer.

    The same layer, except that loading a partial state dict that does not name it (peft loads
    LoRA's A/B into the whole model with ``strict=False``) leaves it as it is instead of failing
    on its missing ``scale``: a frozen layer's weights never come from a checkpoint.
    """

    def __init__(self, in_features: int, out_features: int, bias_: bool = True, dtype=torch.qint8) -> None:
        super().__init__(in_features, out_features, bias_=bias_, dtype=dtype)
        packed = _FrozenPackedParams(dtype)
        packed.set_weight_bias(*self._packed_params._weight_bias())
        self._packed_params = packed

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        if _names_no_key(state_dict, prefix):
            return
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def quantized_linears(module: nn.Module) -> list[str]:
    """Names of the int8 dynamic ``Linear`` layers inside ``module`` (empty when none)."""
    return [name for name, sub in module.named_modules() if isinstance(sub, DynamicLinear)]


def backbone_linears(model: nn.Module) -> list[str]:
    """Names (relative to ``model.clip.vision_model``) of the frozen ``nn.Linear`` layers of the
    vision backbone that int8 quantises: not the adapter's (LoRA A/B, Mona), not already quantised.

    For a peft LoRA projection that is its ``base_layer``.
    """
    from .adapters import adapter_parameters

    adapter = {id(p) for p in adapter_parameters(model.clip)}
    return [
        name
        for name, sub in model.clip.vision_model.named_modules()
        if type(sub) is nn.Linear and not any(id(p) in adapter for p in sub.parameters())
    ]


@contextlib.contextmanager
def _quiet_quantization() -> Iterator[None]:
    # torch.ao.quantization warns that it will move to torchao; it is what this torch ships.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=r".*quantize_per_tensor.*deprecated.*")
        yield


def quantize_backbone(model: nn.Module) -> list[str]:
    """Quantise the vision backbone's frozen linear layers to int8 in place (idempotent).

    A merged LoRA is unmerged first (its update goes back into the float32 factors, which stay
    beside the quantised base layers), so that later checkpoints still load into the model.

    Returns:
        The names of every int8 layer in the vision backbone afterwards.

    Raises:
        SonoInputError: the model is not on the CPU (``--conf precision``).
    """
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    reference = model.clip.visual_projection.weight
    if reference.device.type != "cpu":
        raise SonoInputError(PRECISION_KEY, f"int8 needs the model on the CPU, not {reference.device}")
    if getattr(model, "adapter_merged", False):
        model.unmerge_adapter()
    vision = model.clip.vision_model
    names = backbone_linears(model)
    if names:
        with _quiet_quantization():
            quantize_dynamic(
                vision,
                {name: default_dynamic_qconfig for name in names},
                mapping={nn.Linear: FrozenInt8Linear},
                inplace=True,
            )
    return quantized_linears(vision)


def bf16_linears(module: nn.Module) -> list[str]:
    """Names of the ``nn.Linear`` layers inside ``module`` whose weight is bfloat16."""
    return [
        name
        for name, sub in module.named_modules()
        if type(sub) is nn.Linear and sub.weight.dtype == torch.bfloat16
    ]


def cast_backbone_bf16(model: nn.Module) -> list[str]:
    """Store the vision backbone's frozen linear layers in bfloat16, in place (idempotent).

    Autocast would cast those weights to bfloat16 on every forward anyway (it caches casts only of
    weights that require grad): the outputs are the same, the forward is faster and the
    backbone's linear weights take half the memory. Adapter layers and heads stay float32 (they
    are the checkpoint's state). Only valid under :func:`autocast`.

    Returns:
        The names of the bfloat16 layers of the vision backbone afterwards.
    """
    vision = model.clip.vision_model
    modules = dict(vision.named_modules())
    for name in backbone_linears(model):
        modules[name].to(torch.bfloat16)
    return bf16_linears(vision)


def apply_precision(model: nn.Module, precision: Precision) -> dict[str, Any]:
    """Prepare ``model`` (a :class:`~sonovlm.model.SonoVLM`) for ``precision``, in place.

    ``int8`` quantises the backbone's frozen linear layers (:func:`quantize_backbone`), ``bf16``
    stores them in bfloat16 (:func:`cast_backbone_bf16`; the forwards run under
    :func:`autocast`), ``fp32`` changes nothing. Neither change can be undone without rounding:
    a model prepared for one reduced precision serves only that one.

    Returns:
        ``{"layers": N}``: the backbone layers converted (0 for fp32).

    Raises:
        SonoInputError: a model whose backbone was already converted to another precision
            (load the model again).
    """
    vision = model.clip.vision_model
    converted = {"int8": quantized_linears(vision), "bf16": bf16_linears(vision)}
    for name, layers in converted.items():
        if layers and name != precision.resolved:
            raise SonoInputError(
                PRECISION_KEY,
                f"{precision.resolved} asked for a model whose backbone is already {name} "
                f"({len(layers)} layers); load the model again",
            )
    if precision.resolved == "int8":
        return {"layers": len(quantize_backbone(model))}
    if precision.resolved == "bf16":
        return {"layers": len(cast_backbone_bf16(model))}
    return {"layers": 0}
