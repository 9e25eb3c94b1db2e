"""Torch datasets over the public layout, in the model's own preprocessing geometry.

A case goes through the same steps as serving (:mod:`sonovlm.model.preprocess`): the foundation
loader reads it (:func:`sonovlm.io.load_image`), the frame is cropped to the ultrasound imaging
region (burned-in text stays out), padded to a centred square and resized to the backbone's
input. Augmentation (:mod:`sonovlm.model.augment`) acts on that model-space grey image in [0, 1], and
only then is it normalised to the backbone's 3-channel input. Without augmentation an item's
``pixel_values`` and ``mask`` equal ``SonoVLM.preprocess_pair`` exactly (a test checks it).

Items are dicts:

* ``pixel_values`` ``(3, S, S)`` float32; ``mask`` ``(1, S, S)`` 0/1 (segmentation);
* ``label`` long (0 benign, 1 malignant, -1 unknown); ``organ_id`` long (row of ``ORGANS``);
* ``name``, ``dataset``, ``caption`` (pairs) as strings;
* with ``keep_frame``: ``frame_mask`` ``(rows, cols)`` uint8 of the whole frame, ``geometry``
  (:class:`~sonovlm.model.preprocess.FrameGeometry`) and ``spacing_mm`` (tuple or ``None``),
  for evaluation at the image's own resolution.

Use :func:`collate` as the loaders' ``collate_fn``.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.data import CacheDataset
from monai.transforms import Compose, Transform
from sonovlm.errors import SonoInputError
from sonovlm.io import load_image, load_mask
from sonovlm.model import ORGANS
from sonovlm.model.preprocess import (
    PreprocessConfig,
    check_frame,
    image_geometry,
    mask_to_model_space,
    normalise,
    to_model_space,
    unit_intensity,
)
from sonovlm.progress import cache_progress

from .layout import PublicLayout
from .splits import few_shot_subset, k_shot_subset

#: Keys collated as lists rather than stacked tensors.
LIST_KEYS = ("name", "dataset", "caption", "frame_mask", "geometry", "spacing_mm", "organ")


@dataclass(frozen=True)
class Case:
    """One image of a split, with what is known about it.

    Attributes:
        name: file name in the layout. dataset: dataset name (for image-caption pairs, the
            pair's split, ``train`` or ``val``). organ: organ name (may be empty for pairs).
        image: image path. mask: mask path or ``None``. label: 0/1 or ``None``.
        caption: caption text (image-caption pairs) or ``None``.
    """

    name: str
    dataset: str
    organ: str
    image: Path
    mask: Path | None = None
    label: int | None = None
    caption: str | None = None


def split_cases(
    layout: PublicLayout,
    task: str,
    datasets: Sequence[str],
    split: str,
    train_ratio: float = 1.0,
    seed: int = 0,
    organs: Mapping[str, str] | None = None,
    shots: int | None = None,
) -> list[Case]:
    """The cases of ``split`` for ``task`` over ``datasets`` (pooled, each with its organ).

    ``train_ratio`` < 1 keeps a seeded fraction of the *train* split (few-shot; per class for
    classification), as the public code's ``--ratio`` does. ``shots`` keeps ``shots`` images of
    the *train* split per dataset (segmentation: one organ each) or per dataset and pathology
    (classification), seeded, from the same order (:func:`~training.data.splits.k_shot_subset`);
    a class with fewer is an error. Give one of the two, not both.
    """
    if shots is not None and train_ratio < 1:
        raise SonoInputError("--shots", "give --shots or --train-ratio, not both")
    cases: list[Case] = []
    for dataset in datasets:
        names = layout.split(task, dataset, split)
        labels = layout.labels(dataset) if task == "classification" else {}
        if split == "train" and shots is not None:
            if task == "classification":
                labels_of = {n: labels[n] for n in names if n in labels}
                unlabelled = [n for n in names if n not in labels]
                if unlabelled:
                    raise SonoInputError(
                        layout.task_dir(task, dataset) / "labels.csv",
                        f"no label for {unlabelled[0]} (train list)",
                    )
                names = k_shot_subset(names, shots, seed, labels_of, f"{task}/{dataset} train split")
            else:
                names = k_shot_subset(names, shots, seed, None, f"{task}/{dataset} train split")
        elif split == "train" and train_ratio < 1:
            names = few_shot_subset(names, train_ratio, seed, labels or None)
        organ = layout.organ(task, dataset, organs)
        for name in names:
            image = layout.image_path(name)
            if not image.is_file():
                raise SonoInputError(image, f"listed in {task}/{dataset}/{split}.txt but missing")
            mask = None
            if task == "segmentation":
                mask = layout.mask_path(name)
                if not mask.is_file():
                    raise SonoInputError(mask, f"mask of {name} ({task}/{dataset}/{split}.txt) missing")
            label = None
            if task == "classification":
                if name not in labels:
                    raise SonoInputError(
                        layout.task_dir(task, dataset) / "labels.csv", f"no label for {name} ({split} list)"
                    )
                label = labels[name]
            cases.append(Case(name=name, dataset=dataset, organ=organ, image=image, mask=mask, label=label))
    return cases


def pair_cases(path: str | os.PathLike, captions: str = "raw", organ: str | None = None) -> list[Case]:
    """Image-caption pairs from a CSV (header) or JSONL file.

    Fields: ``image`` (path, relative to the file's folder), ``caption`` (raw text) and, for
    ``captions="refined"``, ``refined_caption`` (the LLM-refined text, written by ``python -m
    training refine-captions``; the released v1 files' ``refined`` column is read as it);
    optional ``split`` (``train``/``val``; rows without one are train) and ``organ``.
    """
    path = Path(path)
    if captions not in ("raw", "refined"):
        raise SonoInputError("--captions", f"{captions!r} is not raw or refined")
    if not path.is_file():
        raise SonoInputError(path, "image-caption pair file not found")
    if path.suffix.lower() == ".jsonl":
        rows = []
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise SonoInputError(path, f"line {line_no}: not JSON ({exc})") from None
    else:
        with path.open(newline="", encoding="utf-8-sig") as stream:
            rows = list(csv.DictReader(stream))
    column = "caption" if captions == "raw" else "refined_caption"
    cases = []
    for row_no, row in enumerate(rows, start=1):
        if column == "refined_caption" and "refined_caption" not in row and "refined" in row:
            row = {**row, "refined_caption": row["refined"]}  # the authors' released v1 files
        text = str(row.get(column) or "").strip()
        if not row.get("image"):
            raise SonoInputError(path, f"row {row_no}: no image")
        if not text:
            hint = " (make them with `python -m training refine-captions`)" if captions == "refined" else ""
            raise SonoInputError(path, f"row {row_no}: empty {column}{hint}")
        image = path.parent / str(row["image"])
        if not image.is_file():
            raise SonoInputError(image, f"image of pair {row_no} not found")
        split = str(row.get("split") or "train").strip().lower()
        row_organ = str(row.get("organ") or organ or "")
        cases.append(Case(name=image.name, dataset=split, organ=row_organ, image=image, caption=text))
    return cases


class LoadCased(Transform):
    """Case record -> model-space dict (deterministic, so MONAI's CacheDataset caches it).

    Output keys: ``image`` ``(1, S, S)`` grey in [0, 1]; ``scan_mask`` ``(1, S, S)`` (1 where the
    model pixel shows the imaging region, 0 on padding); ``mask`` ``(1, S, S)`` 0/1 when the case
    has one; the case's fields; and with ``keep_frame`` the frame-space mask, geometry, spacing.
    """

    def __init__(self, config: PreprocessConfig, keep_frame: bool = False, frame: int | None = None) -> None:
        self.config = config
        self.keep_frame = keep_frame
        self.frame = frame

    def __call__(self, case: Case) -> dict:
        image = load_image(case.image)
        frame = check_frame(image, self.frame)
        geometry = image_geometry(image, self.config)
        unit = unit_intensity(image.grey(frame), image.frames.dtype)
        out: dict = {
            "image": to_model_space(unit, geometry, pad_value=self.config.pad_value)[None],
            "scan_mask": geometry.region_in_model_space().to(torch.uint8)[None],
            "label": torch.tensor(-1 if case.label is None else case.label, dtype=torch.long),
            "organ_id": torch.tensor(ORGANS.index(case.organ) if case.organ in ORGANS else -1),
            "name": case.name,
            "dataset": case.dataset,
        }
        if case.caption is not None:
            out["caption"] = case.caption
        if case.mask is not None:
            frame_mask = load_mask(case.mask, shape=(image.height, image.width))
            out["mask"] = mask_to_model_space(frame_mask, geometry).to(torch.uint8)  # 0/1, 4x less cache
            if self.keep_frame:
                out["frame_mask"] = (np.asarray(frame_mask) != 0).astype(np.uint8)
        if self.keep_frame:
            out["geometry"] = geometry
            out["spacing_mm"] = image.spacing_mm
        return out


class FinaliseInputd(Transform):
    """Model-space grey ``image`` -> normalised ``pixel_values`` ``(3, S, S)``; scratch keys dropped."""

    def __init__(self, config: PreprocessConfig) -> None:
        self.config = config

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        grey = torch.as_tensor(d.pop("image")).as_subclass(torch.Tensor).to(torch.float32)
        d["pixel_values"] = normalise(grey[0], self.config).contiguous()
        d.pop("scan_mask", None)
        if "mask" in d:
            d["mask"] = (torch.as_tensor(d["mask"]).as_subclass(torch.Tensor) >= 0.5).to(torch.float32)
        return d


def build_dataset(
    cases: Sequence[Case],
    config: PreprocessConfig,
    augmentation: Callable | None = None,
    keep_frame: bool = False,
    cache_rate: float = 1.0,
    num_workers: int = 0,
) -> CacheDataset:
    """A MONAI ``CacheDataset``: loading and preprocessing cached, augmentation per epoch.

    Args:
        cases: the split's cases. config: the model's preprocessing.
        augmentation: random dictionary transforms on ``image``/``mask``/``scan_mask`` (train only).
        keep_frame: keep frame-space mask and geometry for evaluation.
        cache_rate: share of cases cached in memory (0 = load every time).
        num_workers: threads that fill the cache.
    """
    steps: list = [LoadCased(config, keep_frame)]
    if augmentation is not None:
        steps.append(augmentation)
    steps.append(FinaliseInputd(config))
    return CacheDataset(
        data=list(cases),
        transform=Compose(steps),
        cache_rate=cache_rate,
        num_workers=num_workers or None,
        progress=cache_progress(),
        copy_cache=augmentation is not None,
    )


def collate(items: Sequence[dict]) -> dict:
    """Stack tensors, keep :data:`LIST_KEYS` (and anything not a tensor) as lists."""
    batch: dict = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if key in LIST_KEYS or not isinstance(values[0], torch.Tensor):
            batch[key] = values
        else:
            batch[key] = torch.stack([torch.as_tensor(v).as_subclass(torch.Tensor) for v in values])
    return batch
