"""Any dataset given as images, masks and one CSV.

``SRC`` is a CSV file with a header; columns (paths relative to the CSV's folder):

* ``image`` (required): the image file (anything PIL reads: PNG, JPEG, BMP, TIFF);
* ``mask`` (optional): its lesion mask, non-zero = lesion (JPEG masks: >= 128); blank = none;
* ``label`` (optional): ``benign``/``malignant`` or ``0``/``1``; blank = unknown;
* ``split`` (optional): ``train``/``val``/``test``; blank = assigned by ``--fractions`` and seed;
* ``group`` (optional): patient or study id; one group never straddles splits.

``--name`` names the dataset (required), ``--organ`` its organ (required). Output file names are
``{name}_{image stem}.png`` (lower case, sanitised).
"""

from __future__ import annotations

import csv
from pathlib import Path

from sonovlm.errors import SonoInputError
from sonovlm.organs import organ_label

from .base import SourceCase, sanitize, write_dataset

LABELS = {"benign": 0, "malignant": 1, "0": 0, "1": 1}


def read_cases(src: Path, name: str) -> list[SourceCase]:
    if not src.is_file():
        raise SonoInputError(
            src, "generic layout needs a CSV file (columns image, mask, label, split, group)"
        )
    with src.open(newline="", encoding="utf-8-sig") as stream:
        rows = list(csv.DictReader(stream))
    if not rows or "image" not in rows[0]:
        raise SonoInputError(src, "CSV needs a header with at least an 'image' column")
    base = src.parent
    prefix = sanitize(name).lower()
    cases = []
    for row_no, row in enumerate(rows, start=2):
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
        label_text = row.get("label", "").lower()
        if label_text and label_text not in LABELS:
            raise SonoInputError(src, f"line {row_no}: label {row['label']!r} is not benign/malignant/0/1")
        split = row.get("split", "").lower() or None
        if split not in (None, "train", "val", "test"):
            raise SonoInputError(src, f"line {row_no}: split {row['split']!r} is not train/val/test")
        image = base / row["image"]
        cases.append(
            SourceCase(
                name=f"{prefix}_{sanitize(image.stem).lower()}.png",
                image=image,
                masks=[base / row["mask"]] if row.get("mask") else [],
                label=LABELS[label_text] if label_text else None,
                group=f"group:{row['group']}" if row.get("group") else None,
                split=split,
            )
        )
    return cases


def convert(
    src: Path,
    dst: Path,
    *,
    name: str | None = None,
    organ: str | None = None,
    seed: int = 0,
    fractions=None,
    near_duplicate_bits: int | None = 6,
    **_: object,
) -> dict:
    if not name:
        raise SonoInputError("--name", "the generic converter needs --name DATASET")
    if not organ:
        raise SonoInputError("--organ", "the generic converter needs --organ ORGAN")
    organ_label(organ)
    kwargs = {"fractions": fractions} if fractions else {}
    return write_dataset(
        read_cases(src, name),
        dst,
        name,
        organ,
        source=str(src),
        split_rule="the CSV's split column where given; the rest by --fractions, stratified by label, "
        "seeded, groups and duplicate images kept in one split",
        seed=seed,
        near_duplicate_bits=near_duplicate_bits,
        **kwargs,
    )
