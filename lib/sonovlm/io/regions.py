"""Ultrasound regions (DICOM SequenceOfUltrasoundRegions) in pixel coordinates.

DICOM stores each region's corners as RegionLocationMinX0/MinY0 and MaxX1/MaxY1, the max corner
inclusive; here boxes are ``(x0, y0, x1, y1)`` with exclusive ends. Region tags often do not
match the pixel data (the image was cropped or rescaled after acquisition), so each box is
clipped to the image:

* a region wholly outside the image is dropped;
* a region reaching outside it keeps the clipped box and ``clipped=True``;
* ``spacing_mm`` is kept only for a region that fits the image, since a region that does not
  fit says the pixels are no longer those the calibration was written for.
"""

from __future__ import annotations

import math

from .types import UltrasoundRegion

#: DICOM PhysicalUnits{X,Y}Direction code for centimetres.
CENTIMETRES = 3


def clip_box(
    bbox: tuple[int, int, int, int], rows: int, cols: int
) -> tuple[tuple[int, int, int, int] | None, bool]:
    """Clip ``(x0, y0, x1, y1)`` (exclusive ends) to a ``rows`` x ``cols`` image.

    Returns the clipped box (``None`` when nothing of it is inside) and whether it changed.
    """
    x0, y0, x1, y1 = bbox
    cx0, cy0 = max(0, x0), max(0, y0)
    cx1, cy1 = min(cols, x1), min(rows, y1)
    if cx1 <= cx0 or cy1 <= cy0:
        return None, True
    clipped = (cx0, cy0, cx1, cy1)
    return clipped, clipped != (x0, y0, x1, y1)


def region_spacing_mm(item) -> tuple[float, float] | None:
    """``(row_mm, col_mm)`` of one region item when both directions are in centimetres, else None."""
    units_x = item.get("PhysicalUnitsXDirection")
    units_y = item.get("PhysicalUnitsYDirection")
    if units_x != CENTIMETRES or units_y != CENTIMETRES:
        return None
    delta_x = item.get("PhysicalDeltaX")
    delta_y = item.get("PhysicalDeltaY")
    if delta_x is None or delta_y is None:
        return None
    row_mm, col_mm = abs(float(delta_y)) * 10.0, abs(float(delta_x)) * 10.0
    if not (math.isfinite(row_mm) and math.isfinite(col_mm)) or row_mm <= 0 or col_mm <= 0:
        return None
    return row_mm, col_mm


def regions_from_dataset(dataset, rows: int, cols: int) -> list[UltrasoundRegion]:
    """The ultrasound regions of a pydicom dataset, clipped to a ``rows`` x ``cols`` image.

    Items without all four RegionLocation corners are skipped (they locate nothing). A value
    that is not a sequence (a corrupt VR) raises ValueError; pydicom's own failures on corrupt
    items propagate (the caller names the file).
    """
    from pydicom.sequence import Sequence

    sequence = dataset.get("SequenceOfUltrasoundRegions")
    if sequence is None:
        return []
    if not isinstance(sequence, Sequence):
        raise ValueError(f"SequenceOfUltrasoundRegions holds {type(sequence).__name__}, not a sequence")
    regions: list[UltrasoundRegion] = []
    for item in sequence:
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
        box, clipped = clip_box((x0, y0, max_x1 + 1, max_y1 + 1), rows, cols)
        if box is None:
            continue
        data_type = item.get("RegionDataType")
        regions.append(
            UltrasoundRegion(
                bbox=box,
                spacing_mm=None if clipped else region_spacing_mm(item),
                clipped=clipped,
                data_type=int(data_type) if data_type is not None else None,
            )
        )
    return regions
