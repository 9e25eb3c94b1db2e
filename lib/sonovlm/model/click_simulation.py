"""Simulated interactions for training the segmentation head to follow clicks, boxes and masks.

As DeepEdit and SAM train theirs (and RITM's iterative sampling): a click goes where the current
prediction is most wrong, at the pixel of the larger error region (false negatives -> positive
click, false positives -> negative click) farthest from that region's boundary
(:func:`scipy.ndimage.distance_transform_edt`); a box is the ground truth's bounding box with each
side jittered by a fraction of its size; a previous mask is the ground truth degraded (as a
neighbouring cine frame's mask) or, for half the samples, the model's own prediction of the
previous click round (as RITM feeds it back, and as a client that sends its current mask does).
Everything here works in model space ``(S, S)``.

:func:`interactive_training_step` is one optimiser step: the backbone runs once, then a few
no-grad rounds of the head add clicks in the error regions, and the loss is taken on the head's
answer to the final prompts (and, with ``auto_weight``, on the prompt-free answer too, so one
network serves automatic and interactive use).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt

from .interaction import prompt_maps


@dataclass
class SimulatedPrompts:
    """Prompts of one training sample, model-space pixel coordinates (x, y)."""

    positive: list[tuple[float, float]] = field(default_factory=list)
    negative: list[tuple[float, float]] = field(default_factory=list)
    box: tuple[int, int, int, int] | None = None
    previous_mask: torch.Tensor | None = None

    def maps(self, size: int) -> torch.Tensor:
        """``(4, size, size)`` prompt maps."""
        return prompt_maps(size, self.positive, self.negative, self.box, self.previous_mask)


def _farthest_inside(region: np.ndarray) -> tuple[tuple[int, int], float]:
    """``((x, y), distance)`` of the pixel of ``region`` farthest from its boundary (the frame
    border counts as boundary); ``distance`` 0 for an empty region."""
    if not region.any():
        return (0, 0), 0.0
    distance = distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return (int(col), int(row)), float(distance[row, col])


def next_click(prediction: np.ndarray, target: np.ndarray) -> tuple[tuple[int, int], bool] | None:
    """The corrective click a user would make: ``((x, y), is_positive)``, or None when nothing is wrong.

    Args:
        prediction: ``(S, S)`` bool (or 0/1) current mask.
        target: ``(S, S)`` bool (or 0/1) ground truth.
    """
    prediction = np.asarray(prediction) != 0
    target = np.asarray(target) != 0
    positive_at, positive_depth = _farthest_inside(target & ~prediction)
    negative_at, negative_depth = _farthest_inside(prediction & ~target)
    if positive_depth == 0 and negative_depth == 0:
        return None
    if positive_depth >= negative_depth:
        return positive_at, True
    return negative_at, False


def jitter_box(
    target: np.ndarray, rng: np.random.Generator, max_shift: float = 0.1
) -> tuple[int, int, int, int] | None:
    """Bounding box ``(x0, y0, x1, y1)`` (ends exclusive) of ``target`` with each side moved by up to
    ``max_shift`` of the box's size, kept inside the map and at least 2 pixels wide; None if empty."""
    target = np.asarray(target) != 0
    rows, cols = np.nonzero(target)
    if rows.size == 0:
        return None
    height, width = target.shape
    x0, x1, y0, y1 = cols.min(), cols.max() + 1, rows.min(), rows.max() + 1
    dx = max_shift * (x1 - x0)
    dy = max_shift * (y1 - y0)
    shifts = rng.uniform(-1.0, 1.0, size=4)
    x0 = int(np.clip(round(x0 + shifts[0] * dx), 0, width - 2))
    y0 = int(np.clip(round(y0 + shifts[1] * dy), 0, height - 2))
    x1 = int(np.clip(round(x1 + shifts[2] * dx), x0 + 2, width))
    y1 = int(np.clip(round(y1 + shifts[3] * dy), y0 + 2, height))
    return x0, y0, x1, y1


def initial_prompts(
    target: np.ndarray, rng: np.random.Generator, box_probability: float = 0.3, mask_probability: float = 0.2
) -> SimulatedPrompts:
    """Starting prompts of one sample: sometimes a jittered box, sometimes a degraded previous mask
    (the ground truth shifted by a few pixels, as a neighbouring cine frame), else nothing."""
    prompts = SimulatedPrompts()
    draw = rng.random()
    if draw < box_probability:
        prompts.box = jitter_box(target, rng)
    elif draw < box_probability + mask_probability and np.any(target):
        shift = rng.integers(-2, 3, size=2)
        moved = np.roll(np.asarray(target) != 0, shift=tuple(int(s) for s in shift), axis=(0, 1))
        prompts.previous_mask = torch.from_numpy(moved.astype(np.float32))
    return prompts


