"""SonoVLM: CLIP-style vision-language models adapted to ultrasound lesion annotation.

Conventions used everywhere in this package (see README, "Conventions"):

* Images are NumPy arrays ``(frames, rows, cols[, channels])``; masks ``(rows, cols)`` per frame.
  Indices are 0-based, ``x`` is the column, ``y`` the row. Readers that return x-first arrays
  (MONAI ``LoadImage``, ITK, pynrrd's default) are converted at the boundary.
* Boxes are ``[x0, y0, x1, y1]`` with ``x1``/``y1`` exclusive.
* ``spacing_mm = [row_mm, col_mm]`` (ΔY then ΔX). Frames are 0-based.
* A mask's pixel value is the organ's label value (see :data:`sonovlm.organs.ORGAN_LABELS`);
  a mask coming in is read as "non-zero = lesion".
"""

__version__ = "0.1.0"
