"""Mona and its hybrid variant as modules: class token, the formula, fused kernels, hybrid parts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sonovlm.model.adapters import HybridMona, Mona, MultiScaleConv, patch_grid
from sonovlm.model.adapters.mona import mona_bottleneck_width

WIDTH, BOTTLENECK, GRID = 32, 8, (5, 5)


def randomise(module: torch.nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)


def tokens(batch: int = 2, patches: int = 25) -> torch.Tensor:
    return torch.randn(batch, 1 + patches, WIDTH, generator=torch.Generator().manual_seed(5))


def reference_mix(
    op: MultiScaleConv, grid: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """MonaOp as published: separate depthwise convs, weighted (default: averaged), plus the identity."""
    outputs = [
        F.conv2d(grid, b.weight, b.bias, padding=b.kernel_size[0] // 2, groups=op.channels)
        for b in op.branches
    ]
    if weights is None:
        return sum(outputs) / len(outputs) + grid
    return sum(weights[:, i, None, None, None] * out for i, out in enumerate(outputs)) + grid


@pytest.mark.parametrize("adapter_class", [Mona, HybridMona])
def test_class_token_passes_through_unchanged(adapter_class):
    adapter = Mona(WIDTH, BOTTLENECK) if adapter_class is Mona else HybridMona(WIDTH, BOTTLENECK, GRID)
    randomise(adapter)
    adapter.eval()
    x = tokens()
    y = adapter(x)
    assert y.shape == x.shape
    assert torch.equal(y[:, 0], x[:, 0])
    assert not torch.allclose(y[:, 1:], x[:, 1:], atol=1e-3)


def test_class_token_does_not_influence_the_patches():
    adapter = Mona(WIDTH, BOTTLENECK).eval()
    randomise(adapter)
    x = tokens()
    changed = x.clone()
    changed[:, 0] += 10.0
    assert torch.equal(adapter(x)[:, 1:], adapter(changed)[:, 1:])


def test_mona_follows_the_paper_formula():
    adapter = Mona(WIDTH, BOTTLENECK).eval()
    randomise(adapter)
    x = tokens()
    patches = x[:, 1:]
    z = adapter.project1(adapter.norm(patches) * adapter.gamma + patches * adapter.gammax)
    grid = z.transpose(1, 2).reshape(2, BOTTLENECK, *GRID)
    mixed = reference_mix(adapter.spatial, grid)
    mixed = mixed + adapter.spatial.projector(mixed)
    expected = patches + adapter.project2(F.gelu(mixed.flatten(2).transpose(1, 2)))
    torch.testing.assert_close(adapter(x)[:, 1:], expected, atol=1e-5, rtol=1e-5)


def test_fused_kernel_equals_separate_branches_averaged_and_per_sample():
    op = MultiScaleConv(BOTTLENECK, (3, 5, 7))
    randomise(op)
    grid = torch.randn(3, BOTTLENECK, 6, 6, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(op.mix(grid), reference_mix(op, grid), atol=1e-5, rtol=1e-5)
    weights = torch.softmax(torch.randn(3, 3, generator=torch.Generator().manual_seed(3)), dim=1)
    torch.testing.assert_close(op.mix(grid, weights), reference_mix(op, grid, weights), atol=1e-5, rtol=1e-5)


def test_default_initialisation_is_the_identity_and_paper_scaled_norm():
    adapter = Mona(WIDTH, BOTTLENECK)
    assert torch.all(adapter.gamma == 1e-6) and torch.all(adapter.gammax == 1.0)
    x = tokens()
    assert torch.equal(adapter(x), x)


def test_hybrid_starts_as_mona_with_equal_branch_weights_and_no_frequency_effect():
    hybrid = HybridMona(WIDTH, BOTTLENECK, GRID).eval()
    mona = Mona(WIDTH, BOTTLENECK).eval()
    randomise(mona, seed=7)
    hybrid.load_state_dict(mona.state_dict(), strict=False)
    grid = torch.randn(2, BOTTLENECK, *GRID)
    torch.testing.assert_close(hybrid.branch_weights(grid), torch.full((2, 3), 1 / 3))
    assert torch.equal(hybrid.frequency_response(grid), torch.zeros_like(grid))
    x = tokens()
    torch.testing.assert_close(hybrid(x), mona(x), atol=1e-5, rtol=1e-5)


def test_hybrid_frequency_filter_acts_per_channel_in_the_fourier_domain():
    hybrid = HybridMona(WIDTH, BOTTLENECK, GRID)
    with torch.no_grad():
        hybrid.frequency_filter[..., 0] = 1.0  # H = 1: an all-pass filter returns the grid itself
    grid = torch.randn(2, BOTTLENECK, *GRID)
    torch.testing.assert_close(hybrid.frequency_response(grid), grid, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        hybrid.frequency_filter.zero_()
        hybrid.frequency_filter[0, 0, 0, 0] = 1.0  # keep only the mean of channel 0
    response = hybrid.frequency_response(grid)
    torch.testing.assert_close(response[:, 0], grid[:, 0].mean((1, 2), keepdim=True).expand(2, *GRID))
    assert torch.equal(response[:, 1:], torch.zeros_like(response[:, 1:]))


def test_hybrid_gate_reacts_to_noise_and_runs_on_another_grid():
    hybrid = HybridMona(WIDTH, BOTTLENECK, GRID).eval()
    randomise(hybrid, seed=9)
    calm = torch.ones(1, BOTTLENECK, *GRID)
    noisy = calm + 3.0 * torch.randn(1, BOTTLENECK, *GRID)
    assert not torch.allclose(hybrid.branch_weights(calm), hybrid.branch_weights(noisy))
    torch.testing.assert_close(hybrid.branch_weights(noisy).sum(1), torch.ones(1))
    x = tokens(patches=49)  # a 7 x 7 grid: the filter is resized
    assert hybrid(x).shape == x.shape


def test_grid_must_be_square():
    assert patch_grid(196) == (14, 14)
    with pytest.raises(ValueError, match="square"):
        patch_grid(24)
    with pytest.raises(ValueError, match="square"):
        Mona(WIDTH, BOTTLENECK)(tokens(patches=24))


def test_bottleneck_is_capped_for_narrow_backbones():
    assert mona_bottleneck_width(64, 768) == 64
    assert mona_bottleneck_width(64, 64) == 16
