"""What the extension needs from an ultrasound DICOM header: size, colour, frames, spacing.

Slicer (ITK/GDCM) decodes the pixels but reports a spacing of 1 mm for ultrasound, whose
calibration lives in SequenceOfUltrasoundRegions. The spacing is read here with pydicom (which
Slicer ships) from the header alone, by the same rule as ``sonovlm.io``:

* region boxes (``RegionLocationMin*``/``Max*``, max corners inclusive) are clipped to the image;
  a region wholly outside it is dropped;
* a region has a spacing only when both physical units are centimetres (code 3) and it fits the
  image (a clipped region says the pixels are no longer those it was calibrated for);
* the main region is the largest tissue (RegionDataType 1) region, else the largest; its spacing
  is the image's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: DICOM PhysicalUnits{X,Y}Direction code for centimetres.
CENTIMETRES = 3
#: DICOM RegionDataType of a tissue (B-mode) region.
TISSUE = 1


@dataclass(frozen=True)
class DicomImageHeader:
    """Header facts of one DICOM image.

    Attributes:
        rows, cols: pixel size of a frame.
        frames: NumberOfFrames (1 for a single image).
        samples_per_pixel: 1 for grey, 3 for colour.
        photometric: PhotometricInterpretation as stored.
        spacing_mm: ``(row_mm, col_mm)`` of the main ultrasound region, ``None`` when uncalibrated.
    """

    rows: int
    cols: int
    frames: int
    samples_per_pixel: int
    photometric: str
    spacing_mm: tuple[float, float] | None


def is_dicom(path: str) -> bool:
    """Whether ``path`` is a DICOM Part 10 file (``DICM`` after the 128-byte preamble)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def read_dicom_header(path: str) -> DicomImageHeader:
    """Read the header of the DICOM image at ``path`` (pixel data is not read).

    Raises:
        ValueError: the file is not a DICOM image (no Rows/Columns).
    """
    import pydicom  # Slicer ships pydicom; imported here so that the module loads without it

    dataset = pydicom.dcmread(path, stop_before_pixels=True)
    if "Rows" not in dataset or "Columns" not in dataset:
        raise ValueError(f"{path}: not a DICOM image (no Rows/Columns)")
    rows, cols = int(dataset.Rows), int(dataset.Columns)
    return DicomImageHeader(
        rows=rows,
        cols=cols,
        frames=int(dataset.get("NumberOfFrames", 1) or 1),
        samples_per_pixel=int(dataset.get("SamplesPerPixel", 1) or 1),
        photometric=str(dataset.get("PhotometricInterpretation", "")),
        spacing_mm=ultrasound_spacing_mm(dataset, rows, cols),
    )


def ultrasound_spacing_mm(dataset, rows: int, cols: int) -> tuple[float, float] | None:
    """``(row_mm, col_mm)`` of the main ultrasound region of a pydicom dataset, or ``None``."""
    regions = []  # (clipped area, is tissue, spacing or None), in file order
    for item in dataset.get("SequenceOfUltrasoundRegions", None) or []:
        corners = [
            item.get(k)
            for k in (
                "RegionLocationMinX0",
                "RegionLocationMinY0",
                "RegionLocationMaxX1",
                "RegionLocationMaxY1",
            )
        ]
        if any(c is None for c in corners):
            continue
        x0, y0, max_x1, max_y1 = (int(c) for c in corners)
        x1, y1 = max_x1 + 1, max_y1 + 1
        cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(cols, x1), min(rows, y1)
        if cx1 <= cx0 or cy1 <= cy0:
            continue
        clipped = (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1)
        spacing = None if clipped else _region_spacing_mm(item)
        regions.append(((cx1 - cx0) * (cy1 - cy0), item.get("RegionDataType") == TISSUE, spacing))
    if not regions:
        return None
    tissue = [r for r in regions if r[1]]
    # max() keeps the first of equal areas: the file's order decides ties, as in sonovlm.io.
    return max(tissue or regions, key=lambda r: r[0])[2]


def _region_spacing_mm(item) -> tuple[float, float] | None:
    if (
        item.get("PhysicalUnitsXDirection") != CENTIMETRES
        or item.get("PhysicalUnitsYDirection") != CENTIMETRES
    ):
        return None
    delta_x, delta_y = item.get("PhysicalDeltaX"), item.get("PhysicalDeltaY")
    if delta_x is None or delta_y is None:
        return None
    row_mm, col_mm = abs(float(delta_y)) * 10.0, abs(float(delta_x)) * 10.0
    if not (math.isfinite(row_mm) and math.isfinite(col_mm)) or row_mm <= 0 or col_mm <= 0:
        return None
    return row_mm, col_mm
