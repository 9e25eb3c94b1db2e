"""Simulated clicks and boxes, and a training step with them that lowers the loss."""

from __future__ import annotations

import numpy as np
import torch
from sonovlm.model import AdapterConfig, ModelConfig, SonoVLM, segmentation_loss
from sonovlm.model.click_simulation import (
    SimulatedPrompts,
    interactive_training_step,
    jitter_box,
    next_click,
    simulate_prompts,
)


def test_click_goes_deep_into_the_larger_error_region():
    target = np.zeros((40, 40), bool)
    target[10:21, 5:16] = True  # 11 x 11 missed lesion: false negatives, centre (x=10, y=15)
    prediction = np.zeros((40, 40), bool)
    prediction[30:33, 30:33] = True  # 3 x 3 false positive
    (x, y), positive = next_click(prediction, target)
    assert positive and (x, y) == (10, 15)
    prediction[0:40, 25:40] = True  # now the false positives are the larger region
    (x, y), positive = next_click(prediction, target)
    assert not positive and 25 <= x < 40 and not target[y, x] and prediction[y, x]
    assert next_click(target, target) is None


def test_click_in_a_region_touching_the_border_stays_off_the_border():
    target = np.zeros((20, 20), bool)
    target[:, :6] = True
    (x, y), positive = next_click(np.zeros_like(target), target)
    assert positive and 1 <= x <= 4


def test_jittered_box_surrounds_the_lesion_loosely():
    target = np.zeros((64, 64), bool)
    target[20:40, 10:50] = True
    rng = np.random.default_rng(0)
    for _ in range(50):
        x0, y0, x1, y1 = jitter_box(target, rng, max_shift=0.1)
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
        assert abs(x0 - 10) <= 4 and abs(x1 - 50) <= 4 and abs(y0 - 20) <= 2 and abs(y1 - 40) <= 2
    assert jitter_box(np.zeros((8, 8), bool), rng) is None


def _batch(count: int = 4, size: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    pixels = torch.zeros(count, 3, size, size)
    targets = torch.zeros(count, 1, size, size)
    rows, cols = np.ogrid[:size, :size]
    for index in range(count):
        cy, cx = rng.integers(18, size - 18, size=2)
        disk = (rows - cy) ** 2 + (cols - cx) ** 2 < rng.integers(60, 150)
        noise = torch.from_numpy(rng.normal(0.0, 0.3, (size, size)).astype(np.float32))
        grey = torch.where(torch.from_numpy(disk), -1.0, 0.8) + noise
        pixels[index] = grey.expand(3, -1, -1)
        targets[index, 0] = torch.from_numpy(disk.astype(np.float32))
    return pixels, targets


def test_simulated_prompts_have_the_batch_shape():
    model = SonoVLM(ModelConfig(backbone="tiny", adapter=AdapterConfig(kind="none")))
    pixels, targets = _batch(3)
    with torch.no_grad():
        features = model.encode_image(pixels)
    maps = simulate_prompts(
        model, features, model.organ_text[[0, 1, 2]], targets, np.random.default_rng(1), max_clicks=2
    )
    assert maps.shape == (3, 4, 64, 64) and maps.min() >= 0 and maps.max() <= 1


def test_training_with_simulated_clicks_lowers_the_loss_and_teaches_the_clicks():
    torch.manual_seed(0)
    model = SonoVLM(ModelConfig(backbone="tiny", adapter=AdapterConfig(kind="none")))
    model.train()
    loss_fn = segmentation_loss()
    optimiser = torch.optim.AdamW(model.trainable_parameters(), lr=3e-3)
    pixels, targets = _batch(4)
    organ_ids = torch.tensor([0, 1, 2, 0])
    # A fixed evaluation: one corrective click per sample from the initial prediction.
    with torch.no_grad():
        model.eval()
        features = model.encode_image(pixels)
        first = model.segment_logits(features, model.organ_text[organ_ids]).argmax(dim=1).numpy() == 1
    prompts = []
    for index in range(4):
        (x, y), positive = next_click(first[index], targets[index, 0].numpy())
        prompts.append(
            SimulatedPrompts(positive=[(x, y)]) if positive else SimulatedPrompts(negative=[(x, y)])
        )
    maps = torch.stack([p.maps(64) for p in prompts])

    def evaluation_loss() -> float:
        model.eval()
        with torch.no_grad():
            feats = model.encode_image(pixels)
            return float(loss_fn(model.segment_logits(feats, model.organ_text[organ_ids], maps), targets))

    before = evaluation_loss()
    model.train()
    rng = np.random.default_rng(0)
    losses = [
        interactive_training_step(model, optimiser, loss_fn, pixels, targets, organ_ids, rng)
        for _ in range(15)
    ]
    after = evaluation_loss()
    assert all(np.isfinite(losses))
    assert after < 0.8 * before, (before, after)
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert model.seg_head.interaction.is_trained
    with torch.no_grad():
        model.eval()
        feats = model.encode_image(pixels)
        with_clicks = model.segment_logits(feats, model.organ_text[organ_ids], maps)
        without = model.segment_logits(feats, model.organ_text[organ_ids])
    assert not torch.allclose(with_clicks, without)


def test_no_clicks_means_only_box_or_mask_or_nothing():
    model = SonoVLM(ModelConfig(backbone="tiny", adapter=AdapterConfig(kind="none")))
    pixels, targets = _batch(2)
    with torch.no_grad():
        features = model.encode_image(pixels)
    maps = simulate_prompts(
        model, features, model.organ_text[[0, 0]], targets, np.random.default_rng(3), max_clicks=0
    )
    assert maps[:, 0].sum() == 0 and maps[:, 1].sum() == 0
