"""Contrastive adapter tuning on ultrasound image-caption pairs (the paper's first stage).

Symmetric InfoNCE (CLIP's objective): for a batch of ``B`` pairs, image embeddings ``u`` (adapted
vision tower) and caption embeddings ``v`` (frozen text tower), both L2-normalised, the logits
are ``s * u @ v.T`` with CLIP's (frozen) logit scale ``s``, and the loss is the mean of the
cross-entropies image->text and text->image with the matching pair as target. Only the adapter
trains. Under DDP each rank contrasts its own batch (negatives are not gathered across ranks).

Captions are ``raw`` or ``refined`` (the LLM-refined column of the pair file). Validation: the
same loss on the held-out pairs (early stopping, lower is better); the final evaluation adds
retrieval recall over the whole held-out set (a caption counts as found when its text equals the
pair's, so repeated captions are not penalised).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from sonovlm.model import SonoVLM

from ..distributed import DistInfo, gather_records
from .base import Stage, batches


def info_nce(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of ``(B, D)`` normalised image and text embeddings, pair ``i`` matching ``i``."""
    logits = scale * image @ text.t()
    target = torch.arange(len(image), device=image.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


class ContrastiveStage(Stage):
    name = "contrastive"
    task = None
    monitor = "loss"
    mode = "min"

    def loss(self, model: SonoVLM, batch: dict) -> torch.Tensor:
        image = model.encode_image(batch["pixel_values"]).embedding.float()
        text = model.encode_texts(batch["caption"]).float()
        return info_nce(image, text, model.logit_scale().float())

    @torch.no_grad()
    def validate(self, model: SonoVLM, loader: Any, info: DistInfo) -> dict[str, float]:
        records = []
        for batch in batches(loader, info, "validation"):
            pixels = batch["pixel_values"].to(info.device)
            image = model.encode_image(pixels).embedding.float()
            text = model.encode_texts(batch["caption"]).float()
            loss = float(info_nce(image, text, model.logit_scale().float()))
            records.append({"name": f"{info.rank}:{len(records)}", "loss": loss, "n": len(pixels)})
        records = gather_records(info, records)
        n = sum(r["n"] for r in records)
        return {"loss": sum(r["loss"] * r["n"] for r in records) / max(n, 1)}

    @torch.no_grad()
    def evaluate(self, model: SonoVLM, loader: Any, info: DistInfo) -> list[dict]:
        records = []
        for batch in batches(loader, info, "evaluation"):
            image = model.encode_image(batch["pixel_values"].to(info.device)).embedding.float().cpu()
            for i, name in enumerate(batch["name"]):
                records.append({"name": name, "caption": batch["caption"][i], "embedding": image[i].tolist()})
        return gather_records(info, records)

    def summarize(self, records: list[dict], n_boot: int, seed: int, model: SonoVLM | None = None) -> dict:
        if model is None or not records:
            return {"n_pairs": len(records)}
        images = torch.tensor([r["embedding"] for r in records])
        captions = [r["caption"] for r in records]
        unique = sorted(set(captions))
        text = torch.cat(
            [model.encode_texts(unique[i : i + 64]).float().cpu() for i in range(0, len(unique), 64)]
        )
        similarity = images @ text.t()
        truth = torch.tensor([unique.index(c) for c in captions])
        ranks = (similarity > similarity[torch.arange(len(truth)), truth][:, None]).sum(1)
        out = {"n_pairs": len(records), "n_captions": len(unique)}
        for k in (1, 5, 10):
            out[f"image_to_text_r{k}"] = float((ranks < k).float().mean())
        # text -> image: for each caption, is one of its images among the top k
        t2i = similarity.t()
        hits = {1: [], 5: [], 10: []}
        for row, caption in enumerate(unique):
            order = torch.argsort(t2i[row], descending=True).tolist()
            own = {i for i, c in enumerate(captions) if c == caption}
            for k in hits:
                hits[k].append(any(i in own for i in order[:k]))
        for k, values in hits.items():
            out[f"text_to_image_r{k}"] = sum(values) / len(values)
        return out
