"""PNG, JPEG, BMP and TIFF through Pillow.

Every page of a multi-page TIFF is a frame (pages must share one size). Modes map as:
``1``/``L``/``I;16``/``I``/``F`` -> grey (stored values), ``LA`` -> its grey channel,
``RGB`` -> RGB, ``RGBA`` -> RGB (alpha dropped), ``P``/``PA``/``CMYK``/``YCbCr`` -> RGB.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import SonoInputError
from .formats import RASTER_FORMATS

GREY_MODES = ("1", "L", "I;16", "I;16L", "I;16B", "I", "F")


def open_raster(path: str | os.PathLike):
    """Open with Pillow and check the format is one SonoVLM accepts; returns the Image."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
    except UnidentifiedImageError as exc:
        raise SonoInputError(path, "not an image: Pillow cannot identify the file") from exc
    except OSError as exc:
        raise SonoInputError(path, f"cannot read the image: {exc}") from exc
    if image.format not in RASTER_FORMATS:
        image.close()
        raise SonoInputError(
            path, f"unsupported image format {image.format} (expected PNG, JPEG, BMP or TIFF)"
        )
    return image


def frame_arrays(path: str | os.PathLike, convert) -> list[np.ndarray]:
    """``convert(page) -> ndarray`` for every page of the image, with decoding errors reported."""
    from PIL import ImageSequence

    image = open_raster(path)
    try:
        arrays = []
        for page in ImageSequence.Iterator(image):
            arrays.append(convert(page))
        return arrays
    except (OSError, ValueError, SyntaxError) as exc:
        # Pillow raises OSError ("image file is truncated") or SyntaxError for broken files.
        raise SonoInputError(path, f"image data is truncated or corrupt: {exc}") from exc
    finally:
        image.close()


def display_array(page) -> np.ndarray:
    """One Pillow page as ``(rows, cols)`` grey or ``(rows, cols, 3)`` RGB."""
    mode = page.mode
    if mode in GREY_MODES:
        array = np.asarray(page)
        return array.astype(np.uint8) if array.dtype == bool else array
    if mode == "LA":
        return np.asarray(page.getchannel("L"))
    if mode == "RGB":
        return np.asarray(page)
    return np.asarray(page.convert("RGB"))


def raster_format(path: str | os.PathLike) -> str:
    """``PNG``, ``JPEG``, ``BMP`` or ``TIFF``."""
    image = open_raster(path)
    try:
        return RASTER_FORMATS[image.format]
    finally:
        image.close()


def read_raster(path: str | os.PathLike) -> np.ndarray:
    """``(frames, rows, cols[, 3])`` of a PNG/JPEG/BMP/TIFF file, in the stored dtype."""
    pages = frame_arrays(path, display_array)
    first = pages[0]
    for index, page in enumerate(pages[1:], start=1):
        if page.shape != first.shape:
            raise SonoInputError(
                path, f"page {index} is {page.shape[:2]} but page 0 is {first.shape[:2]}; pages must match"
            )
    return np.stack(pages)
