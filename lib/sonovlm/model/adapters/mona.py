"""Mona: the multi-scale convolutional adapter of the NextGen-UIA paper (after Yin et al., "Mona").

One :class:`Mona` sits at the end of every vision encoder block (after the MLP's residual add), on
the residual stream. For a block output of shape (batch, 1 + patches, width) it keeps the class
token as it is and changes only the patch tokens::

    x   = LayerNorm(patches) * gamma + patches * gammax          # scaled LayerNorm, gamma = 1e-6 at first
    z   = project1(x)                                             # width -> bottleneck (768 -> 64 for ViT-B)
    z   = mean_k dwconv_k(z) + z      on the (rows, cols) patch grid, k in 3x3, 5x5, 7x7
    z   = z + conv1x1(z)
    out = patches + project2(dropout(gelu(z)))                    # bottleneck -> width

``project2`` starts at zero, so the adapted block starts exactly equal to the frozen one (Mona's own
initialisation, gamma = 1e-6 and gammax = 1, does not: its random ``project2`` perturbs the block).
One adapter per block keeps ViT-B/16 at about 1.34 M trainable parameters, the paper's "about 1.3 M"
(one after attention and one after the MLP, as in Mona for Swin, would be twice that).

The depthwise branches are linear, so their average plus the identity is one depthwise convolution
with the zero-padded kernels averaged and 1 added at the centre; :class:`MultiScaleConv` runs that
single 7x7 convolution (same result up to rounding, about half the multiply-adds of three convs).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MONA_GAMMA_INIT = 1e-6


def patch_grid(num_patches: int) -> tuple[int, int]:
    """(rows, cols) of the square patch grid holding ``num_patches`` tokens (14x14 for ViT-B/16 at 224 px)."""
    side = math.isqrt(num_patches)
    if side * side != num_patches or num_patches == 0:
        raise ValueError(
            f"Mona needs a square patch grid, got {num_patches} patch tokens; pad images to a square first"
        )
    return side, side


def mona_bottleneck_width(requested: int, hidden_size: int) -> int:
    """The bottleneck actually used: ``requested``, capped at a quarter of the backbone width."""
    return max(1, min(requested, hidden_size // 4))


class MultiScaleConv(nn.Module):
    """Mona's middle: depthwise convolutions at several kernel sizes averaged with the identity, then a
    1x1 convolution with a residual.

    Args:
        channels: bottleneck width C.
        kernel_sizes: odd depthwise kernel sizes (3, 5, 7 in the paper).
    """

    def __init__(self, channels: int, kernel_sizes: tuple[int, ...] = (3, 5, 7)) -> None:
        super().__init__()
        self.channels = channels
        self.kernel_sizes = tuple(kernel_sizes)
        self.branches = nn.ModuleList(
            nn.Conv2d(channels, channels, k, padding=k // 2, groups=channels) for k in self.kernel_sizes
        )
        self.projector = nn.Conv2d(channels, channels, kernel_size=1)

    @property
    def fused_kernel_size(self) -> int:
        return max(self.kernel_sizes)

    def fused_depthwise(
        self, branch_weights: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One depthwise kernel equal to the weighted branch sum plus the identity.

        Args:
            branch_weights: (batch, branches) weights per sample, or None for the plain average.

        Returns:
            (weight, bias): (C, 1, K, K) and (C,) for the average; (batch, C, 1, K, K) and (batch, C)
            for per-sample weights. K is the largest kernel size.
        """
        size = self.fused_kernel_size
        kernels = []
        for branch in self.branches:
            pad = (size - branch.kernel_size[0]) // 2
            kernels.append(F.pad(branch.weight, (pad, pad, pad, pad)))
        stacked = torch.stack(kernels)  # (branches, C, 1, K, K)
        biases = torch.stack([branch.bias for branch in self.branches])  # (branches, C)
        identity = torch.zeros(size, size, dtype=stacked.dtype, device=stacked.device)
        identity[size // 2, size // 2] = 1.0
        if branch_weights is None:
            return stacked.mean(0) + identity, biases.mean(0)
        weights = branch_weights.to(stacked.dtype)
        weight = torch.einsum("bn,ncxij->bcxij", weights, stacked) + identity
        return weight, weights @ biases

    def mix(self, grid: torch.Tensor, branch_weights: torch.Tensor | None = None) -> torch.Tensor:
        """Weighted (default: averaged) depthwise branches plus the identity; (B, C, H, W) -> same."""
        weight, bias = self.fused_depthwise(branch_weights)
        pad = self.fused_kernel_size // 2
        if branch_weights is None:
            return F.conv2d(grid, weight, bias, padding=pad, groups=self.channels)
        batch, channels, rows, cols = grid.shape
        mixed = F.conv2d(
            grid.reshape(1, batch * channels, rows, cols),
            weight.reshape(batch * channels, 1, *weight.shape[-2:]),
            bias.reshape(batch * channels),
            padding=pad,
            groups=batch * channels,
        )
        return mixed.reshape(batch, channels, rows, cols)

    def project(self, grid: torch.Tensor) -> torch.Tensor:
        """The 1x1 convolution with its residual; (B, C, H, W) -> same."""
        return grid + self.projector(grid)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return self.project(self.mix(grid))


class Mona(nn.Module):
    """Mona adapter for one encoder block's output tokens (class token first, then the patch grid).

    Args:
        hidden_size: backbone width D.
        bottleneck: bottleneck width C.
        kernel_sizes: depthwise kernel sizes.
        dropout: dropout probability after the GELU.
    """

    def __init__(
        self,
        hidden_size: int,
        bottleneck: int,
        kernel_sizes: tuple[int, ...] = (3, 5, 7),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.gamma = nn.Parameter(torch.full((hidden_size,), MONA_GAMMA_INIT))
        self.gammax = nn.Parameter(torch.ones(hidden_size))
        self.project1 = nn.Linear(hidden_size, bottleneck)
        self.spatial = MultiScaleConv(bottleneck, kernel_sizes)
        self.dropout = nn.Dropout(dropout)
        self.project2 = nn.Linear(bottleneck, hidden_size)
        nn.init.zeros_(self.project2.weight)
        nn.init.zeros_(self.project2.bias)

    def mix(self, grid: torch.Tensor) -> torch.Tensor:
        """The bottleneck's spatial part on the (B, C, rows, cols) grid."""
        return self.spatial(grid)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 1 + rows*cols, D) -> same shape; token 0 (the class token) is returned untouched."""
        class_token, patches = tokens[:, :1], tokens[:, 1:]
        batch, num_patches, _ = patches.shape
        rows, cols = patch_grid(num_patches)
        z = self.project1(self.norm(patches) * self.gamma + patches * self.gammax)
        grid = z.transpose(1, 2).reshape(batch, -1, rows, cols)
        z = self.mix(grid).flatten(2).transpose(1, 2)
        z = self.project2(self.dropout(F.gelu(z)))
        return torch.cat([class_token, patches + z], dim=1)
