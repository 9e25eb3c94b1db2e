"""Interaction prompts (clicks, a box, a previous mask) as maps in model space, and their encoder.

A user's interaction on one frame is an :class:`Interaction` in frame pixels (x = column, y = row,
0-based; box ``[x0, y0, x1, y1]`` with exclusive ends; previous mask ``(rows, cols)``, non-zero =
lesion). :func:`encode_interaction` maps it through the frame's :class:`FrameGeometry` (the same
crop, pad and resize as the image) to :data:`INTERACTION_CHANNELS` prompt maps ``(4, S, S)``:

0. positive clicks: a Gaussian bump per click (``sigma = S / 64`` model pixels, peak 1), max-combined;
1. negative clicks: the same;
2. box: 1 inside the box, 0 outside (soft at the edges after resizing);
3. previous mask: the mask, soft after resizing.

:class:`InteractionEncoder` turns these maps into additive corrections of the segmentation head
(at the fused token grid and at the last upsampling stage). Its output layers start at zero, so a
head that never saw interactions gives the same output with or without them; training with
simulated interactions (:mod:`sonovlm.model.click_simulation`) teaches it to use them. The backbone
features do not depend on the prompts: an interaction re-runs only the head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SonoInputError
from .preprocess import FrameGeometry, to_model_space

#: Prompt-map channels: positive clicks, negative clicks, box, previous mask.
INTERACTION_CHANNELS = 4
POSITIVE, NEGATIVE, BOX, PREVIOUS_MASK = range(INTERACTION_CHANNELS)

#: Smallest box side accepted, frame pixels (a thinner box is a slipped click, not a box).
MIN_BOX_SIDE = 2


@dataclass
class Interaction:
    """What the user gave on one frame, in frame pixels.

    Attributes:
        positive: ``[(x, y), ...]`` clicks on the lesion.
        negative: ``[(x, y), ...]`` clicks on background.
        box: ``(x0, y0, x1, y1)`` around the lesion, ends exclusive, or None.
        previous_mask: ``(rows, cols)`` mask to correct or propagate (non-zero = lesion), or None.
    """

    positive: list[tuple[float, float]] = field(default_factory=list)
    negative: list[tuple[float, float]] = field(default_factory=list)
    box: tuple[int, int, int, int] | None = None
    previous_mask: np.ndarray | None = None

    @property
    def is_empty(self) -> bool:
        return not self.positive and not self.negative and self.box is None and self.previous_mask is None

    def validate(self, geometry: FrameGeometry) -> None:
        """Raise :class:`SonoInputError` for prompts that do not fit the frame.

        Clicks must lie inside the ultrasound region the model sees (``geometry.bbox``); the box
        must cover at least :data:`MIN_BOX_SIDE` pixels each way inside the frame; the previous
        mask must have the frame's shape.
        """
        rows, cols = geometry.frame_shape
        x0, y0, x1, y1 = geometry.bbox
        for name, points in (("foreground", self.positive), ("background", self.negative)):
            for x, y in points:
                if not (0 <= x < cols and 0 <= y < rows):
                    raise SonoInputError(
                        name, f"point (x={x:g}, y={y:g}) is outside the {rows} x {cols} image"
                    )
                if not (x0 <= x < x1 and y0 <= y < y1):
                    raise SonoInputError(
                        name,
                        f"point (x={x:g}, y={y:g}) is outside the ultrasound region "
                        f"[{x0}, {y0}, {x1}, {y1}] (x0, y0, x1, y1)",
                    )
        if self.box is not None:
            clipped = clip_box(self.box, (rows, cols))
            if clipped[2] - clipped[0] < MIN_BOX_SIDE or clipped[3] - clipped[1] < MIN_BOX_SIDE:
                raise SonoInputError(
                    "roi",
                    f"box {list(self.box)} (x0, y0, x1, y1) covers less than {MIN_BOX_SIDE} x "
                    f"{MIN_BOX_SIDE} pixels of the {rows} x {cols} image",
                )
        if self.previous_mask is not None:
            shape = tuple(np.shape(self.previous_mask))
            if shape != (rows, cols):
                raise SonoInputError("label", f"previous mask is {shape}; the frame is ({rows}, {cols})")


def clip_box(box: Sequence[float], frame_shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` rounded and clipped to a frame of ``(rows, cols)``."""
    rows, cols = frame_shape
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    return max(x0, 0), max(y0, 0), min(x1, cols), min(y1, rows)


def frame_to_model_point(x: float, y: float, geometry: FrameGeometry) -> tuple[float, float]:
    """Frame pixel centre ``(x, y)`` -> model-space pixel coordinates (same convention)."""
    x0, y0, _, _ = geometry.bbox
    top, left = geometry.offset
    scale = geometry.scale
    return (x - x0 + left + 0.5) * scale - 0.5, (y - y0 + top + 0.5) * scale - 0.5


def point_sigma(size: int) -> float:
    """Width (model pixels) of a click's Gaussian bump in a model space of side ``size``."""
    return max(size / 64.0, 1.0)


