"""The adapter's configuration: which kind, and its sizes.

It is stored as JSON in every checkpoint (``to_dict`` / ``from_dict``), so an adapter can be rebuilt
exactly onto a fresh backbone before its weights are loaded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from sonovlm.errors import SonoInputError
from sonovlm.vocabulary import ADAPTER_KINDS

HYBRID_VARIANTS = ("sonovlm", "reference")


@dataclass(frozen=True)
class AdapterConfig:
    """Which adapter goes into the vision tower, and how big it is.

    Attributes:
        kind: ``"lora"`` (peft LoRA on the attention projections), ``"mona"`` (multi-scale convolutional
            adapter per block), ``"hybrid"`` (Mona plus a frequency-domain filter and noise-aware kernel
            weighting) or ``"none"`` (frozen backbone, nothing trainable in it).
        lora_rank: LoRA rank r.
        lora_alpha: LoRA alpha; the update is scaled by ``alpha / rank``. The default 16 with rank 16
            gives a scale of 1, so the rank can be changed without retuning the learning rate much.
        lora_dropout: dropout on the LoRA input.
        lora_target_modules: names of the vision attention projections that get LoRA
            (any of ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``).
        mona_bottleneck: Mona's bottleneck width (64 in the paper for the 768-wide ViT-B). On narrow
            backbones it is capped at a quarter of the width (a 64-wide test backbone gets 16).
        mona_kernel_sizes: the depthwise kernels averaged in Mona's middle (odd sizes).
        mona_dropout: dropout after Mona's GELU (0.1 as in the Mona code).
        lora_rslora: scale LoRA's update by ``alpha / sqrt(rank)`` (rank-stabilised LoRA, as the
            reference code does) instead of ``alpha / rank``.
        hybrid_variant: ``"sonovlm"`` (:class:`~sonovlm.model.adapters.hybrid.HybridMona`: complex
            filter per frequency, mean-and-spread gate starting at equal weights) or ``"reference"``
            (:class:`~sonovlm.model.adapters.hybrid.ReferenceHybridMona`: the reference code's
            per-channel spectral gain and pooled-mean gate).
    """

    kind: str = "lora"
    lora_rank: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    mona_bottleneck: int = 64
    mona_kernel_sizes: tuple[int, ...] = (3, 5, 7)
    mona_dropout: float = 0.1
    lora_rslora: bool = False
    hybrid_variant: str = "sonovlm"

    def __post_init__(self) -> None:
        # JSON round trips turn tuples into lists; keep the dataclass hashable and comparable.
        object.__setattr__(self, "lora_target_modules", tuple(self.lora_target_modules))
        object.__setattr__(self, "mona_kernel_sizes", tuple(int(k) for k in self.mona_kernel_sizes))
        if self.kind not in ADAPTER_KINDS:
            raise SonoInputError(
                "adapter", f"unknown adapter kind {self.kind!r}; choose one of {', '.join(ADAPTER_KINDS)}"
            )
        if self.lora_rank < 1:
            raise SonoInputError("adapter.lora_rank", f"must be at least 1, got {self.lora_rank}")
        allowed = {"q_proj", "k_proj", "v_proj", "out_proj"}
        if not self.lora_target_modules or not set(self.lora_target_modules) <= allowed:
            raise SonoInputError(
                "adapter.lora_target_modules",
                f"must be a non-empty subset of {sorted(allowed)}, got {list(self.lora_target_modules)}",
            )
        if self.mona_bottleneck < 1:
            raise SonoInputError("adapter.mona_bottleneck", f"must be at least 1, got {self.mona_bottleneck}")
        if not self.mona_kernel_sizes or any(k < 1 or k % 2 == 0 for k in self.mona_kernel_sizes):
            raise SonoInputError(
                "adapter.mona_kernel_sizes", f"must be odd sizes, got {list(self.mona_kernel_sizes)}"
            )
        if self.hybrid_variant not in HYBRID_VARIANTS:
            raise SonoInputError(
                "adapter.hybrid_variant",
                f"unknown {self.hybrid_variant!r}; choose one of {', '.join(HYBRID_VARIANTS)}",
            )
        for name in ("lora_dropout", "mona_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise SonoInputError(f"adapter.{name}", f"must be in [0, 1), got {value}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (tuples become lists)."""
        data = asdict(self)
        data["lora_target_modules"] = list(self.lora_target_modules)
        data["mona_kernel_sizes"] = list(self.mona_kernel_sizes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (a checkpoint from another version)."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise SonoInputError("adapter config", f"unknown keys {sorted(unknown)}")
        return cls(**data)
