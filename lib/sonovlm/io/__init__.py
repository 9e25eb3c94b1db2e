"""Ultrasound image I/O: one loader for every format a sonographer's data comes as.

Public API (a contract other modules rely on):

* :func:`load_image` -> :class:`UltrasoundImage` (frames plus metadata, pixel data verified).
* :func:`load_mask` -> ``(rows, cols)`` uint8 mask, non-zero = lesion, from PNG/JPEG/BMP/TIFF,
  NRRD (including Slicer's x-fastest one-slice labelmaps), NIfTI or ``.npy``.
* :func:`save_mask` writes a ``(rows, cols)`` mask as PNG, NRRD or NIfTI the way 3D Slicer reads
  it (x fastest, one slice, spacing in mm, identity direction, origin 0).
* :class:`UltrasoundRegion`: a region of SequenceOfUltrasoundRegions, clipped to the image.

All arrays follow the package conventions: ``(frames, rows, cols[, channels])``, 0-based,
boxes ``[x0, y0, x1, y1]`` with exclusive ends, ``spacing_mm = (row_mm, col_mm)``.

Modules: :mod:`.types` (data classes), :mod:`.reader` (entry points, dispatch by content),
:mod:`.formats` (sniffing), :mod:`.dicom` / :mod:`.dicom_header` / :mod:`.dicom_pixels` /
:mod:`.codestreams` (DICOM), :mod:`.raster` (Pillow), :mod:`.volume` (NRRD, NIfTI),
:mod:`.regions`, :mod:`.colour`, :mod:`.mask`, :mod:`.imaging_area` (imaging area without
region tags).
"""

from .mask import save_mask
from .reader import load_image, load_mask
from .types import UltrasoundImage, UltrasoundRegion

__all__ = ["UltrasoundImage", "UltrasoundRegion", "load_image", "load_mask", "save_mask"]
