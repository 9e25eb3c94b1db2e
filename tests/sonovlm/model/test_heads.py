"""Task heads: budget, levels, FiLM conditioning, zero-shot start, calibration, MONAI losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, FocalLoss
from sonovlm.errors import SonoInputError
from sonovlm.model.heads import (
    ClassificationHead,
    HeadConfig,
    SegmentationHead,
    classification_loss,
    count_parameters,
    legacy_levels,
    segmentation_loss,
)

BUDGET = 2_400_000


def _vit_b16_heads() -> tuple[SegmentationHead, ClassificationHead]:
    config = HeadConfig()
    segmentation = SegmentationHead(
        vision_width=768,
        text_dim=512,
        grid=14,
        patch_size=16,
        n_levels=len(config.resolved_levels(12)),
        width=config.resolved_width(768),
        decoder_channels=config.decoder_channels,
    )
    return segmentation, ClassificationHead(512)


def test_heads_for_vit_b16_stay_within_the_budget():
    segmentation, classification = _vit_b16_heads()
    total = count_parameters(segmentation) + count_parameters(classification)
    assert total <= BUDGET
    assert segmentation.width == 512  # the paper's fusion width


def test_levels_scale_with_depth():
    # The reference code reads blocks i in [3, 6, 9] counted from 0: the 4th, 7th and 10th of 12.
    assert HeadConfig().resolved_levels(12) == (4, 7, 10)
    assert HeadConfig().resolved_levels(24) == (7, 13, 19)  # ViT-L: 0-based 6, 12, 18
    assert HeadConfig().resolved_levels(4) == (2, 3, 4)
    assert HeadConfig().resolved_levels(2) == (1, 2)
    assert HeadConfig().resolved_levels(1) == (1,)
    assert legacy_levels(12) == (3, 6, 9) and legacy_levels(4) == (1, 2, 3)
    assert HeadConfig(levels=(2, 4)).resolved_levels(4) == (2, 4)
    with pytest.raises(SonoInputError):
        HeadConfig(levels=(3, 13)).resolved_levels(12)
    with pytest.raises(SonoInputError):
        HeadConfig(levels=(6, 3)).resolved_levels(12)


def _levels(batch: int = 2, tokens: int = 1 + 8 * 8, width: int = 32, n: int = 3) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(batch, tokens, width, generator=generator) for _ in range(n)]


def test_segmentation_output_and_film_conditioning():
    head = SegmentationHead(vision_width=32, text_dim=16, grid=8, patch_size=8, n_levels=3, width=32).eval()
    levels = _levels()
    first, second = F.normalize(torch.randn(2, 16), dim=-1), F.normalize(torch.randn(2, 16), dim=-1)
    with torch.no_grad():
        logits = head(levels, first)
        assert logits.shape == (2, 2, 64, 64)
        # FiLM starts at zero: an untrained head does not depend on the text yet...
        torch.testing.assert_close(logits, head(levels, second))
        torch.nn.init.normal_(head.film.weight, std=0.5)
        # ...and once trained, the text picks the output.
        assert not torch.allclose(head(levels, first), head(levels, second))
        # One text embedding serves the whole batch.
        torch.testing.assert_close(head(levels, first[0]), head(levels, first[0].expand(2, -1)))


def test_classification_starts_as_zero_shot_and_both_parts_learn():
    head = ClassificationHead(16).eval()
    image = F.normalize(torch.randn(4, 16), dim=-1)
    classes = F.normalize(torch.randn(4, 2, 16), dim=-1)
    scale = torch.tensor(100.0)
    zero_shot = scale * torch.einsum("bd,bkd->bk", image, classes)
    torch.testing.assert_close(head(image, classes, scale), zero_shot)
    assert head.is_zero_shot
    head.train()
    loss = F.cross_entropy(head(image, classes, scale), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    assert head.linear.weight.grad.abs().sum() > 0
    assert head.zero_shot_weight.grad.abs() > 0
    with torch.no_grad():
        head.linear.weight.add_(0.1)
    assert not head.is_zero_shot


def test_calibration_fits_a_temperature_that_lowers_the_nll():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (400,), generator=generator)
    # Over-confident logits: right 70 % of the time, always with a margin of 8.
    right = torch.rand(400, generator=generator) < 0.7
    predicted = torch.where(right, labels, 1 - labels)
    logits = F.one_hot(predicted, 2).float() * 8.0
    head = ClassificationHead(4)
    before = F.cross_entropy(logits, labels)
    temperature = head.calibrate(logits, labels)
    after = F.cross_entropy(logits / temperature, labels)
    assert temperature > 2.0 and after < before
    probabilities = head.probabilities(logits)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(400))
    assert probabilities.max() < 0.95


def test_losses_come_from_monai():
    segmentation, classification = segmentation_loss(), classification_loss()
    assert isinstance(segmentation, DiceCELoss) and isinstance(classification, FocalLoss)
    seg = segmentation(torch.randn(2, 2, 8, 8), torch.randint(0, 2, (2, 1, 8, 8)).float())
    cls = classification(torch.randn(2, 2), torch.tensor([[0], [1]]))
    assert torch.isfinite(seg) and torch.isfinite(cls)


def test_config_round_trip():
    config = HeadConfig(width=64, levels=(1, 3), dropout=0.2)
    assert HeadConfig.from_dict(config.to_dict()) == config
    with pytest.raises(SonoInputError):
        HeadConfig(dropout=1.5)
