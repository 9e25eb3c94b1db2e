"""What every converter shares: a case list in, the public layout out.

A converter only reads its dataset's own structure into :class:`SourceCase` records; this module
checks them, finds duplicate images, assigns the splits, and writes the layout:

* images become 8-bit grey PNGs ``all/images/NAME`` (decoded pixels, PIL's ITU-R 601 luma);
* masks become 0/255 PNGs of the same name: several source masks of one image are united; a
  lossless source mask counts every non-zero pixel as lesion, a JPEG one (lossy: ringing around
  the edge) pixels >= 128;
* duplicate images (:mod:`training.data.duplicates`) form one split unit. Where the dataset's
  own splits put copies of one image in different splits, every copy moves to the most held-out
  of them (test, then val, then train), so that no test image is also trained on; a duplicate
  group whose copies carry different pathologies is left out of classification;
* ``dataset.json`` beside the split lists records the source, the split rule, the counts and
  the duplicate groups.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sonovlm.errors import SonoInputError
from sonovlm.progress import progress

from ..duplicates import find_duplicates, grey_pixels
from ..layout import SPLITS, LayoutWriter
from ..splits import DEFAULT_FRACTIONS, assign_splits

_PRECEDENCE = {"test": 2, "val": 1, "train": 0}
LOSSY_SUFFIXES = (".jpg", ".jpeg")


@dataclass
class SourceCase:
    """One image of a source dataset.

    Attributes:
        name: output file name in ``all/images`` (unique, ``.png``).
        image: source image file.
        masks: source mask files (united); empty = no segmentation for this image.
        label: 0 benign, 1 malignant, ``None`` = not for classification.
        group: split unit (a patient id); ``None`` = the image alone.
        split: the dataset's own split for it, or ``None`` to assign one.
        stratum: what splits are stratified on (defaults to the label).
        empty_mask_ok: an all-zero mask is a real annotation (a normal image), not an error.
    """

    name: str
    image: Path
    masks: list[Path] = field(default_factory=list)
    label: int | None = None
    group: str | None = None
    split: str | None = None
    stratum: str | None = None
    empty_mask_ok: bool = False


def read_source_mask(path: Path) -> np.ndarray:
    """A source mask file as bool ``(rows, cols)`` (see the module notes for the threshold)."""
    grey = grey_pixels(path)
    return grey >= 128 if path.suffix.lower() in LOSSY_SUFFIXES else grey > 0


def write_dataset(
    cases: Sequence[SourceCase],
    dst: str | os.PathLike,
    dataset: str,
    organ: str,
    source: str,
    split_rule: str,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    near_duplicate_bits: int | None = 6,
) -> dict:
    """Write ``cases`` as dataset ``dataset`` under ``dst`` and return its ``dataset.json`` record."""
    if not cases:
        raise SonoInputError(source, f"no {dataset} images found")
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        clash = [n for n, k in Counter(names).items() if k > 1][:3]
        raise SonoInputError(source, f"two source images map to the same name: {clash}")
    by_name = {c.name: c for c in cases}
    for case in cases:
        for path in [case.image, *case.masks]:
            if not path.is_file():
                raise SonoInputError(path, "file listed by the dataset is missing")

    duplicates = find_duplicates({c.name: c.image for c in cases}, near_duplicate_bits)
    group_of = {c.name: c.group or f"image:{c.name}" for c in cases}
    for dup in duplicates:  # one split unit per duplicate set (merging their groups too)
        merged = "dup:" + "|".join(sorted({group_of[n] for n in dup}))
        olds = {group_of[n] for n in dup}
        for name, g in list(group_of.items()):
            if g in olds:
                group_of[name] = merged
    members: dict[str, list[str]] = defaultdict(list)
    for name in names:
        members[group_of[name]].append(name)

    split_of: dict[str, str] = {}
    moved: list[str] = []
    free_groups: dict[str, list[str]] = {}
    for key, group in members.items():
        preset = {by_name[n].split for n in group if by_name[n].split is not None}
        if preset:
            target = max(preset, key=lambda s: _PRECEDENCE[s])
            for n in group:
                if by_name[n].split not in (None, target):
                    moved.append(n)
                split_of[n] = target
        else:
            free_groups[key] = group
    strata = {}
    for key, group in free_groups.items():
        c = by_name[group[0]]
        strata[key] = c.stratum if c.stratum is not None else str(c.label)
    split_of.update(assign_splits(free_groups, fractions, seed, strata))

    conflicting: list[list[str]] = []
    no_class: set[str] = set()
    for dup in duplicates:
        labels = {by_name[n].label for n in dup if by_name[n].label is not None}
        if len(labels) > 1:
            conflicting.append(dup)
            no_class.update(dup)

    writer = LayoutWriter(dst)
    seg: dict[str, list[str]] = {s: [] for s in SPLITS}
    cls: dict[str, list[str]] = {s: [] for s in SPLITS}
    labels_out: dict[str, int] = {}
    empty_masks: list[str] = []
    for case in progress(sorted(cases, key=lambda c: c.name), f"writing {dataset}", unit="image"):
        grey = grey_pixels(case.image)
        writer.write_image(case.name, grey)
        if case.masks:
            mask = np.zeros(grey.shape, dtype=bool)
            for mask_path in case.masks:
                part = read_source_mask(mask_path)
                if part.shape != grey.shape:
                    raise SonoInputError(
                        mask_path,
                        f"mask is {part.shape[1]}x{part.shape[0]}, its image {grey.shape[1]}x{grey.shape[0]}",
                    )
                mask |= part
            if not mask.any():
                if not case.empty_mask_ok:
                    empty_masks.append(case.name)
                    continue
            writer.write_mask(case.name, mask)
            seg[split_of[case.name]].append(case.name)
        if case.label is not None and case.name not in no_class:
            cls[split_of[case.name]].append(case.name)
            labels_out[case.name] = case.label

    info = {
        "dataset": dataset,
        "organ": organ,
        "source": source,
        "split_rule": split_rule,
        "seed": seed,
        "fractions": list(fractions),
        "duplicate_groups": duplicates,
        "duplicates_moved_to_one_split": sorted(moved),
        "duplicates_with_conflicting_labels": conflicting,
        "empty_masks_skipped": empty_masks,
        "near_duplicate_bits": near_duplicate_bits,
    }
    if any(seg.values()):
        for split in SPLITS:
            writer.write_split("segmentation", dataset, split, seg[split])
        writer.write_info("segmentation", dataset, {**info, "counts": {s: len(v) for s, v in seg.items()}})
    if labels_out:
        for split in SPLITS:
            writer.write_split("classification", dataset, split, cls[split])
        writer.write_labels(dataset, labels_out)
        class_counts = {s: dict(Counter(labels_out[n] for n in v)) for s, v in cls.items()}
        writer.write_info("classification", dataset, {**info, "counts": class_counts})
    info["segmentation_counts"] = {s: len(v) for s, v in seg.items()}
    info["classification_counts"] = {s: len(v) for s, v in cls.items()}
    return info


def sanitize(stem: str) -> str:
    """A file-name stem without spaces or brackets: ``"benign (12)"`` -> ``"benign_12"``."""
    out = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem.strip())
    while "__" in out:
        out = out.replace("__", "_")
    return out.strip("_")
