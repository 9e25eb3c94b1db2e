"""DDTI (Pedraza et al., SPIE 2015), in its commonly distributed processed form.

The original DDTI release (CIM@LAB) is JPEG images with XML files holding nodule outlines as
point lists and TI-RADS scores, not pathology. The form most papers use (the public code's
release included) is the TN-SCUI 2020 re-processing by the challenge's winners::

    DDTI/image/1.PNG ...     637 images (renumbered; damaged and multi-nodule scans removed)
    DDTI/mask/1.PNG          nodule masks, same names
    DDTI/category.csv        NOT a pathology: its authors state the categories are forged

(sometimes nested, for example ``2_preprocessed_data/stage1/p_image`` and ``p_mask``). This
converter reads that form: the first folder named ``image`` or ``p_image`` (searched from SRC)
and its sibling ``mask`` or ``p_mask``. Segmentation only; ``category.csv`` is ignored. Splits:
70/10/20 seeded (``--fractions``), duplicate images kept in one split.
"""

from __future__ import annotations

from pathlib import Path

from sonovlm.errors import SonoInputError

from .base import SourceCase, sanitize, write_dataset

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
_PAIRS = (("image", "mask"), ("p_image", "p_mask"))


def find_folders(src: Path) -> tuple[Path, Path]:
    """``(image_dir, mask_dir)`` of the processed DDTI form under ``src``."""
    candidates = [src, *sorted(p for p in src.rglob("*") if p.is_dir())]
    for folder in candidates:
        for image_name, mask_name in _PAIRS:
            if (folder / image_name).is_dir() and (folder / mask_name).is_dir():
                return folder / image_name, folder / mask_name
    raise SonoInputError(
        src, "not a processed DDTI folder: expected image/ and mask/ (or p_image/ and p_mask/)"
    )


def read_cases(src: Path) -> list[SourceCase]:
    image_dir, mask_dir = find_folders(src)
    masks = {p.stem.lower(): p for p in mask_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    cases = []
    for image in sorted(image_dir.iterdir()):
        if image.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        mask = masks.get(image.stem.lower())
        if mask is None:
            raise SonoInputError(image, f"DDTI image without a mask in {mask_dir}")
        cases.append(SourceCase(name=f"ddti_{sanitize(image.stem)}.png", image=image, masks=[mask]))
    return cases


def convert(
    src: Path, dst: Path, *, seed: int = 0, fractions=None, near_duplicate_bits: int | None = 6, **_: object
) -> dict:
    kwargs = {"fractions": fractions} if fractions else {}
    return write_dataset(
        read_cases(src),
        dst,
        "DDTI",
        "thyroid_nodule",
        source=str(src),
        split_rule="no official split: train/val/test by --fractions, seeded; duplicate images in one split; "
        "segmentation only (the processed release's category.csv is documented as forged)",
        seed=seed,
        near_duplicate_bits=near_duplicate_bits,
        **kwargs,
    )