def simulate_prompts(
    model: torch.nn.Module,
    features: object,
    condition: torch.Tensor,
    targets: torch.Tensor,
    rng: np.random.Generator,
    max_clicks: int = 3,
    box_probability: float = 0.3,
    mask_probability: float = 0.2,
    feedback_probability: float = 0.5,
) -> torch.Tensor:
    """Prompt maps ``(B, 4, S, S)`` after a random number (0..``max_clicks``) of corrective clicks.

    For a ``feedback_probability`` share of the samples each round's prediction becomes the
    previous-mask prompt of the next.

    Args:
        model: the :class:`~sonovlm.model.SonoVLM` being trained.
        features: its :class:`VisionFeatures` of the batch (reused for every round).
        condition: ``(B, D)`` text embeddings.
        targets: ``(B, 1, S, S)`` 0/1 ground truth in model space.
        rng: the random source (clicks' count, boxes, masks).
    """
    batch, size = targets.shape[0], targets.shape[-1]
    truth = targets[:, 0].detach().cpu().numpy() != 0
    prompts = [initial_prompts(t, rng, box_probability, mask_probability) for t in truth]
    rounds = int(rng.integers(0, max_clicks + 1))
    feedback = rng.random(batch) < feedback_probability
    device = condition.device
    was_training = model.training
    for _ in range(rounds):
        maps = torch.stack([p.maps(size) for p in prompts]).to(device)
        model.eval()
        with torch.no_grad():
            logits = model.segment_logits(features, condition, maps)
        prediction = (logits.argmax(dim=1) == 1).cpu().numpy()
        for index in range(batch):
            click = next_click(prediction[index], truth[index])
            if click is None:
                continue
            (x, y), positive = click
            (prompts[index].positive if positive else prompts[index].negative).append((x, y))
            if feedback[index]:
                prompts[index].previous_mask = torch.from_numpy(prediction[index].astype(np.float32))
    model.train(was_training)
    return torch.stack([p.maps(size) for p in prompts]).to(device)


def training_prompt_maps(
    model: torch.nn.Module,
    features: object,
    condition: torch.Tensor,
    targets: torch.Tensor,
    rng: np.random.Generator,
    interactive_fraction: float = 0.5,
    max_clicks: int = 3,
) -> torch.Tensor | None:
    """Prompt maps for one training batch, or None: a batch is interactive (simulated box, mask and
    corrective clicks, :func:`simulate_prompts`) with probability ``interactive_fraction``, else
    automatic (no prompts), so one network learns both uses. The trainers' shared sampling.

    Args:
        model, features, condition, targets, rng: as for :func:`simulate_prompts`.
        interactive_fraction: share of interactive batches in [0, 1].
    """
    if not 0.0 <= interactive_fraction <= 1.0:
        raise ValueError(f"interactive_fraction must be in [0, 1], got {interactive_fraction}")
    if interactive_fraction == 0.0 or rng.random() >= interactive_fraction:
        return None
    return simulate_prompts(model, features, condition, targets, rng, max_clicks=max_clicks)


def interactive_training_step(
    model: torch.nn.Module,
    optimiser: torch.optim.Optimizer,
    loss_fn: torch.nn.Module,
    pixel_values: torch.Tensor,
    targets: torch.Tensor,
    organ_ids: torch.Tensor,
    rng: np.random.Generator,
    max_clicks: int = 3,
    auto_weight: float = 0.5,
) -> float:
    """One optimiser step with simulated interactions; returns the loss.

    Args:
        model: a :class:`~sonovlm.model.SonoVLM` in train mode (what trains is what requires grad).
        optimiser: over ``model.trainable_parameters()``.
        loss_fn: :func:`~sonovlm.model.segmentation_loss` (DiceCE).
        pixel_values: ``(B, 3, S, S)``; targets ``(B, 1, S, S)`` 0/1; organ_ids ``(B,)``.
        auto_weight: weight of the prompt-free loss added to the interactive one (0 = none).
    """
    device = model.organ_text.device
    targets = targets.to(device)
    organ_ids = torch.as_tensor(organ_ids, device=device).long().reshape(-1)
    features = model.encode_image(pixel_values.to(device))
    condition = model.organ_text[organ_ids]
    maps = simulate_prompts(model, features, condition, targets, rng, max_clicks=max_clicks)
    loss = loss_fn(model.segment_logits(features, condition, maps).float(), targets)
    if auto_weight > 0:
        loss = loss + auto_weight * loss_fn(model.segment_logits(features, condition).float(), targets)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    return float(loss.detach())
