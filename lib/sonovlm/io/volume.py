"""NRRD (pynrrd) and NIfTI (nibabel) images and masks, as 3D Slicer writes and reads them.

Both formats store the x index fastest and the readers return x-first arrays; this module is the
boundary: what it returns is ``(frames, rows, cols[, channels])`` with rows = j (the second voxel
index) and cols = i (the first). The voxel grid is the pixel grid: directions and origin are not
applied (an image and its mask share the grid, whatever the patient orientation says).

A 2D image stored as a volume (Slicer's one-slice volume, sizes ``cols rows 1``) has one frame; a
plain 2D file too; more slices (or a Slicer sequence's ``list`` axis) are frames.

A Slicer segmentation (``.seg.nrrd``, fields ``Segment*``) whose segments overlap is stored in
layers on a ``list`` axis; the layers are merged by maximum (each holds its segments' label values).

Spacing: the lengths of the i and j direction vectors (NRRD ``space directions`` or
``spacings``; NIfTI ``pixdim``), in mm. A header of exactly 1 x 1 is what Slicer and ITK write
for an image that was never calibrated (a PNG loaded into Slicer), so it is read as
"uncalibrated" (``None``); any other value is taken as the pixel spacing.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass

import numpy as np

from ..errors import SonoInputError

#: NRRD axis kinds that hold colour/vector components (the axis becomes channels).
_COMPONENT_KINDS = {
    "rgb-color",
    "rgba-color",
    "3-color",
    "4-color",
    "vector",
    "covariant-vector",
    "normal",
    "3-vector",
    "4-vector",
    "point",
}
#: NRRD axis kinds that step through frames (Slicer sequences use ``list``).
_FRAME_KINDS = {"list", "time", "sequence"}

_LENGTH_TO_MM = {"mm": 1.0, "millimeter": 1.0, "cm": 10.0, "m": 1000.0, "meter": 1000.0, "um": 1e-3,
                 "micron": 1e-3, "µm": 1e-3}

UNCALIBRATED_SPACING = (1.0, 1.0)


@dataclass
class Volume:
    """Pixels of an NRRD or NIfTI file at the package convention.

    Attributes:
        array: ``(frames, rows, cols[, channels])`` in the stored dtype.
        spacing_mm: ``(row_mm, col_mm)`` or ``None`` (see the module notes).
        extent_offset: ``(row, col)`` of the array's first pixel within the image it was cut
            from (Slicer's ``Segmentation_ReferenceImageExtentOffset``), ``None`` when absent.
    """

    array: np.ndarray
    spacing_mm: tuple[float, float] | None
    extent_offset: tuple[int, int] | None = None


def _calibrated(row_mm: float, col_mm: float) -> tuple[float, float] | None:
    spacing = (float(row_mm), float(col_mm))
    if not all(np.isfinite(spacing)) or min(spacing) <= 0 or spacing == UNCALIBRATED_SPACING:
        return None
    return spacing


# -- NRRD -----------------------------------------------------------------------------------------


def read_nrrd(path: str | os.PathLike) -> Volume:
    """Read an NRRD image or labelmap (including Slicer's x-fastest one-slice volumes)."""
    import nrrd

    try:
        data, header = nrrd.read(os.fspath(path), index_order="F")
    except (nrrd.NRRDError, ValueError, OSError, EOFError, KeyError, zlib.error) as exc:
        raise SonoInputError(path, f"cannot read the NRRD file: {exc}") from exc
    kinds = [str(k).lower() for k in header.get("kinds", ["domain"] * data.ndim)]
    if len(kinds) != data.ndim:
        raise SonoInputError(path, f"NRRD header has {len(kinds)} kinds for {data.ndim} axes")
    file_axes = list(range(data.ndim))  # axis of the array -> axis of the file header
    if "list" in kinds and any(str(key).startswith("Segment") for key in header):
        # A Slicer .seg.nrrd with overlapping segments keeps them in layers on a 'list' axis.
        layers = kinds.index("list")
        data = data.max(axis=layers)
        del kinds[layers], file_axes[layers]
    sizes = list(data.shape)

    components = [a for a, k in enumerate(kinds) if k in _COMPONENT_KINDS]
    frame_axes = [a for a, k in enumerate(kinds) if k in _FRAME_KINDS]
    spatial = [a for a, k in enumerate(kinds) if a not in components and a not in frame_axes]
    if len(components) > 1 or len(frame_axes) > 1 or not 2 <= len(spatial) <= 3:
        raise SonoInputError(path, f"unsupported NRRD layout: sizes {sizes}, kinds {kinds}")
    col_axis, row_axis = spatial[0], spatial[1]
    slice_axes = spatial[2:] + frame_axes
    if len(slice_axes) == 2 and min(sizes[a] for a in slice_axes) > 1:
        raise SonoInputError(path, f"NRRD holds a sequence of volumes (sizes {sizes}); expected 2D frames")
    array = np.transpose(data, slice_axes + [row_axis, col_axis] + components)
    # Slices and frames (at most one of them longer than 1) become the frame axis.
    array = array.reshape((-1, sizes[row_axis], sizes[col_axis]) + array.shape[len(slice_axes) + 2 :])
    return Volume(
        np.ascontiguousarray(_components_last(array, path)),
        _nrrd_spacing(header, file_axes[col_axis], file_axes[row_axis], path),
        _extent_offset(header),
    )


def _components_last(array: np.ndarray, path) -> np.ndarray:
    """Keep grey as ``(frames, rows, cols)``; colour as ``(..., 3)`` (alpha dropped)."""
    if array.ndim == 3:
        return array
    n = array.shape[-1]
    if n == 1:
        return array[..., 0]
    if n in (3, 4):
        return array[..., :3]
    raise SonoInputError(path, f"{n} components per pixel; expected 1 (grey) or 3 (RGB)")


def _length_scale(unit: str, path) -> float:
    key = unit.strip().strip('"').lower()
    if not key:
        return 1.0
    if key not in _LENGTH_TO_MM:
        raise SonoInputError(path, f"unknown length unit {unit!r} in the header")
    return _LENGTH_TO_MM[key]


def _nrrd_spacing(header: dict, col_axis: int, row_axis: int, path) -> tuple[float, float] | None:
    directions = header.get("space directions")
    if directions is not None:
        # pynrrd gives one row per axis, NaN for the non-spatial ("none") ones.
        directions = np.asarray(directions, dtype=float)
        units = header.get("space units")
        scale = np.array([_length_scale(u, path) for u in units]) if units else 1.0
        col_mm = float(np.linalg.norm(directions[col_axis] * scale))
        row_mm = float(np.linalg.norm(directions[row_axis] * scale))
        return _calibrated(row_mm, col_mm)
    spacings = header.get("spacings")
    if spacings is not None:
        spacings = np.asarray(spacings, dtype=float)
        return _calibrated(spacings[row_axis], spacings[col_axis])
    return None


def _extent_offset(header: dict) -> tuple[int, int] | None:
    value = header.get("Segmentation_ReferenceImageExtentOffset")
    if value is None:
        return None
    parts = [int(v) for v in str(value).split()]
    if len(parts) < 2:
        return None
    return parts[1], parts[0]


#: zlib level of written label maps (NRRD gzip, PNG): speed over the last few kilobytes.
MASK_GZIP_LEVEL = 1


def write_nrrd(path: str | os.PathLike, mask: np.ndarray, spacing_mm: tuple[float, float] | None) -> None:
    """Write a ``(rows, cols)`` array as Slicer's one-slice labelmap NRRD.

    Sizes ``cols rows 1`` (x fastest), space left-posterior-superior, identity directions scaled
    by the spacing (1 mm when ``None``), origin 0, gzip.
    """
    write_nrrd_slices(path, np.ascontiguousarray(mask)[None], spacing_mm)


def write_nrrd_slices(
    path: str | os.PathLike, slices: np.ndarray, spacing_mm: tuple[float, float] | None
) -> None:
    """Write a ``(slices, rows, cols)`` array (e.g. a cine's frames) as a Slicer labelmap NRRD.

    Sizes ``cols rows slices`` (x fastest), space left-posterior-superior, identity directions
    scaled by the spacing (1 mm when ``None``; 1 between slices), origin 0, gzip; NRRD type the
    array's dtype.
    """
    import nrrd

    row_mm, col_mm = spacing_mm if spacing_mm is not None else UNCALIBRATED_SPACING
    header = {
        "type": str(slices.dtype),
        "space": "left-posterior-superior",
        "kinds": ["domain", "domain", "domain"],
        "space directions": np.diag([float(col_mm), float(row_mm), 1.0]),
        "space origin": np.zeros(3),
        "endian": "little",
        "encoding": "gzip",
    }
    # Level 1: a label map compresses almost as well at a fraction of level 9's time (a large mask,
    # 480 x 640: about 1 ms against 50 ms; the server writes one per click).
    nrrd.write(
        os.fspath(path),
        np.ascontiguousarray(slices),
        header,
        index_order="C",
        compression_level=MASK_GZIP_LEVEL,
    )


# -- NIfTI ----------------------------------------------------------------------------------------


def read_nifti(path: str | os.PathLike) -> Volume:
    """Read a NIfTI-1/2 image or labelmap: ``(i, j[, k[, t[, c]]])`` -> ``(frames, rows, cols[, c])``."""
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError
    from nibabel.spatialimages import HeaderDataError

    try:
        image = nib.load(os.fspath(path))
        data = np.asanyarray(image.dataobj)
    except (ImageFileError, HeaderDataError, ValueError, OSError, EOFError, zlib.error) as exc:
        raise SonoInputError(path, f"cannot read the NIfTI file: {exc}") from exc
    if data.dtype.names:  # RGB24 / RGBA32 as a structured dtype: components go last
        grid = data.shape
        if len(grid) > 4:
            raise SonoInputError(path, f"NIfTI RGB with {len(grid)} dimensions is not an image")
        data = np.stack([data[name] for name in data.dtype.names[:3]], axis=-1)
        data = data.reshape(grid + (1,) * (4 - len(grid)) + (3,))
    while data.ndim < 5:
        data = data[..., None]
    if data.ndim > 5:
        raise SonoInputError(path, f"NIfTI with {data.ndim} dimensions is not an image")
    cols, rows, slices, times, components = data.shape
    if slices > 1 and times > 1:
        raise SonoInputError(path, f"NIfTI holds a sequence of volumes (shape {data.shape[:4]})")
    array = np.transpose(data, (2, 3, 1, 0, 4)).reshape(slices * times, rows, cols, components)
    zooms = image.header.get_zooms()
    unit = image.header.get_xyzt_units()[0] or ""
    scale = {"meter": 1000.0, "mm": 1.0, "micron": 1e-3, "unknown": 1.0, "": 1.0}.get(unit, 1.0)
    spacing = _calibrated(zooms[1] * scale, zooms[0] * scale) if len(zooms) >= 2 else None
    return Volume(np.ascontiguousarray(_components_last(array, path)), spacing)


def write_nifti(path: str | os.PathLike, mask: np.ndarray, spacing_mm: tuple[float, float] | None) -> None:
    """Write a ``(rows, cols)`` array as a one-slice NIfTI labelmap Slicer reads on the image grid.

    Shape ``(cols, rows, 1)`` (x fastest); the affine is LPS identity scaled by the spacing (1 mm
    when ``None``), which in NIfTI's RAS is ``diag(-col_mm, -row_mm, 1)``; origin 0; units mm.
    """
    import nibabel as nib

    row_mm, col_mm = spacing_mm if spacing_mm is not None else UNCALIBRATED_SPACING
    affine = np.diag([-float(col_mm), -float(row_mm), 1.0, 1.0])
    image = nib.Nifti1Image(np.ascontiguousarray(mask.T[:, :, None]), affine)
    image.header.set_xyzt_units("mm")
    image.header.set_data_dtype(mask.dtype)
    nib.save(image, os.fspath(path))
