"""Lesion masks: reading any format a sonographer's tools write, and writing what Slicer reads.

Reading gives ``(rows, cols)`` uint8 with the values as stored (a mask's value is the organ's
label; an incoming mask is "non-zero = lesion"):

* PNG, BMP, TIFF: grey as stored; RGB(A) -> the largest of R, G, B (non-zero where any channel
  is; grey-valued RGB keeps its value); palette (``P``) -> the palette index.
* JPEG is lossy: values below 128 are compression noise around black and read as 0; the rest are
  kept.
* NRRD (including Slicer's x-fastest one-slice labelmaps and ``.seg.nrrd`` with one layer or a
  ``list`` of layers, merged by maximum; a segmentation cropped to its extent is placed back on
  the image grid when ``shape`` is given), NIfTI (one slice) and ``.npy`` (2D, or one frame).
* Values that do not fit uint8 are cast safely: whole numbers 0..255 are kept, any other non-zero
  value (negative, fractional, above 255) becomes 255, NaN becomes 0.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import SonoInputError
from .formats import DICOM, DICOM_RAW, NIFTI, NRRD, NUMPY, RASTER, is_nifti_name, sniff
from .raster import frame_arrays, raster_format
from .volume import MASK_GZIP_LEVEL, read_nifti, read_nrrd, write_nifti, write_nrrd

#: JPEG values below this are read as background (compression noise).
JPEG_NOISE_FLOOR = 128


def read_mask(path: str | os.PathLike, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a lesion mask as ``(rows, cols)`` uint8; see the module notes for the rules.

    ``shape`` is the ``(rows, cols)`` of the image; a mismatch raises :class:`SonoInputError`
    naming the file and both sizes.
    """
    kind = sniff(path)
    offset: tuple[int, int] | None = None
    if kind == RASTER:
        values = _raster_mask(path)
    elif kind in (NRRD, NIFTI):
        volume = read_nrrd(path) if kind == NRRD else read_nifti(path)
        values = _one_frame(volume.array, path)
        offset = volume.extent_offset
    elif kind == NUMPY:
        values = _numpy_mask(path)
    elif kind in (DICOM, DICOM_RAW):
        raise SonoInputError(
            path, "a DICOM file is not read as a mask; save the mask as PNG, NRRD, NIfTI or .npy"
        )
    else:  # pragma: no cover - sniff returns only the kinds above
        raise SonoInputError(path, f"cannot read a mask from a {kind} file")
    mask = to_uint8_labels(values, path)
    if shape is not None:
        mask = _fit_shape(mask, tuple(int(s) for s in shape), offset, path)
    return mask


def _raster_mask(path) -> np.ndarray:
    def convert(page) -> np.ndarray:
        if page.mode in ("RGB", "RGBA", "RGBX"):
            return np.asarray(page)[..., :3].max(axis=-1)
        if page.mode in ("LA", "PA"):
            return np.asarray(page)[..., 0]
        if page.mode in ("P", "1", "L", "I;16", "I;16L", "I;16B", "I", "F"):
            return np.asarray(page)
        return np.asarray(page.convert("RGB")).max(axis=-1)

    pages = frame_arrays(path, convert)
    if len(pages) != 1:
        raise SonoInputError(path, f"mask has {len(pages)} pages; expected one")
    values = pages[0]
    if raster_format(path) == "JPEG":
        values = np.where(values >= JPEG_NOISE_FLOOR, values, 0)
    return values