def render_points(points: Sequence[tuple[float, float]], size: int) -> torch.Tensor:
    """``(size, size)`` float32: max over points of ``exp(-d^2 / 2 sigma^2)``; zeros without points."""
    if not len(points):
        return torch.zeros(size, size)
    coords = torch.arange(size, dtype=torch.float32)
    xy = torch.as_tensor(np.asarray(points, dtype=np.float32)).reshape(-1, 2)
    dx = coords[None, None, :] - xy[:, 0, None, None]
    dy = coords[None, :, None] - xy[:, 1, None, None]
    sigma = point_sigma(size)
    return torch.exp(-(dx**2 + dy**2) / (2 * sigma**2)).amax(dim=0)


def render_box(box: Sequence[float] | None, size: int) -> torch.Tensor:
    """``(size, size)`` float32: 1 inside a model-space box ``(x0, y0, x1, y1)`` (ends exclusive)."""
    out = torch.zeros(size, size)
    if box is not None:
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
        out[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = 1.0
    return out


def prompt_maps(
    size: int,
    positive: Sequence[tuple[float, float]] = (),
    negative: Sequence[tuple[float, float]] = (),
    box: Sequence[float] | None = None,
    previous_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Prompt maps ``(4, size, size)`` from prompts already in model space (training's form)."""
    previous = torch.zeros(size, size) if previous_mask is None else previous_mask.reshape(size, size).float()
    return torch.stack(
        [render_points(positive, size), render_points(negative, size), render_box(box, size), previous.cpu()]
    )


def encode_interaction(interaction: Interaction, geometry: FrameGeometry) -> torch.Tensor:
    """The prompt maps ``(4, S, S)`` float32 of a frame-space interaction (validated first).

    Raises:
        SonoInputError: a click outside the image or its ultrasound region, an empty box, a
            previous mask of the wrong shape.
    """
    interaction.validate(geometry)
    size = geometry.image_size
    positive = [frame_to_model_point(x, y, geometry) for x, y in interaction.positive]
    negative = [frame_to_model_point(x, y, geometry) for x, y in interaction.negative]
    maps = prompt_maps(size, positive, negative)
    if interaction.box is not None:
        x0, y0, x1, y1 = clip_box(interaction.box, geometry.frame_shape)
        rect = np.zeros(geometry.frame_shape, np.float32)
        rect[y0:y1, x0:x1] = 1.0
        maps[BOX] = to_model_space(rect, geometry)
    if interaction.previous_mask is not None:
        previous = (np.asarray(interaction.previous_mask) != 0).astype(np.float32)
        maps[PREVIOUS_MASK] = to_model_space(previous, geometry)
    return maps


class InteractionEncoder(nn.Module):
    """Prompt maps ``(B, 4, S, S)`` -> corrections for the segmentation head.

    Two 3x3 convolutions read the maps resized to the head's last stage (``fine_size``, a quarter
    of ``S`` for ViT-B/16), a 1x1 convolution gives the correction of that stage's
    ``fine_channels``; average pooling to the token grid, a 3x3 convolution and a linear layer give
    the correction of the ``width`` fused tokens. Both output layers start at zero. About 60 k
    parameters at ViT-B/16 sizes.

    Args:
        width: fusion width of the head (tokens).
        grid: tokens per side.
        fine_size: side of the head's last upsampling stage.
        fine_channels: channels of that stage.
        hidden: channels of the map features.
    """

    def __init__(self, width: int, grid: int, fine_size: int, fine_channels: int, hidden: int = 32) -> None:
        super().__init__()
        self.grid = grid
        self.fine_size = fine_size
        self.features = nn.Sequential(
            nn.Conv2d(INTERACTION_CHANNELS, hidden, kernel_size=3, padding=1),
            nn.GELU(),
            nn.Conv2d(hidden, hidden, kernel_size=3, padding=1),
            nn.GELU(),
        )
        self.fine_out = nn.Conv2d(hidden, fine_channels, kernel_size=1)
        self.coarse = nn.Sequential(nn.Conv2d(hidden, 2 * hidden, kernel_size=3, padding=1), nn.GELU())
        self.coarse_out = nn.Linear(2 * hidden, width)
        for layer in (self.fine_out, self.coarse_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(coarse (B, grid**2, width), fine (B, fine_channels, fine_size, fine_size))``."""
        maps = maps.to(self.fine_out.weight.dtype)
        if maps.shape[-1] != self.fine_size:
            maps = F.interpolate(
                maps,
                size=(self.fine_size, self.fine_size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
        features = self.features(maps)
        fine = self.fine_out(features)
        pooled = F.adaptive_avg_pool2d(features, self.grid)
        coarse = self.coarse_out(self.coarse(pooled).flatten(2).transpose(1, 2))
        return coarse, fine

    @property
    def is_trained(self) -> bool:
        """False while both output layers are still all zero (the prompts have no effect)."""
        layers = (self.fine_out, self.coarse_out)
        return any(bool(p.detach().abs().sum() > 0) for layer in layers for p in layer.parameters())
