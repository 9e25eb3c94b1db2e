"""Data classes of :mod:`sonovlm.io`: :class:`UltrasoundImage` and :class:`UltrasoundRegion`.

The readers (:mod:`.dicom`, :mod:`.raster`, :mod:`.volume`) build these; the entry points
``load_image`` / ``load_mask`` live in :mod:`.reader`. This module imports no reader, so the
readers can import it without a circle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import SonoInputError
from .colour import luma
from .imaging_area import estimate_imaging_bbox


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

    @property
    def area(self) -> int:
        """Pixels inside the box."""
        x0, y0, x1, y1 = self.bbox
        return max(0, x1 - x0) * max(0, y1 - y0)

    def contains(self, x: float, y: float) -> bool:
        """Whether pixel ``(x, y)`` (column, row) lies inside the box."""
        x0, y0, x1, y1 = self.bbox
        return x0 <= x < x1 and y0 <= y < y1


#: DICOM RegionDataType of a tissue (B-mode) region.
TISSUE_REGION = 1


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
        regions: ultrasound regions, clipped to the image (see :class:`UltrasoundRegion`). A
            NIfTI/NRRD file whose header gives a pixel spacing other than Slicer's default 1 x 1
            has one region over the whole image with that spacing (see :mod:`.volume`).
        luma: ``(frames, rows, cols)``, the Y plane as stored when the file held YBR data (so that
            :meth:`grey` returns the stored Y, not a round trip through RGB); ``None`` otherwise.

    The pixels are not changed in place after loading: :meth:`imaging_bbox` estimates the box of
    an image without regions once (about 100 ms for one 640 x 480 frame) and keeps it while
    ``frames`` and ``luma`` are the same arrays.
    """

    frames: np.ndarray
    source: str
    modality: str | None = None
    photometric: str | None = None
    channels: int = 1
    frame_time_ms: float | None = None
    regions: list[UltrasoundRegion] = field(default_factory=list)
    luma: np.ndarray | None = field(default=None, repr=False, compare=False)
    #: ``(frames, luma, bbox)`` of the last estimate (see :meth:`imaging_bbox`).
    _estimated_bbox: tuple | None = field(default=None, init=False, repr=False, compare=False)

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
        if not self.regions:
            return None
        tissue = [r for r in self.regions if r.data_type == TISSUE_REGION]
        # max() keeps the first of equal areas: the order of the file decides ties.
        return max(tissue or self.regions, key=lambda r: r.area)

    @property
    def spacing_mm(self) -> tuple[float, float] | None:
        """``(row_mm, col_mm)`` of the main region, or ``None`` when uncalibrated."""
        region = self.main_region
        return region.spacing_mm if region is not None else None

    def grey(self, frame: int | None = None) -> np.ndarray:
        """B-mode grey, float32 in the stored range: ``(rows, cols)`` for ``frame``, else all frames.

        Colour goes to luma (the Y channel for YBR data, ITU-R BT.601 weights for RGB).
        Raises :class:`~sonovlm.errors.SonoInputError` for a frame out of range.
        """
        if frame is not None:
            if not 0 <= frame < self.n_frames:
                raise SonoInputError(
                    self.source, f"frame {frame} is out of range: the image has {self.n_frames} frame(s)"
                )
            index: slice | int = frame
        else:
            index = slice(None)
        if self.luma is not None:
            return np.asarray(self.luma[index], dtype=np.float32)
        pixels = self.frames[index]
        if self.channels == 1:
            return np.asarray(pixels, dtype=np.float32)
        return luma(pixels)

    def imaging_bbox(self) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` of the imaging area: the main region, else one found from content.

        Everything outside it (burned-in text, rulers, patient details) is cut before a model or a
        training set sees the image. Without a region the box is estimated from the pixels by
        :func:`sonovlm.io.imaging_area.estimate_imaging_bbox` (the largest connected non-dark
        area over all frames), once per pixel arrays (see the class notes).
        """
        region = self.main_region
        if region is not None:
            return region.bbox
        memo = self._estimated_bbox
        if memo is not None and memo[0] is self.frames and memo[1] is self.luma:
            return memo[2]
        frames, luma_plane = self.frames, self.luma
        bbox = estimate_imaging_bbox(self.grey())
        self._estimated_bbox = (frames, luma_plane, bbox)
        return bbox

    def crop_to_imaging_area(self) -> np.ndarray:
        """The frames cut to :meth:`imaging_bbox`: ``(frames, y1 - y0, x1 - x0[, channels])``."""
        x0, y0, x1, y1 = self.imaging_bbox()
        return self.frames[:, y0:y1, x0:x1]

