"""Data classes and entry points of :mod:`sonovlm.io` (implementation in progress)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class UltrasoundRegion:
    """One ultrasound region (DICOM SequenceOfUltrasoundRegions item) in pixel coordinates.

    Attributes:
        bbox: ``(x0, y0, x1, y1)``, ends exclusive, clipped to the image.
        spacing_mm: ``(row_mm, col_mm)`` when the region's physical units are centimetres and it
            fits the image; ``None`` otherwise.
        clipped: the region's tags reached outside the pixel data and the box was clipped.
        data_type: DICOM RegionDataType (1 = tissue, B-mode), or ``None``.
    """

    bbox: tuple[int, int, int, int]
    spacing_mm: tuple[float, float] | None
    clipped: bool = False
    data_type: int | None = None


@dataclass
class UltrasoundImage:
    """Frames of one ultrasound image or cine loop, with the metadata SonoVLM uses.

    Attributes:
        frames: ``(frames, rows, cols[, channels])``; colour images are RGB (palette expanded,
            YBR converted), ``channels`` is 1 for grey (the last axis is then absent).
        source: the path it was read from.
        modality: DICOM Modality (``"US"``) or ``None`` for non-DICOM files.
        photometric: DICOM PhotometricInterpretation as stored, or ``None``.
        channels: channel count after colour conversion (1 or 3).
        frame_time_ms: DICOM FrameTime, when present.
        regions: ultrasound regions, clipped to the image (see :class:`UltrasoundRegion`).
    """

    frames: np.ndarray
    source: str
    modality: str | None = None
    photometric: str | None = None
    channels: int = 1
    frame_time_ms: float | None = None
    regions: list[UltrasoundRegion] = field(default_factory=list)

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    @property
    def main_region(self) -> UltrasoundRegion | None:
        """The region imaging tissue: the largest B-mode (data type 1) region, else the largest."""
        raise NotImplementedError

    @property
    def spacing_mm(self) -> tuple[float, float] | None:
        """``(row_mm, col_mm)`` of the main region, or ``None`` when uncalibrated."""
        raise NotImplementedError

    def grey(self, frame: int | None = None) -> np.ndarray:
        """B-mode grey, float32 in the stored range: ``(rows, cols)`` for ``frame``, else all frames.

        Colour goes to luma (the Y channel for YBR data, ITU-R BT.601 weights for RGB).
        Raises :class:`~sonovlm.errors.SonoInputError` for a frame out of range.
        """
        raise NotImplementedError

    def imaging_bbox(self) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` of the imaging area: the main region, else one found from content.

        Everything outside it (burned-in text, rulers, patient details) is cut before a model or a
        training set sees the image.
        """
        raise NotImplementedError


def load_image(path: str | os.PathLike) -> UltrasoundImage:
    """Read PNG/JPEG/BMP/TIFF, DICOM (single or multi-frame) or NIfTI/NRRD into an UltrasoundImage.

    Raises :class:`~sonovlm.errors.SonoInputError` naming the file for a missing file, a
    non-image, truncated or corrupt pixel data, or an unsupported transfer syntax.
    """
    raise NotImplementedError


def load_mask(path: str | os.PathLike, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a lesion mask as ``(rows, cols)`` uint8 (values as stored; non-zero = lesion).

    ``shape`` is the ``(rows, cols)`` of the image it belongs to; a mismatch raises
    :class:`~sonovlm.errors.SonoInputError`.
    """
    raise NotImplementedError
