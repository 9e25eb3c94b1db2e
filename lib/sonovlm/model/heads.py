"""Task heads on the adapted vision tower: text-conditioned segmentation and benign/malignant classification.

Both heads are light (for ViT-B/16 about 2.3 M parameters together, within the 2.4 M budget) and read
features the backbone computed once per frame, so changing the organ, the prompt or the task costs a
head forward only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SonoInputError
from .interaction import InteractionEncoder

#: Classes of the segmentation output: 0 background, 1 lesion.
SEGMENTATION_CLASSES = 2

#: Segmentation decoders and classification heads a :class:`HeadConfig` can name.
DECODERS = ("sonovlm", "reference")
CLASSIFIERS = ("sonovlm", "reference-mlp", "reference-linear")

#: Loss variants: SonoVLM's, or the reference code's settings.
LOSS_VARIANTS = ("sonovlm", "reference")


def default_levels(vision_layers: int) -> tuple[int, ...]:
    """1-based blocks the segmentation head reads by default: those after 1/4, 1/2, 3/4 of the depth.

    The reference code collects the outputs of blocks ``round(L * k / 4)`` counted from 0
    (``[3, 6, 9]`` for ViT-B's 12 blocks), i.e. the 1-based blocks ``round(L * k / 4) + 1``
    (4, 7, 10), capped at the last block and without repeats (2, 3, 4 for 4 blocks; 1, 2 for 2).
    """
    return tuple(sorted({min(vision_layers, round(vision_layers * k / 4) + 1) for k in (1, 2, 3)}))


def legacy_levels(vision_layers: int) -> tuple[int, ...]:
    """The blocks SonoVLM read before the levels were recorded in checkpoints (one block too
    shallow: 3, 6, 9 of 12; 1, 2, 3 of 4). Only for loading such checkpoints."""
    return tuple(sorted({max(1, round(vision_layers * k / 4)) for k in (1, 2, 3)}))


@dataclass(frozen=True)
class HeadConfig:
    """Sizes of the task heads.

    Attributes:
        width: fusion width of the segmentation head; ``None`` = ``min(512, vision width)`` (512 as in
            the paper for ViT-B/16).
        levels: 1-based vision blocks whose outputs feed the segmentation head, shallow to deep
            (block ``k`` is ``hidden_states[k]`` in transformers, whose index 0 is the embeddings);
            ``None`` = :func:`default_levels`: the blocks after 1/4, 1/2 and 3/4 of the depth, the
            4th, 7th and 10th of 12 as in the reference code (``i in [3, 6, 9]`` counted from 0);
            2, 3, 4 of the 4-block ``tiny``. A model records the resolved blocks in its config, so
            checkpoints carry them; a checkpoint without them predates the rule and is read with
            :func:`legacy_levels`.
        decoder_channels: channels entering the upsampling stages; each stage halves them, down
            to 16.
        dropout: dropout probability in both heads (also what MC-dropout samples).
        decoder: ``"sonovlm"`` (:class:`SegmentationHead`: FiLM text conditioning, convolutional
            upsampling, interaction prompts) or ``"reference"`` (:class:`ReferenceSegmentationHead`,
            the reference code's decoder: no text, no prompts).
        classifier: ``"sonovlm"`` (:class:`ClassificationHead`: zero-shot prompts plus a learned
            layer on the image embedding), ``"reference-mlp"`` (pooled fused patch tokens, Linear,
            ReLU, Dropout 0.1, Linear: the reference's OpenAI-CLIP head) or ``"reference-linear"``
            (pooled fused patch tokens, Dropout 0.5, Linear: its open_clip head).
    """

    width: int | None = None
    levels: tuple[int, ...] | None = None
    decoder_channels: int = 64
    dropout: float = 0.1
    decoder: str = "sonovlm"
    classifier: str = "sonovlm"

    def __post_init__(self) -> None:
        if self.levels is not None:
            object.__setattr__(self, "levels", tuple(int(v) for v in self.levels))
        if self.decoder not in DECODERS:
            raise SonoInputError(
                "heads.decoder", f"unknown {self.decoder!r}; choose one of {', '.join(DECODERS)}"
            )
        if self.classifier not in CLASSIFIERS:
            raise SonoInputError(
                "heads.classifier", f"unknown {self.classifier!r}; choose one of {', '.join(CLASSIFIERS)}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise SonoInputError("heads.dropout", f"must be in [0, 1), got {self.dropout}")

    def resolved_width(self, vision_width: int) -> int:
        return int(self.width) if self.width is not None else min(512, int(vision_width))

    def resolved_levels(self, vision_layers: int) -> tuple[int, ...]:
        """The 1-based blocks used for a tower of ``vision_layers`` blocks; checked against it."""
        if self.levels is None:
            levels = list(default_levels(vision_layers))
        else:
            levels = list(self.levels)
        if not levels or any(not 1 <= level <= vision_layers for level in levels):
            raise SonoInputError(
                "heads.levels", f"blocks {levels} do not fit a vision tower of {vision_layers} blocks"
            )
        if levels != sorted(set(levels)):
            raise SonoInputError("heads.levels", f"blocks must increase strictly, got {levels}")
        return tuple(levels)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["levels"] = list(self.levels) if self.levels is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeadConfig:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise SonoInputError("head config", f"unknown keys {sorted(unknown)}")
        return cls(**data)


class SegmentationHead(nn.Module):
    """Multi-level, text-conditioned segmentation decoder (2 classes).

    Patch tokens of several vision blocks (class token dropped) are each layer-normed and projected
    to ``width`` by a linear layer, then fused deep to shallow: ``x = p_deep``;
    ``x = p_shallower + Linear(GELU(x))`` for each shallower level. Conditioning is **FiLM**: the
    L2-normalised text embedding of the organ's target description (or of a free-text prompt) gives
    a per-channel scale and shift, ``x <- x * (1 + gamma) + beta``, applied to the deepest level and
    after every fusion step; the FiLM layer starts at zero, so an untrained head ignores the text.
    The fused ``grid x grid`` map is upsampled by stages of (bilinear x2, 3x3 convolution,
    GroupNorm, GELU) to a quarter of the input size (``log2(patch) - 2`` stages, at least one), a 1x1
    convolution gives 2-class logits, and these are resized bilinearly to the input size. Stopping
    the convolutions at a quarter keeps the head's cost a few per cent of the backbone's on a CPU
    (full-resolution 3x3 convolutions cost more than the fusion itself).

    Args:
        vision_width: width of the vision tower's hidden states (768 for ViT-B/16).
        text_dim: width of the text embedding (CLIP's projection dim, 512).
        grid: patch tokens per side (14).
        patch_size: pixels per patch side (16); a power of two.
        n_levels: number of vision blocks fed in.
        width: fusion width (512).
        decoder_channels: channels of the first upsampling stage.
        dropout: dropout on the fused tokens (MC-dropout samples it).
    """

    def __init__(
        self,
        vision_width: int,
        text_dim: int,
        grid: int,
        patch_size: int,
        n_levels: int,
        width: int = 512,
        decoder_channels: int = 64,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if patch_size < 2 or patch_size & (patch_size - 1):
            raise SonoInputError("backbone", f"patch size {patch_size} is not a power of two")
        self.grid = grid
        self.width = width
        self.level_norms = nn.ModuleList(nn.LayerNorm(vision_width) for _ in range(n_levels))
        self.level_projections = nn.ModuleList(nn.Linear(vision_width, width) for _ in range(n_levels))
        self.fusions = nn.ModuleList(nn.Linear(width, width) for _ in range(n_levels - 1))
        self.film = nn.Linear(text_dim, 2 * width)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.dropout = nn.Dropout(dropout)

        self.image_size = grid * patch_size
        stages = max(int(math.log2(patch_size)) - 2, 1)
        channels = [decoder_channels] + [max(decoder_channels >> i, 16) for i in range(1, stages + 1)]
        self.reduce = nn.Conv2d(width, channels[0], kernel_size=1)
        self.up = nn.ModuleList(
            nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
                nn.GroupNorm(min(8, c_out), c_out),
                nn.GELU(),
            )
            for c_in, c_out in zip(channels[:-1], channels[1:], strict=True)
        )
        self.classifier = nn.Conv2d(channels[-1], SEGMENTATION_CLASSES, kernel_size=1)
        # Built last so the layers above get the same initial weights as before it existed.
        self.interaction = InteractionEncoder(
            width=width, grid=grid, fine_size=grid * 2**stages, fine_channels=channels[-1]
        )

    def forward(
        self,
        levels: list[torch.Tensor],
        text_embedding: torch.Tensor,
        interaction: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``(B, 2, S, S)``.

        Args:
            levels: hidden states ``(B, 1 + grid**2, vision_width)`` of the chosen blocks, shallow
                to deep (class token first, as the tower returns them).
            text_embedding: ``(B, text_dim)`` or ``(text_dim,)``, L2-normalised.
            interaction: optional prompt maps ``(B, 4, S, S)`` or ``(4, S, S)`` (positive clicks,
                negative clicks, box, previous mask; :mod:`sonovlm.model.interaction`), added to
                the fused tokens and to the last upsampling stage through zero-initialised layers.
                ``None`` gives exactly the output of a head without interaction.
        """
        if len(levels) != len(self.level_projections):
            raise ValueError(f"expected {len(self.level_projections)} levels, got {len(levels)}")
        batch = levels[0].shape[0]
        if text_embedding.dim() == 1:
            text_embedding = text_embedding.expand(batch, -1)
        gamma, beta = self.film(text_embedding).unsqueeze(1).chunk(2, dim=-1)
        projected = [
            projection(norm(hidden[:, 1:, :]))
            for hidden, norm, projection in zip(levels, self.level_norms, self.level_projections, strict=True)
        ]
        x = projected[-1] * (1 + gamma) + beta
        for shallower, fusion in zip(reversed(projected[:-1]), self.fusions, strict=True):
            x = shallower + fusion(F.gelu(x))
            x = x * (1 + gamma) + beta
        fine = None
        if interaction is not None:
            maps = interaction.expand(batch, -1, -1, -1) if interaction.dim() == 3 else interaction
            coarse, fine = self.interaction(maps)
            x = x + coarse
        x = self.dropout(x)
        x = x.transpose(1, 2).reshape(batch, self.width, self.grid, self.grid)
        x = self.reduce(x)
        for stage in self.up:
            x = stage(x)
        if fine is not None:
            x = x + fine
        logits = self.classifier(x)
        size = (self.image_size, self.image_size)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class ClassificationHead(nn.Module):
    """Benign/malignant from the adapted image embedding: zero-shot prompts plus a learned head.

    ``logits = w_zs * s * cos(image, class_text) + Linear(Dropout(LayerNorm(image)))`` where
    ``class_text`` is the mean (re-normalised) embedding of the organ's class prompts, ``s`` CLIP's
    logit scale, ``w_zs`` a learned mixing weight starting at 1 and the linear layer starting at 0:
    before training the output *is* zero-shot, and both parts get gradients from the first step.
    Probabilities are ``softmax(logits / T)`` with a temperature ``T`` fitted on validation data by
    :meth:`calibrate` (1 until then).

    Args:
        embed_dim: width of the joint embedding (512).
        dropout: dropout on the embedding before the learned layer (MC-dropout samples it).
    """

    def __init__(self, embed_dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(embed_dim, 2)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.zero_shot_weight = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("temperature", torch.tensor(1.0))

    def zero_shot_logits(
        self, image_embedding: torch.Tensor, class_text: torch.Tensor, logit_scale: torch.Tensor
    ) -> torch.Tensor:
        """CLIP zero-shot logits ``(B, 2)``: ``s * cos`` of ``(B, D)`` images and ``(B, 2, D)`` classes."""
        return logit_scale * torch.einsum("bd,bkd->bk", image_embedding, class_text)

    def forward(
        self, image_embedding: torch.Tensor, class_text: torch.Tensor, logit_scale: torch.Tensor
    ) -> torch.Tensor:
        """Uncalibrated logits ``(B, 2)`` (benign, malignant); inputs L2-normalised."""
        zero_shot = self.zero_shot_logits(image_embedding, class_text, logit_scale)
        learned = self.linear(self.dropout(self.norm(image_embedding)))
        return self.zero_shot_weight * zero_shot + learned

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities ``(B, 2)`` of logits from :meth:`forward`."""
        return torch.softmax(logits / self.temperature, dim=-1)

    @property
    def is_zero_shot(self) -> bool:
        """True while the learned part is untouched (all zero, mixing weight 1): output = zero-shot."""
        return bool(
            torch.all(self.linear.weight == 0)
            and torch.all(self.linear.bias == 0)
            and self.zero_shot_weight.item() == 1.0
        )

    @torch.no_grad()
    def calibrate(self, logits: torch.Tensor, labels: torch.Tensor) -> float:
        """Fit the temperature on held-out ``logits (N, 2)`` and ``labels (N,)``; returns it.

        Temperature scaling (Guo et al., 2017): minimises the negative log-likelihood over ``T > 0``
        (optimised as ``log T`` with L-BFGS); accuracy does not change.
        """
        logits = logits.detach().float()
        labels = labels.detach().long()
        log_t = torch.zeros((), requires_grad=True)
        optimiser = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100)

        def closure() -> torch.Tensor:
            optimiser.zero_grad()
            with torch.enable_grad():
                loss = F.cross_entropy(logits / log_t.exp(), labels)
                loss.backward()
            return loss

        with torch.enable_grad():
            optimiser.step(closure)
        self.temperature.fill_(float(log_t.exp().clamp(0.05, 20.0)))
        return float(self.temperature)


def segmentation_loss(variant: str = "sonovlm") -> nn.Module:
    """MONAI DiceCE for ``(B, 2, S, S)`` logits and ``(B, 1, S, S)`` 0/1 targets.

    ``variant="reference"`` takes the reference code's settings: squared predictions in the Dice
    denominator and smoothing 1e-8 (MONAI's default is 1e-5, plain sums).
    """
    from monai.losses import DiceCELoss

    if variant not in LOSS_VARIANTS:
        raise SonoInputError("segmentation loss", f"unknown variant {variant!r}")
    if variant == "reference":
        return DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=True, smooth_nr=1e-8, smooth_dr=1e-8)
    return DiceCELoss(to_onehot_y=True, softmax=True)


def classification_loss(gamma: float = 2.0, variant: str = "sonovlm") -> nn.Module:
    """MONAI Focal loss for ``(B, 2)`` logits and ``(B, 1)`` class-index targets.

    SonoVLM's is the softmax focal loss (the classes are exclusive); ``variant="reference"`` is the
    reference code's ``FocalLoss(to_onehot_y=True)``: a sigmoid focal loss per class.
    """
    from monai.losses import FocalLoss

    if variant not in LOSS_VARIANTS:
        raise SonoInputError("classification loss", f"unknown variant {variant!r}")
    return FocalLoss(to_onehot_y=True, gamma=gamma, use_softmax=variant == "sonovlm")


class _ReferenceFusion(nn.Module):
    """The reference code's multi-level fusion: per level ``Linear(D, width)`` then
    ``LayerNorm, Linear, GELU, Linear``, summed deep to shallow; class token dropped.

    ``levels``: hidden states ``(B, 1 + grid**2, D)``, shallow to deep -> ``(B, width, grid, grid)``.
    """

    def __init__(self, vision_width: int, grid: int, n_levels: int, width: int) -> None:
        super().__init__()
        self.grid = grid
        self.width = width
        self.reduces = nn.ModuleList(nn.Linear(vision_width, width) for _ in range(n_levels))
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))
            for _ in range(n_levels)
        )

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        if len(levels) != len(self.reduces):
            raise ValueError(f"expected {len(self.reduces)} levels, got {len(levels)}")
        fused = None
        for hidden, reduce, block in zip(levels[::-1], self.reduces[::-1], self.blocks[::-1], strict=True):
            x = block(reduce(hidden[:, 1:, :]))
            fused = x if fused is None else fused + x
        assert fused is not None
        batch = fused.shape[0]
        return fused.transpose(1, 2).reshape(batch, self.width, self.grid, self.grid)


class ReferenceSegmentationHead(nn.Module):
    """The reference code's segmentation decoder (``--decoder reference``, part of ``--paper``).

    :class:`_ReferenceFusion` of the levels, bilinear upsampling of the ``grid x grid`` map to the
    input size, a 1x1 convolution to 2-class logits. It reads no text and no interaction prompts:
    ``text_embedding`` is accepted (same call as :class:`SegmentationHead`) and ignored.

    Args:
        vision_width, grid, patch_size, n_levels, width: as for :class:`SegmentationHead`.
    """

    def __init__(
        self, vision_width: int, grid: int, patch_size: int, n_levels: int, width: int = 512
    ) -> None:
        super().__init__()
        self.grid = grid
        self.width = width
        self.image_size = grid * patch_size
        self.fusion = _ReferenceFusion(vision_width, grid, n_levels, width)
        self.classifier = nn.Conv2d(width, SEGMENTATION_CLASSES, kernel_size=1)

    def forward(
        self,
        levels: list[torch.Tensor],
        text_embedding: torch.Tensor | None = None,
        interaction: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``(B, 2, S, S)``; ``interaction`` must be None (the reference takes no clicks)."""
        if interaction is not None:
            raise SonoInputError(
                "interaction",
                "the reference decoder (--decoder reference / --paper) takes no clicks or boxes",
            )
        x = self.fusion(levels)
        size = (self.image_size, self.image_size)
        return self.classifier(F.interpolate(x, size=size, mode="bilinear", align_corners=False))


class ReferenceClassificationHead(nn.Module):
    """The reference code's classification head on pooled fused patch tokens (no text).

    ``variant="reference-mlp"``: average pool, Linear(width, width), ReLU, Dropout(0.1),
    Linear(width, 2) (the reference's OpenAI-CLIP adapter); ``"reference-linear"``: average pool,
    Dropout(0.5), Linear(width, 2) (its open_clip adapter). It fuses the levels itself, with its own
    weights, as the reference trains a separate fusion for classification. Probabilities are
    ``softmax(logits / T)`` with the temperature fitted by :meth:`calibrate`, as for
    :class:`ClassificationHead`.
    """

    is_zero_shot = False

    def __init__(self, vision_width: int, grid: int, n_levels: int, width: int, variant: str) -> None:
        super().__init__()
        self.fusion = _ReferenceFusion(vision_width, grid, n_levels, width)
        if variant == "reference-mlp":
            layers: list[nn.Module] = [
                nn.Linear(width, width),
                nn.ReLU(),
                nn.Dropout(0.1),
                nn.Linear(width, 2),
            ]
        elif variant == "reference-linear":
            layers = [nn.Dropout(0.5), nn.Linear(width, 2)]
        else:
            raise SonoInputError("heads.classifier", f"{variant!r} is not a reference classifier")
        self.classifier = nn.Sequential(*layers)
        self.register_buffer("temperature", torch.tensor(1.0))

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """Uncalibrated logits ``(B, 2)`` from the levels' hidden states."""
        return self.classifier(self.fusion(levels).mean(dim=(2, 3)))

    probabilities = ClassificationHead.probabilities
    calibrate = ClassificationHead.calibrate


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
