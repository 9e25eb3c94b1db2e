"""NRRD and NIfTI files laid out as 3D Slicer writes them, written by hand (not by the code under
test), so that the readers are checked against the format rather than against themselves.

Slicer saves a 2D image or labelmap as a volume of one slice: sizes ``cols rows 1`` with the x
(column) index fastest, LPS space, and ``key:=value`` fields for segmentations.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

NRRD_TYPES = {np.dtype("uint8"): "unsigned char", np.dtype("int16"): "short", np.dtype("uint16"): "ushort",
              np.dtype("float32"): "float", np.dtype("int32"): "int"}


def slicer_nrrd(
    path: Path,
    pixels: np.ndarray,
    *,
    spacing_mm: tuple[float, float] | None = (1.0, 1.0),
    space_header: bool = True,
    one_slice: bool = True,
    components: str | None = None,
    gzip_data: bool = True,
    extra: dict[str, str] | None = None,
) -> Path:
    """Write ``(rows, cols)`` or ``(rows, cols, c)`` pixels as Slicer's NRRD.

    Args:
        spacing_mm: ``(row_mm, col_mm)`` written in ``space directions`` (or ``spacings``
            without a space header); ``None`` writes no spacing at all.
        space_header: write ``space``, ``space directions`` and ``space origin`` (a full header);
            otherwise only ``sizes`` (and ``spacings``).
        one_slice: a 3D volume of one slice (Slicer's way) instead of a 2D file.
        components: the kind of the component axis (``vector``, ``RGB-color``) for ``(rows, cols,
            c)`` pixels; it is the first (fastest) axis, as Slicer writes vector volumes.
        extra: ``key:=value`` fields.
    """
    pixels = np.asarray(pixels)
    rows, cols = pixels.shape[:2]
    # x fastest: the file order is (c), x, y, (z): the reverse of C order (z, y, x, c).
    sizes = [cols, rows] + ([1] if one_slice else [])
    kinds = ["domain"] * len(sizes)
    if components:
        sizes = [pixels.shape[2]] + sizes
        kinds = [components] + kinds
    lines = [
        "NRRD0004",
        "# Complete NRRD file format specification at:",
        "# http://teem.sourceforge.net/nrrd/format.html",
        f"type: {NRRD_TYPES[pixels.dtype]}",
        f"dimension: {len(sizes)}",
    ]
    if space_header:
        lines.append("space: left-posterior-superior" if one_slice else "space dimension: 2")
    lines.append("sizes: " + " ".join(str(s) for s in sizes))
    if spacing_mm is not None:
        row_mm, col_mm = spacing_mm
        none = ["none"] if components else []
        if space_header and one_slice:
            vectors = [f"({col_mm},0,0)", f"(0,{row_mm},0)", "(0,0,1)"]
            lines.append("space directions: " + " ".join(none + vectors))
        elif space_header:
            lines.append("space directions: " + " ".join(none + [f"({col_mm},0)", f"(0,{row_mm})"]))
        else:
            spacings = [str(col_mm), str(row_mm)] + (["1"] if one_slice else [])
            lines.append("spacings: " + " ".join((["nan"] if components else []) + spacings))
    lines.append("kinds: " + " ".join(kinds))
    if pixels.dtype.itemsize > 1:
        lines.append("endian: little")
    lines.append(f"encoding: {'gzip' if gzip_data else 'raw'}")
    if space_header:
        lines.append("space origin: (0,0,0)" if one_slice else "space origin: (0,0)")
    for key, value in (extra or {}).items():
        lines.append(f"{key}:={value}")
    data = np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<")).tobytes()
    if gzip_data:
        data = gzip.compress(data)
    path.write_bytes(("\n".join(lines) + "\n\n").encode() + data)
    return path


def slicer_nifti(path: Path, pixels: np.ndarray, spacing_mm: tuple[float, float] = (1.0, 1.0)) -> Path:
    """Write ``(rows, cols)`` pixels as ITK/Slicer writes NIfTI: ``(cols, rows, 1)``, LPS->RAS."""
    import nibabel as nib

    row_mm, col_mm = spacing_mm
    affine = np.diag([-col_mm, -row_mm, 1.0, 1.0])
    image = nib.Nifti1Image(np.asarray(pixels).T[:, :, None].copy(), affine)
    image.header.set_xyzt_units("mm")
    nib.save(image, str(path))
    return path