def _numpy_mask(path) -> np.ndarray:
    try:
        values = np.load(os.fspath(path), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise SonoInputError(path, f"cannot read the NumPy file: {exc}") from exc
    if values.ndim == 3 and values.shape[0] == 1:
        values = values[0]
    if values.ndim != 2:
        raise SonoInputError(path, f"mask array has shape {values.shape}; expected (rows, cols)")
    if not (np.issubdtype(values.dtype, np.number) or values.dtype == bool):
        raise SonoInputError(path, f"mask array has dtype {values.dtype}; expected numbers")
    return values


def _one_frame(array: np.ndarray, path) -> np.ndarray:
    """``(frames, rows, cols[, c])`` -> ``(rows, cols)``; several frames or colour is an error."""
    if array.ndim == 4:  # colour components: non-zero where any is
        array = array.max(axis=-1)
    if array.shape[0] != 1:
        raise SonoInputError(path, f"mask has {array.shape[0]} slices; expected one (a 2D mask)")
    return array[0]


def to_uint8_labels(values: np.ndarray, source: str | os.PathLike = "mask") -> np.ndarray:
    """Any numeric ``(rows, cols)`` array to uint8 labels (see the module notes)."""
    values = np.asarray(values)
    if values.dtype == bool or values.dtype == np.uint8:
        return values.astype(np.uint8)
    if np.issubdtype(values.dtype, np.complexfloating):
        raise SonoInputError(source, "complex values are not a mask")
    as_float = values.astype(np.float64)
    finite = np.nan_to_num(as_float, nan=0.0, posinf=255.0, neginf=255.0)
    fits = (finite >= 0) & (finite <= 255) & (finite == np.floor(finite))
    return np.where(fits, finite, np.where(finite != 0, 255, 0)).astype(np.uint8)


def _fit_shape(
    mask: np.ndarray, shape: tuple[int, int], offset: tuple[int, int] | None, path
) -> np.ndarray:
    if mask.shape == shape:
        return mask
    if offset is not None:
        row, col = offset
        if row >= 0 and col >= 0 and row + mask.shape[0] <= shape[0] and col + mask.shape[1] <= shape[1]:
            full = np.zeros(shape, dtype=mask.dtype)
            full[row : row + mask.shape[0], col : col + mask.shape[1]] = mask
            return full
    raise SonoInputError(
        path,
        f"mask size {mask.shape[0]}x{mask.shape[1]} (rows x cols) does not match "
        f"the image size {shape[0]}x{shape[1]}",
    )


# -- writing --------------------------------------------------------------------------------------


def save_mask(
    path: str | os.PathLike, mask: np.ndarray, spacing_mm: tuple[float, float] | None = None
) -> None:
    """Write a ``(rows, cols)`` mask (values as given, cast to uint8 labels) for 3D Slicer.

    The format follows the name: ``.png`` (8-bit grey, exactly rows x cols), ``.nrrd`` or
    ``.nii``/``.nii.gz`` (a labelmap volume: x fastest, one slice, spacing in mm when given else
    1, identity direction, origin 0; see :func:`.volume.write_nrrd` and
    :func:`.volume.write_nifti`). Other names raise :class:`SonoInputError`.

    ``spacing_mm`` is ``(row_mm, col_mm)``; PNG has no place for it and ignores it.
    """
    values = np.asarray(mask)
    if values.ndim == 3 and values.shape[0] == 1:
        values = values[0]
    if values.ndim != 2:
        raise SonoInputError(path, f"mask must be (rows, cols); got shape {values.shape}")
    labels = to_uint8_labels(values, path)
    if spacing_mm is not None:
        row_mm, col_mm = (float(v) for v in spacing_mm)
        if not (np.isfinite(row_mm) and np.isfinite(col_mm)) or row_mm <= 0 or col_mm <= 0:
            raise SonoInputError(path, f"spacing_mm must be two positive numbers; got {spacing_mm}")
        spacing_mm = (row_mm, col_mm)
    name = os.fspath(path).lower()
    parent = os.path.dirname(os.fspath(path)) or "."
    if not os.path.isdir(parent):
        raise SonoInputError(path, "the folder to write into does not exist")
    if name.endswith(".png"):
        from PIL import Image

        Image.fromarray(labels).save(os.fspath(path), format="PNG", compress_level=MASK_GZIP_LEVEL)
    elif name.endswith(".nrrd"):
        write_nrrd(path, labels, spacing_mm)
    elif is_nifti_name(name):
        write_nifti(path, labels, spacing_mm)
    else:
        raise SonoInputError(path, "unsupported mask format; use .png, .nrrd, .nii or .nii.gz")

