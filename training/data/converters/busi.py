"""BUSI (Al-Dhabyani et al., Data in Brief 2020) as its authors distribute it.

Source structure (``Dataset_BUSI_with_GT``, 780 images)::

    Dataset_BUSI_with_GT/{benign,malignant,normal}/benign (1).png
                                                   benign (1)_mask.png
                                                   benign (1)_mask_1.png   (a second lesion, some cases)

Output: names ``busi_{class}_{n:04d}.png``; the masks of one image are united. Classification:
benign 0, malignant 1 (normal images have no pathology and are left out). Segmentation: benign
and malignant images; normal ones (empty masks) only with ``include_normal``. No official split:
70/10/20 stratified by class, seeded (:func:`training.data.splits.assign_splits`), duplicate
images (BUSI has some) kept in one split.
"""

from __future__ import annotations

import re
from pathlib import Path

from sonovlm.errors import SonoInputError

from .base import SourceCase, sanitize, write_dataset

CLASSES = {"benign": 0, "malignant": 1, "normal": None}
_IMAGE = re.compile(r"^(?P<cls>benign|malignant|normal) \((?P<n>\d+)\)$")


def find_root(src: Path) -> Path:
    """The folder holding ``benign/`` and ``malignant/`` (``src`` or its ``Dataset_BUSI_with_GT``)."""
    for candidate in (src, src / "Dataset_BUSI_with_GT"):
        if (candidate / "benign").is_dir() and (candidate / "malignant").is_dir():
            return candidate
    raise SonoInputError(src, "not a BUSI folder: expected Dataset_BUSI_with_GT/{benign,malignant,normal}/")


def read_cases(src: Path, include_normal: bool = False) -> list[SourceCase]:
    root = find_root(src)
    cases = []
    for cls, label in CLASSES.items():
        folder = root / cls
        if not folder.is_dir():
            continue
        for image in sorted(folder.iterdir()):
            if image.suffix.lower() != ".png" or "_mask" in image.stem:
                continue
            masks = sorted(folder.glob(f"{glob_escape(image.stem)}_mask*.png"))
            if not masks:
                raise SonoInputError(image, "BUSI image without its _mask.png")
            match = _IMAGE.match(image.stem)
            name = (
                f"busi_{cls}_{int(match['n']):04d}.png" if match else f"busi_{cls}_{sanitize(image.stem)}.png"
            )
            if cls == "normal" and not include_normal:
                masks = []
            cases.append(
                SourceCase(
                    name=name,
                    image=image,
                    masks=masks,
                    label=label,
                    stratum=cls,
                    empty_mask_ok=cls == "normal",
                )
            )
    return cases


def glob_escape(text: str) -> str:
    """Escape glob metacharacters (BUSI names hold brackets)."""
    return re.sub(r"([\[\]\*\?])", r"[\1]", text)


def convert(
    src: Path,
    dst: Path,
    *,
    seed: int = 0,
    fractions=None,
    include_normal: bool = False,
    near_duplicate_bits: int | None = 6,
    **_: object,
) -> dict:
    cases = read_cases(src, include_normal)
    kwargs = {"fractions": fractions} if fractions else {}
    return write_dataset(
        cases,
        dst,
        "BUSI",
        "breast_lesion",
        source=str(src),
        split_rule="no official split: train/val/test by --fractions, stratified by class "
        "(benign/malignant/normal), seeded; duplicate images in one split",
        seed=seed,
        near_duplicate_bits=near_duplicate_bits,
        **kwargs,
    )
