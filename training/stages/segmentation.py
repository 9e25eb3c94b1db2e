"""Segmentation: adapter and text-conditioned segmentation head, MONAI DiceCE loss.

The head is conditioned on each case's organ through the organ's target-description embedding
(one network for every organ; pooled datasets carry their organs). Validation: mean Dice on the
model grid (``S`` × ``S``), the early-stopping metric. Test: the prediction is taken back to the
image's own grid (:func:`sonovlm.model.preprocess.from_model_space`, lesion probability >= 0.5, as
the server does) and scored there by :func:`training.metrics.segmentation_case`.

Training simulates interactions (as the app's trainer does): an ``interactive_fraction`` share of
the batches (``--interactive-fraction``, default 0.5; 0 under ``--paper``, as the reference
trains automatic segmentation only) gets a jittered box, a degraded previous mask and corrective clicks
(:func:`sonovlm.model.click_simulation.training_prompt_maps`), the rest no prompts, so one network
serves automatic and interactive use. Validation and test are automatic.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import torch
from sonovlm.errors import SonoInputError
from sonovlm.model import SonoVLM, from_model_space, segmentation_loss
from sonovlm.model.click_simulation import training_prompt_maps
from sonovlm.model.heads import ReferenceSegmentationHead
from sonovlm.model.inference import MASK_THRESHOLD

from ..distributed import DistInfo, gather_records
from ..metrics import segmentation_case, summarize_segmentation
from .base import Stage, batches


def lesion_probability(model: SonoVLM, batch: dict) -> torch.Tensor:
    """``(B, S, S)`` lesion probability for a batch, conditioned on each case's organ."""
    features = model.encode_image(batch["pixel_values"])
    logits = model.segment_logits(features, model.organ_text[batch["organ_id"]])
    return torch.softmax(logits.float(), dim=1)[:, 1]


class SegmentationStage(Stage):
    name = "segmentation"
    task = "segmentation"
    monitor = "dice"
    mode = "max"
    trains_seg_head = True
    #: Share of training batches with simulated interactions (``--interactive-fraction``).
    interactive_fraction = 0.5

    def __init__(self, seed: int = 0, interactive_fraction: float = 0.5, loss: str = "sonovlm") -> None:
        if not 0.0 <= interactive_fraction <= 1.0:
            raise SonoInputError("--interactive-fraction", f"must be in [0, 1], got {interactive_fraction}")
        self.interactive_fraction = float(interactive_fraction)
        self.criterion = segmentation_loss(loss)
        self.rng = np.random.default_rng(seed)  # same seed on every rank: same batches interactive

    def state_dict(self) -> dict:
        """The click simulation's generator (which batches are interactive, where the clicks fall)."""
        return {"click_rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        if "click_rng" in state:
            self.rng.bit_generator.state = state["click_rng"]

    def configure(self, model: SonoVLM, freeze_adapter: bool = False) -> None:
        super().configure(model, freeze_adapter)
        if self.interactive_fraction > 0 and isinstance(model.seg_head, ReferenceSegmentationHead):
            raise SonoInputError(
                "--interactive-fraction",
                "the reference decoder takes no prompts; use 0 with --decoder reference",
            )

    def loss(self, model: SonoVLM, batch: dict) -> torch.Tensor:
        features = model.encode_image(batch["pixel_values"])
        condition = model.organ_text[batch["organ_id"]]
        maps = training_prompt_maps(
            model, features, condition, batch["mask"], self.rng, self.interactive_fraction
        )
        logits = model.segment_logits(features, condition, maps)
        return self.criterion(logits.float(), batch["mask"])

    @torch.no_grad()
    def validate(self, model: SonoVLM, loader: Any, info: DistInfo) -> dict[str, float]:
        from monai.metrics import DiceMetric

        dice = DiceMetric(include_background=False, reduction="none", ignore_empty=False)
        records = []
        for batch in batches(loader, info, "validation"):
            batch = {k: v.to(info.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            features = model.encode_image(batch["pixel_values"])
            logits = model.segment_logits(features, model.organ_text[batch["organ_id"]]).float()
            losses = [
                float(self.criterion(logits[i : i + 1], batch["mask"][i : i + 1])) for i in range(len(logits))
            ]
            pred = (torch.softmax(logits, dim=1)[:, 1:] >= MASK_THRESHOLD).float()
            truth = batch["mask"]
            scores = dice(torch.cat([1 - pred, pred], 1), torch.cat([1 - truth, truth], 1))[:, 0]
            for name, score, loss in zip(batch["name"], scores.tolist(), losses, strict=True):
                records.append({"name": name, "dice": score, "loss": loss})
        records = gather_records(info, records)
        n = max(len(records), 1)
        return {"dice": sum(r["dice"] for r in records) / n, "loss": sum(r["loss"] for r in records) / n}

    @torch.no_grad()
    def evaluate(self, model: SonoVLM, loader: Any, info: DistInfo) -> list[dict]:
        records = []
        for batch in batches(loader, info, "evaluation"):
            tensors = {k: v.to(info.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            probability = lesion_probability(model, tensors).cpu()
            for i, name in enumerate(batch["name"]):
                frame_probability = from_model_space(probability[i], batch["geometry"][i])
                prediction = (frame_probability >= MASK_THRESHOLD).numpy()
                case = segmentation_case(prediction, batch["frame_mask"][i], batch["spacing_mm"][i])
                records.append({"name": name, "dataset": batch["dataset"][i], **case})
        return records

    def summarize(self, records: list[dict], n_boot: int, seed: int) -> dict:
        summary = summarize_segmentation(records, n_boot, seed)
        by_dataset: dict[str, list[dict]] = defaultdict(list)
        for record in records:
            by_dataset[record["dataset"]].append(record)
        summary["per_dataset"] = {
            name: summarize_segmentation(rs, n_boot, seed) for name, rs in sorted(by_dataset.items())
        }
        return summary
