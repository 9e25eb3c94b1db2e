"""Hybrid tuning: Mona plus a learnable frequency-domain filter and noise-aware branch weighting.

In the bottleneck, on the (B, C, rows, cols) patch grid, :class:`HybridMona` replaces Mona's plain
average of the depthwise branches with::

    w      = softmax(gate([mean(z), std(z)]))                  # per sample, one weight per kernel size
    z_mid  = sum_k w_k dwconv_k(z) + z + irfft2(rfft2(z) * H)   # H: complex filter per channel and frequency
    z      = z_mid + conv1x1(z_mid)

The gate sees each channel's mean and its spread over the grid (speckle makes the spread large), so
noisier images can lean on the larger kernels. Its last layer starts at zero, giving the equal
weights 1/3 of plain Mona; the filter H starts at zero, so the frequency branch adds nothing at
first. Everything else (class token untouched, ``project2`` at zero, identity start) is Mona's.

The filter is stored for the backbone's own grid (14 x 8 rfft bins for ViT-B/16 at 224 px); for
another grid it is resized bilinearly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sonovlm.model.adapters.mona import Mona

GATE_STD_EPS = 1e-6


class HybridMona(Mona):
    """Mona with a frequency-domain filter and noise-aware weighting of its kernel branches.

    Args:
        hidden_size: backbone width D.
        bottleneck: bottleneck width C.
        grid: (rows, cols) of the backbone's patch grid, for the filter's size.
        kernel_sizes: depthwise kernel sizes.
        dropout: dropout probability after the GELU.
    """

    def __init__(
        self,
        hidden_size: int,
        bottleneck: int,
        grid: tuple[int, int],
        kernel_sizes: tuple[int, ...] = (3, 5, 7),
        dropout: float = 0.1,
    ) -> None:
        super().__init__(hidden_size, bottleneck, kernel_sizes, dropout)
        gate_hidden = max(4, bottleneck // 4)
        self.branch_gate = nn.Sequential(
            nn.Linear(2 * bottleneck, gate_hidden), nn.GELU(), nn.Linear(gate_hidden, len(kernel_sizes))
        )
        nn.init.zeros_(self.branch_gate[-1].weight)
        nn.init.zeros_(self.branch_gate[-1].bias)
        rows, cols = grid
        # Real and imaginary parts of H, shape (C, rows, cols // 2 + 1, 2).
        self.frequency_filter = nn.Parameter(torch.zeros(bottleneck, rows, cols // 2 + 1, 2))

    def branch_weights(self, grid: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, branches) softmax weights from each channel's mean and spread."""
        var, mean = torch.var_mean(grid, dim=(2, 3), unbiased=False)
        pooled = torch.cat([mean, torch.sqrt(var + GATE_STD_EPS)], dim=1)
        return torch.softmax(self.branch_gate(pooled), dim=1)

    def frequency_response(self, grid: torch.Tensor) -> torch.Tensor:
        """Filter the grid in the 2-D Fourier domain; (B, C, H, W) -> same, zero while H is zero."""
        rows, cols = grid.shape[-2:]
        spectrum = torch.fft.rfft2(grid.float(), norm="ortho")
        weights = self.frequency_filter.float()
        if weights.shape[1:3] != spectrum.shape[-2:]:
            resized = F.interpolate(
                weights.permute(0, 3, 1, 2), size=spectrum.shape[-2:], mode="bilinear", align_corners=True
            )
            weights = resized.permute(0, 2, 3, 1)
        filtered = spectrum * torch.view_as_complex(weights.contiguous())
        return torch.fft.irfft2(filtered, s=(rows, cols), norm="ortho").to(grid.dtype)

    def mix(self, grid: torch.Tensor) -> torch.Tensor:
        mixed = self.spatial.mix(grid, self.branch_weights(grid)) + self.frequency_response(grid)
        return self.spatial.project(mixed)


class ReferenceHybridMona(Mona):
    """The reference code's hybrid Mona (NextGen-UIA ``HybridNoiseFreqMona``), for ``--paper`` runs.

    On the (B, C, rows, cols) bottleneck grid ``z``::

        f      = irfft2(rfft2(z) * g)                          # g: one real gain per channel (init 1)
        w      = softmax(conv(relu(conv(mean(f)))))            # pooled-mean gate, C -> C/4 -> branches
        z_mid  = sum_k w_k dwconv_k(f) + z
        z      = z_mid + conv1x1(z_mid)

    A real per-channel gain on the spectrum is the same as scaling each channel in space (the
    Fourier transform is linear), so the "frequency filter" is a per-channel gain in effect;
    :class:`HybridMona`, SonoVLM's default, learns a full complex filter per frequency instead and
    adds the filtered grid as a branch. The gate sees only each channel's mean; HybridMona's also
    sees its spread (speckle) and starts at equal weights.

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
        super().__init__(hidden_size, bottleneck, kernel_sizes, dropout)
        gate_hidden = max(1, bottleneck // 4)
        self.channel_gain = nn.Parameter(torch.ones(bottleneck))
        self.branch_gate = nn.Sequential(
            nn.Conv2d(bottleneck, gate_hidden, 1), nn.ReLU(), nn.Conv2d(gate_hidden, len(kernel_sizes), 1)
        )

    def filtered(self, grid: torch.Tensor) -> torch.Tensor:
        """``irfft2(rfft2(grid) * gain)`` per channel; (B, C, H, W) -> same."""
        rows, cols = grid.shape[-2:]
        spectrum = torch.fft.rfft2(grid.float()) * self.channel_gain.float().view(1, -1, 1, 1)
        return torch.fft.irfft2(spectrum, s=(rows, cols)).to(grid.dtype)

    def branch_weights(self, grid: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, branches) softmax weights from each channel's mean."""
        pooled = grid.mean(dim=(2, 3), keepdim=True)
        return torch.softmax(self.branch_gate(pooled).flatten(1), dim=1)

    def mix(self, grid: torch.Tensor) -> torch.Tensor:
        filtered = self.filtered(grid)
        weights = self.branch_weights(filtered)
        # spatial.mix adds its input as the identity: remove the filtered copy, add the unfiltered grid
        mixed = self.spatial.mix(filtered, weights) - filtered + grid
        return self.spatial.project(mixed)
