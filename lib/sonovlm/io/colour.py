"""Colour handling: DICOM photometric interpretations to grey or RGB, and colour to B-mode grey.

Arrays are ``(..., rows, cols[, 3])``; the functions never change the frame or pixel layout.
"""

from __future__ import annotations

import numpy as np

#: ITU-R BT.601 luma weights (R, G, B). For YBR_FULL data, luma of the RGB equals the stored Y.
BT601_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of ``(..., 3)`` RGB as float32 ``(...)``, in the stored range."""
    return np.asarray(rgb, dtype=np.float32) @ BT601_LUMA


def invert_monochrome1(pixels: np.ndarray, bits_stored: int, signed: bool) -> np.ndarray:
    """MONOCHROME1 (low values bright) to MONOCHROME2, within the stored bit depth.

    Unsigned data maps ``v -> 2**bits_stored - 1 - v``; signed data ``v -> -1 - v``, which maps
    the two's complement range onto itself.
    """
    if signed:
        return np.invert(pixels)
    top = (1 << bits_stored) - 1
    return (top - pixels.astype(np.int64)).astype(pixels.dtype)


def ybr_full_to_rgb(ybr: np.ndarray) -> np.ndarray:
    """YBR_FULL (also decoded YBR_FULL_422) 8-bit ``(..., 3)`` to RGB uint8 (ITU-T T.871)."""
    from pydicom.pixel_data_handlers.util import convert_color_space

    return convert_color_space(np.ascontiguousarray(ybr), "YBR_FULL", "RGB")


def palette_to_rgb(indices: np.ndarray, dataset) -> np.ndarray:
    """PALETTE COLOR indices ``(...)`` to RGB uint8 ``(..., 3)`` with the dataset's lookup tables.

    Uses pydicom's ``apply_color_lut``. Tables with 16-bit entries (the common case) are scaled to
    8 bits (``round(v / 257)``) so that every colour image SonoVLM hands on is 8-bit RGB.
    """
    from pydicom.pixel_data_handlers.util import apply_color_lut

    rgb = apply_color_lut(indices, dataset)
    if rgb.dtype.itemsize > 1:
        bits = int(dataset.RedPaletteColorLookupTableDescriptor[2])
        if bits > 8:
            rgb = np.rint(rgb.astype(np.float32) * (255.0 / ((1 << bits) - 1)))
        rgb = np.clip(rgb, 0, 255)
    return rgb.astype(np.uint8)
