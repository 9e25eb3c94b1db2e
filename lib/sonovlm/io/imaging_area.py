"""Finding the imaging area of an ultrasound image that has no region tags.

The rule (used only when the file has no SequenceOfUltrasoundRegions):

1. take each pixel's brightest value over all frames (keeps a cine's sector whole);
2. foreground = pixels above 4 % of the range between the darkest and brightest value
   (scanner backgrounds are black or near it; speckle is well above that);
3. dense foreground = where at least half of a ``w`` x ``w`` window is foreground,
   ``w = max(5, min(rows, cols) // 30)``: speckle is dense, text strokes, ruler ticks and frame
   lines are not; holes are filled (anechoic cysts, dark lesions);
4. an opening with a square of side ``2 * s + 1``, ``s = max(3, min(rows, cols) // 60)``, cuts the
   thin bridges by which marks touch the sector; the largest 8-connected component remains;
5. that component, grown back by ``s + 1`` pixels within the foreground (to restore the corners
   the opening rounded), gives the box.

Text, rulers and logos standing apart from the sector (by more than about ``w``) fall outside
the box. Limits: text blocks that touch the imaging area can join it, and a filled banner larger
than the visible tissue wins; files with region tags never use this rule. An image with no
foreground gives the whole image.
"""

from __future__ import annotations

import numpy as np

#: Foreground threshold as a fraction of the image's value range.
FOREGROUND_FRACTION = 0.04
#: Fraction of a window that must be foreground for the window's centre to count as tissue.
DENSE_FRACTION = 0.5


def estimate_imaging_bbox(grey: np.ndarray) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` (exclusive ends) of the imaging area of ``(frames, rows, cols)`` grey.

    A single ``(rows, cols)`` frame is accepted too.
    """
    from scipy import ndimage

    grey = np.asarray(grey, dtype=np.float32)
    brightest = grey if grey.ndim == 2 else grey.max(axis=0)
    rows, cols = brightest.shape
    whole = (0, 0, cols, rows)
    low, high = float(brightest.min()), float(brightest.max())
    if high <= low:
        return whole
    foreground = brightest > low + FOREGROUND_FRACTION * (high - low)
    window = max(5, min(rows, cols) // 30)
    density = ndimage.uniform_filter(foreground.astype(np.float32), size=window, mode="constant")
    dense = ndimage.binary_fill_holes(density > DENSE_FRACTION)
    side = max(3, min(rows, cols) // 60)
    opened = ndimage.binary_opening(dense, structure=np.ones((2 * side + 1,) * 2, bool))
    if opened.any():
        dense = opened
    labels, count = ndimage.label(dense, structure=np.ones((3, 3), bool))
    if count == 0:
        return whole
    largest = labels == int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    grown = ndimage.binary_dilation(largest, structure=np.ones((2 * side + 3,) * 2, bool))
    area = (grown & foreground) | largest
    ys, xs = np.nonzero(area)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
