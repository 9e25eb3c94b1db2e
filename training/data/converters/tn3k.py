"""TN3K (Gong et al., TRFE-Net, 2021/2023) as distributed with its segmentation release.

Source structure::

    tn3k/trainval-image/0000.jpg  ...   2,879 images
    tn3k/trainval-mask/0000.jpg
    tn3k/test-image/0000.jpg      ...   614 images (the official test set)
    tn3k/test-mask/0000.jpg
    tn3k/tn3k-trainval-fold0.json        optional: {"train": [i, ...], "val": [i, ...]}: positions in
                                         the trainval-image/ listing sorted by number
    tn3k/label4trainval.csv              optional, no header: ``0000.jpg,1`` (0 benign, 1 malignant);
    tn3k/label4test.csv                  the classification labels are published separately (the
                                         ACL repository, chenghui-666/ACL); without them TN3K is
                                         segmentation only

Output: names ``tn3k_trainval_0000.png`` and ``tn3k_test_0000.png``; masks are JPEG, thresholded
at 128. Splits: the official test set; validation from ``tn3k-trainval-fold{K}.json`` (``--fold``,
default 0) when present, else a seeded, label-stratified share of trainval (val / (train + val)
of ``--fractions``).

The fold file's numbers are read as TRFE-Net's loader reads them (haifangong/TRFE-Net-for-thyroid-
nodule-segmentation, ``dataloaders/tn3k.py``: ``img_names = sorted(os.listdir(...), key=int(stem))``
then ``img_names[i]`` for each ``i``): **positions** in the trainval listing sorted by the number
in the file name, not file-name ids. They coincide only while the names run 0000, 0001, ... without
a gap; a listing with gaps is read by position, as the published splits were made.
"""

from __future__ import annotations

import json
from pathlib import Path

from sonovlm.errors import SonoInputError

from ..splits import DEFAULT_FRACTIONS, assign_splits
from .base import SourceCase, write_dataset


def find_root(src: Path) -> Path:
    for candidate in (src, src / "tn3k", src / "TN3K"):
        if (candidate / "trainval-image").is_dir() and (candidate / "test-image").is_dir():
            return candidate
    raise SonoInputError(
        src, "not a TN3K folder: expected trainval-image/, trainval-mask/, test-image/, test-mask/"
    )


def _labels(path: Path) -> dict[str, int]:
    """``label4*.csv``: ``name,label`` lines without header (a header row is skipped)."""
    if not path.is_file():
        return {}
    labels = {}
    for line_no, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines()):
        if "," not in line:
            continue
        name, value = (p.strip() for p in line.rsplit(",", 1))
        try:
            label = int(float(value))
        except ValueError:
            if line_no == 0:
                continue
            raise SonoInputError(path, f"line {line_no + 1}: label {value!r} is not 0 or 1") from None
        if label not in (0, 1):
            raise SonoInputError(path, f"line {line_no + 1}: label {label} is not 0 or 1")
        labels[Path(name).stem] = label
    return labels


def _number(case: SourceCase) -> int:
    """The number in a TN3K file name (``0042.jpg`` -> 42), the order TRFE-Net lists them in."""
    try:
        return int(case.image.stem)
    except ValueError:
        raise SonoInputError(case.image, "TN3K file names are numbers (e.g. 0042.jpg)") from None


def _fold_positions(fold_file: Path, n_trainval: int) -> tuple[set[int], set[int]]:
    """The ``train`` and ``val`` positions of ``tn3k-trainval-fold{K}.json``, checked against the
    listing of ``n_trainval`` images."""
    try:
        folds = json.loads(fold_file.read_text())
        train, val = ([int(i) for i in folds[part]] for part in ("train", "val"))
    except (json.JSONDecodeError, KeyError, ValueError, TypeError) as exc:
        raise SonoInputError(
            fold_file, f'expected {{"train": [...], "val": [...]}} of integers: {exc}'
        ) from None
    outside = sorted(i for i in train + val if not 0 <= i < n_trainval)
    if outside:
        raise SonoInputError(
            fold_file,
            f"positions {outside[:5]} are outside the {n_trainval} images of trainval-image/ "
            "(the file's numbers are positions in the listing sorted by number)",
        )
    both = sorted(set(train) & set(val))
    if both:
        raise SonoInputError(fold_file, f"positions {both[:5]} are in both 'train' and 'val'")
    return set(train), set(val)


def read_cases(src: Path, fold: int = 0, seed: int = 0, fractions=DEFAULT_FRACTIONS) -> list[SourceCase]:
    root = find_root(src)
    cases = []
    for part in ("trainval", "test"):
        labels = _labels(root / f"label4{part}.csv")
        for image in sorted((root / f"{part}-image").glob("*.jpg")):
            mask = root / f"{part}-mask" / image.name
            if not mask.is_file():
                png = mask.with_suffix(".png")
                if not png.is_file():
                    raise SonoInputError(image, f"TN3K image without its mask in {part}-mask/")
                mask = png
            cases.append(
                SourceCase(
                    name=f"tn3k_{part}_{image.stem}.png",
                    image=image,
                    masks=[mask],
                    label=labels.get(image.stem),
                    split="test" if part == "test" else None,
                )
            )
    trainval = sorted((c for c in cases if c.split is None), key=_number)
    fold_file = root / f"tn3k-trainval-fold{fold}.json"
    if fold_file.is_file():
        train_positions, val_positions = _fold_positions(fold_file, len(trainval))
        unlisted = [c.image.name for i, c in enumerate(trainval) if i not in train_positions | val_positions]
        if unlisted:
            raise SonoInputError(
                fold_file, f"{len(unlisted)} trainval images are in neither list (e.g. {unlisted[0]})"
            )
        for position, c in enumerate(trainval):
            c.split = "val" if position in val_positions else "train"
    else:
        train_f, val_f = fractions[0], fractions[1]
        share = val_f / (train_f + val_f)
        groups = {c.name: [c.name] for c in trainval}
        strata = {c.name: str(c.label) for c in trainval}
        assigned = assign_splits(groups, (1 - share, share), seed, strata, splits=("train", "val"))
        for c in trainval:
            c.split = assigned[c.name]
    return cases


def convert(
    src: Path,
    dst: Path,
    *,
    seed: int = 0,
    fold: int = 0,
    fractions=None,
    near_duplicate_bits: int | None = 6,
    **_: object,
) -> dict:
    fractions = fractions or DEFAULT_FRACTIONS
    cases = read_cases(src, fold, seed, fractions)
    has_fold_file = (find_root(src) / f"tn3k-trainval-fold{fold}.json").is_file()
    rule = (
        f"official test set; val = tn3k-trainval-fold{fold}.json 'val'"
        if has_fold_file
        else "official test set; val = seeded, label-stratified val/(train+val) share of trainval"
    )
    return write_dataset(
        cases,
        dst,
        "TN3K",
        "thyroid_nodule",
        source=str(src),
        split_rule=rule,
        seed=seed,
        fractions=fractions,
        near_duplicate_bits=near_duplicate_bits,
    )
