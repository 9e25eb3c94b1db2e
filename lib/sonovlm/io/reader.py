"""Entry points of :mod:`sonovlm.io`: :func:`load_image` (sniff the file, call the reader for its
kind) and :func:`load_mask`."""

from __future__ import annotations

import os

import numpy as np

from ..errors import SonoInputError
from .dicom import read_dicom
from .formats import DICOM, DICOM_RAW, NIFTI, NRRD, NUMPY, RASTER, sniff
from .mask import read_mask
from .raster import read_raster
from .types import UltrasoundImage, UltrasoundRegion
from .volume import Volume, read_nifti, read_nrrd


def load_image(path: str | os.PathLike) -> UltrasoundImage:
    """Read PNG/JPEG/BMP/TIFF, DICOM (single or multi-frame) or NIfTI/NRRD into an UltrasoundImage.

    Raises :class:`~sonovlm.errors.SonoInputError` naming the file for a missing file, a
    non-image, truncated or corrupt pixel data, or an unsupported transfer syntax.
    """
    kind = sniff(path)
    source = os.fspath(path)
    if kind in (DICOM, DICOM_RAW):
        return read_dicom(path, force=kind == DICOM_RAW)
    if kind == RASTER:
        frames = read_raster(path)
        return UltrasoundImage(frames=frames, source=source, channels=_channels(frames))
    if kind in (NRRD, NIFTI):
        volume = read_nrrd(path) if kind == NRRD else read_nifti(path)
        return _from_volume(volume, source)
    if kind == NUMPY:
        raise SonoInputError(path, "a .npy file is read as a mask, not an image")
    raise SonoInputError(path, f"cannot read an image from a {kind} file")  # pragma: no cover


def load_mask(path: str | os.PathLike, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a lesion mask as ``(rows, cols)`` uint8 (values as stored; non-zero = lesion).

    ``shape`` is the ``(rows, cols)`` of the image it belongs to; a mismatch raises
    :class:`~sonovlm.errors.SonoInputError`. See :func:`sonovlm.io.mask.read_mask` for the
    rules per format.
    """
    return read_mask(path, shape)


def _channels(frames) -> int:
    return 3 if frames.ndim == 4 else 1


def _from_volume(volume: Volume, source: str) -> UltrasoundImage:
    """A calibrated NRRD/NIfTI header becomes one region over the whole image with its spacing."""
    frames = volume.array
    regions = []
    if volume.spacing_mm is not None:
        rows, cols = frames.shape[1:3]
        regions.append(UltrasoundRegion(bbox=(0, 0, cols, rows), spacing_mm=volume.spacing_mm))
    return UltrasoundImage(frames=frames, source=source, channels=_channels(frames), regions=regions)
