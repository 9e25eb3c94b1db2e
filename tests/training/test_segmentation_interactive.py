"""The segmentation stage's simulated interactions: a share of the batches trains the interaction
encoder, the rest the automatic path."""

from __future__ import annotations

import torch
from sonovlm.model import load_model

from training.stages.segmentation import SegmentationStage


def model_and_batch():
    model = load_model(backbone="tiny", adapter="mona")
    model.requires_grad_(False)
    model.seg_head.requires_grad_(True)
    model.train()
    side = model.preprocess_config.image_size
    mask = torch.zeros(2, 1, side, side)
    mask[:, :, side // 4 : side // 2, side // 4 : side // 2] = 1
    generator = torch.Generator().manual_seed(0)
    batch = {
        "pixel_values": torch.rand(2, 3, side, side, generator=generator) - mask,
        "mask": mask,
        "organ_id": torch.tensor([0, 2]),
    }
    return model, batch


def encoder_gradient(stage: SegmentationStage) -> float:
    model, batch = model_and_batch()
    stage.loss(model, batch).backward()
    encoder = model.seg_head.interaction
    assert model.training  # the click rounds leave train mode as they found it
    return sum(float(p.grad.abs().sum()) for p in encoder.parameters() if p.grad is not None)


def test_interactive_batches_reach_the_interaction_encoder():
    stage = SegmentationStage()
    assert stage.interactive_fraction == 0.5
    stage.interactive_fraction = 1.0
    assert encoder_gradient(stage) > 0
    stage.interactive_fraction = 0.0
    assert encoder_gradient(stage) == 0


def test_about_half_of_the_batches_are_interactive():
    stage = SegmentationStage(seed=3)
    interactive = sum(encoder_gradient(stage) > 0 for _ in range(12))
    assert 2 <= interactive <= 10
