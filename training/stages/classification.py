"""Classification (benign / malignant): adapter and the zero-shot-plus-learned head, MONAI Focal loss.

Validation metric: ROC AUC (accuracy when the validation set holds one class). After training the
best model's temperature is fitted on the validation logits (``ClassificationHead.calibrate``,
temperature scaling) and saved with it, so the exported checkpoint's probabilities are
calibrated. Test: malignant probability >= 0.5 is the prediction.

:class:`ZeroShotStage` trains nothing: the head as built is pure zero-shot (prompt-bank class
embeddings against the image embedding), evaluated on the same test split.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import torch
from sonovlm.model import SonoVLM, classification_loss

from ..distributed import DistInfo, gather_records
from ..metrics import summarize_classification
from .base import Stage, batches


def _logits(model: SonoVLM, batch: dict) -> torch.Tensor:
    features = model.encode_image(batch["pixel_values"])
    return model.classify_logits(features, batch["organ_id"]).float()


def _records(model: SonoVLM, loader: Any, info: DistInfo, desc: str = "evaluation") -> list[dict]:
    records = []
    for batch in batches(loader, info, desc):
        tensors = {k: v.to(info.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        logits = _logits(model, tensors)
        probabilities = model.cls_head.probabilities(logits)[:, 1].float().cpu().tolist()
        for i, name in enumerate(batch["name"]):
            records.append(
                {
                    "name": name,
                    "dataset": batch["dataset"][i],
                    "label": int(batch["label"][i]),
                    "probability": probabilities[i],
                    "prediction": int(probabilities[i] >= 0.5),
                    "logits": logits[i].cpu().tolist(),
                }
            )
    return gather_records(info, records)


class ClassificationStage(Stage):
    name = "classification"
    task = "classification"
    monitor = "auc"
    mode = "max"
    trains_cls_head = True

    def __init__(self, loss: str = "sonovlm") -> None:
        self.criterion = classification_loss(variant=loss)

    def loss(self, model: SonoVLM, batch: dict) -> torch.Tensor:
        return self.criterion(_logits(model, batch), batch["label"][:, None])

    @torch.no_grad()
    def validate(self, model: SonoVLM, loader: Any, info: DistInfo) -> dict[str, float]:
        records = _records(model, loader, info, "validation")
        labels = np.array([r["label"] for r in records])
        logits = torch.tensor([r["logits"] for r in records])
        loss = (
            float(self.criterion(logits, torch.as_tensor(labels)[:, None])) if len(records) else float("nan")
        )
        scores = summarize_classification(labels, [r["probability"] for r in records], n_boot=1)
        auc = scores["auc"] if scores["auc"] is not None else scores["accuracy"]
        return {"auc": auc, "accuracy": scores["accuracy"], "loss": loss}

    def finish(self, model: SonoVLM, val_loader: Any, info: DistInfo) -> dict:
        records = _records(model, val_loader, info, "calibration")
        if not records:
            return {}
        logits = torch.tensor([r["logits"] for r in records])
        labels = torch.tensor([r["label"] for r in records])
        temperature = model.cls_head.calibrate(logits, labels)
        return {"temperature": temperature, "calibrated_on": "validation split"}

    @torch.no_grad()
    def evaluate(self, model: SonoVLM, loader: Any, info: DistInfo) -> list[dict]:
        return _records(model, loader, info)

    def summarize(self, records: list[dict], n_boot: int, seed: int) -> dict:
        summary = summarize_classification(
            [r["label"] for r in records], [r["probability"] for r in records], n_boot=n_boot, seed=seed
        )
        by_dataset: dict[str, list[dict]] = defaultdict(list)
        for record in records:
            by_dataset[record["dataset"]].append(record)
        summary["per_dataset"] = {
            name: summarize_classification(
                [r["label"] for r in rs], [r["probability"] for r in rs], n_boot=n_boot, seed=seed
            )
            for name, rs in sorted(by_dataset.items())
        }
        return summary


class ZeroShotStage(ClassificationStage):
    """Classification from the prompt bank alone: nothing trains."""

    name = "zero-shot"
