"""Training data for the server's trainers (:mod:`sonovlm.app.train`): the request checks, the
split by image, the item transforms (datastore item -> model-space grey image, scan mask and mask ->
augmented -> model inputs) and the batch preparation MONAI's engines call.
"""

from __future__ import annotations

import math
import random
from typing import Any

import torch

from ..errors import SonoInputError
from ..model.augment import AUGMENT_MODES
from ..organs import ORGAN_LABELS, PATHOLOGIES

ORGAN_ORDER: tuple[str, ...] = tuple(ORGAN_LABELS)

#: Train config advertised in /info (and taken from the request).
DEFAULT_TRAIN_CONFIG: dict[str, Any] = {
    "max_epochs": 10,
    "train_batch_size": 8,
    "val_batch_size": 8,
    "learning_rate": 1e-4,
    "val_split": 0.2,
    "early_stop_patience": 0,
}

#: Training augmentation, as ``python -m training``'s default ``--augment all``: the ultrasound
#: artefacts then MONAI's geometric transforms (:func:`sonovlm.model.augment.train_transforms`).
DEFAULT_AUGMENT = "all"

#: Share of segmentation training batches given simulated interactions (the rest: none).
DEFAULT_INTERACTIVE_FRACTION = 0.5


def _check_train_request(request: dict[str, Any]) -> None:
    """Type-check the request's train params; SonoInputError names the bad one."""

    def number(key: str, kind: type, low: float, high: float = math.inf) -> None:
        value = request.get(key)
        try:
            parsed = kind(value)
        except (TypeError, ValueError):
            raise SonoInputError(key, f"expected a {kind.__name__}, got {value!r}") from None
        if not low <= parsed <= high:
            raise SonoInputError(key, f"must be in [{low}, {high}], got {parsed}")
        request[key] = parsed

    number("max_epochs", int, 1)
    number("train_batch_size", int, 1)
    number("val_batch_size", int, 1)
    number("learning_rate", float, 1e-9, 1.0)
    number("val_split", float, 0.0, 0.9)
    number("early_stop_patience", int, 0)
    if "interactive_fraction" in request:
        number("interactive_fraction", float, 0.0, 1.0)
    augment = request.get("augment", DEFAULT_AUGMENT)
    if augment not in AUGMENT_MODES:
        known = ", ".join(AUGMENT_MODES)
        raise SonoInputError("augment", f"unknown augmentation {augment!r} (known: {known})")


def split_by_image(items: list[dict[str, Any]], val_split: float, seed: int = 0) -> tuple[list, list]:
    """Train/validation split by image (a cine's frames stay together), reproducible.

    With at least two images and ``val_split > 0``, at least one image validates.
    """
    ids = sorted({item["image_id"] for item in items})
    random.Random(seed).shuffle(ids)
    n_val = 0
    if val_split > 0 and len(ids) >= 2:
        n_val = min(len(ids) - 1, max(1, round(len(ids) * val_split)))
    val_ids = set(ids[:n_val])
    return [i for i in items if i["image_id"] not in val_ids], [i for i in items if i["image_id"] in val_ids]


class LoadTrainingItem:
    """Datalist item -> model-space dict before augmentation (deterministic, so it is cached).

    Output: ``image`` ``(1, S, S)`` grey in [0, 1] (serving's crop, pad and resize), ``scan_mask``
    ``(1, S, S)`` (1 on the imaging region, 0 on padding: artefacts stay inside it), ``image_id``,
    ``organ_id``; segmentation items also ``mask`` ``(1, S, S)`` of 0/1 from the stored label's
    frame, classification items ``label`` ``(1,)`` with the pathology index. The same model-space
    grey image ``python -m training`` augments (``training/data/datasets.py``'s ``LoadCased``).
    """

    def __init__(self, preprocess_config: Any, task: str) -> None:
        self.preprocess_config = preprocess_config
        self.task = task

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        from ..io import load_image
        from ..model.preprocess import (
            check_frame,
            image_geometry,
            mask_to_model_space,
            to_model_space,
            unit_intensity,
        )
        from .labels import read_stored_label

        config = self.preprocess_config
        image = load_image(item["image"])
        frame = check_frame(image, item.get("frame"))
        geometry = image_geometry(image, config)
        unit = unit_intensity(image.grey(frame), image.frames.dtype)
        out = {
            "image_id": item["image_id"],
            "organ_id": ORGAN_ORDER.index(item["organ"]),
            "image": to_model_space(unit, geometry, pad_value=config.pad_value)[None],
            "scan_mask": geometry.region_in_model_space().to(torch.float32)[None],
        }
        if self.task == "segmentation":
            stored = read_stored_label(item["label"], image.n_frames)
            mask = stored if stored.ndim == 2 else stored[item["label_frame"]]
            if mask.shape != (image.height, image.width):
                raise SonoInputError(
                    item["label"],
                    f"label shape {mask.shape} does not match the image ({image.height}, {image.width})",
                )
            out["mask"] = mask_to_model_space(mask, geometry)
        else:
            out["label"] = torch.tensor([PATHOLOGIES.index(item["pathology"])], dtype=torch.long)
        return out


class FinaliseTrainingItem:
    """After augmentation: grey ``image`` -> normalised ``(3, S, S)``; ``mask`` -> ``label`` of 0/1.

    Without augmentation the result equals :func:`sonovlm.model.preprocess_pair` /
    :func:`~sonovlm.model.preprocess_frame` exactly (what the server predicts on).
    """

    def __init__(self, preprocess_config: Any) -> None:
        self.preprocess_config = preprocess_config

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        from ..model.preprocess import normalise

        d = dict(data)
        grey = torch.as_tensor(d.pop("image")).as_subclass(torch.Tensor).to(torch.float32)
        d["image"] = normalise(grey[0], self.preprocess_config).contiguous()
        d.pop("scan_mask", None)
        if "mask" in d:
            d["label"] = (torch.as_tensor(d.pop("mask")).as_subclass(torch.Tensor) >= 0.5).to(torch.float32)
        return d


def prepare_organ_batch(batchdata: dict[str, Any], device=None, non_blocking: bool = False, **kwargs):
    """MONAI ``prepare_batch``: ``(image, label, (organ_ids,), {})`` so the network gets the organ."""
    to = {"device": device, "non_blocking": non_blocking, **kwargs}
    return (
        batchdata["image"].to(**to),
        batchdata["label"].to(**to),
        (torch.as_tensor(batchdata["organ_id"]).to(**to),),
        {},
    )


def prepare_segmentation_batch(batchdata: dict[str, Any], device=None, non_blocking: bool = False, **kwargs):
    """:func:`prepare_organ_batch` plus the labels as ``targets``, for simulating interactions."""
    image, label, args, _ = prepare_organ_batch(batchdata, device, non_blocking, **kwargs)
    return image, label, args, {"targets": label}


