"""Decoding and verifying DICOM pixel data (pydicom 2.4.5 with the pylibjpeg plugins).

Returns the pixels *as stored*: ``(frames, rows, cols[, samples])`` in the file's photometric
interpretation (YBR stays YBR, palette indices stay indices); :mod:`.dicom` converts colour once.

Why not just ``Dataset.pixel_array``:

* a truncated file parses silently in pydicom 2.4.5, and for encapsulated data the pylibjpeg
  handler leaves missing frames as uninitialised memory; every frame is counted here and
  uncompressed data is length-checked;
* pylibjpeg-libjpeg's pydicom 2 entry point applies a YCbCr->RGB transform whenever the
  photometric interpretation is RGB, which corrupts RGB JPEG-LS and lossless JPEG; the JPEG family
  is decoded here with no colour transform and the colour space is decided from the stream.
"""

from __future__ import annotations

import numpy as np
from pydicom.encaps import generate_pixel_data_frame
from pydicom.pixel_data_handlers.util import get_expected_length, pixel_dtype
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessP14,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from ..errors import SonoInputError

UNCOMPRESSED = frozenset(
    {ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian}
)
#: Lossy JPEG: the stream may hold YCbCr even where the dataset says RGB (see jpeg_stores_ycbcr).
LOSSY_JPEG = frozenset({JPEGBaseline8Bit, JPEGExtended12Bit})
#: Decoded by pylibjpeg-libjpeg.
LIBJPEG = LOSSY_JPEG | {JPEGLosslessP14, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless}
#: Decoded through pydicom's pylibjpeg handler (openjpeg, rle plugins).
PYLIBJPEG_HANDLER = frozenset({JPEG2000Lossless, JPEG2000, RLELossless})
SUPPORTED_TRANSFER_SYNTAXES = UNCOMPRESSED | LIBJPEG | PYLIBJPEG_HANDLER


def transfer_syntax_name(uid) -> str:
    name = getattr(uid, "name", "") or ""
    return f"{name} ({uid})" if name and name != str(uid) else str(uid)


def frame_count(dataset) -> int:
    value = dataset.get("NumberOfFrames")
    try:
        count = int(value) if value not in (None, "") else 1
    except (TypeError, ValueError):
        count = 1
    return max(count, 1)


def decode_pixels(dataset, source: str) -> np.ndarray:
    """The verified pixel data of ``dataset``: ``(frames, rows, cols[, samples])`` as stored.

    Raises :class:`SonoInputError` naming ``source`` for an unsupported transfer syntax,
    truncated data, missing frames or data the decoder rejects.
    """
    syntax = dataset.file_meta.TransferSyntaxUID
    if syntax not in SUPPORTED_TRANSFER_SYNTAXES:
        raise SonoInputError(
            source,
            f"unsupported transfer syntax {transfer_syntax_name(syntax)}; SonoVLM reads uncompressed, "
            "RLE, JPEG baseline/extended/lossless, JPEG-LS and JPEG 2000 DICOM",
        )
    if syntax in UNCOMPRESSED:
        return _uncompressed(dataset, source)
    return _compressed(dataset, syntax, source)


def _uncompressed(dataset, source: str) -> np.ndarray:
    expected = get_expected_length(dataset, "bytes")
    actual = len(dataset.PixelData)
    if actual < expected:
        raise SonoInputError(
            source, f"pixel data is truncated: {actual} of {expected} bytes present"
        )
    try:
        pixels = dataset.pixel_array
    except (ValueError, NotImplementedError, AttributeError, TypeError) as exc:
        raise SonoInputError(source, f"cannot read the pixel data: {exc}") from exc
    return _with_frame_axis(np.asarray(pixels), dataset)


def _compressed(dataset, syntax, source: str) -> np.ndarray:
    n_frames = frame_count(dataset)
    rows, cols, samples = int(dataset.Rows), int(dataset.Columns), int(dataset.SamplesPerPixel)
    shape = (rows, cols, samples) if samples > 1 else (rows, cols)
    dtype = pixel_dtype(dataset)
    frames: list[np.ndarray] = []
    try:
        if syntax in LIBJPEG:
            from libjpeg import decode as libjpeg_decode

            for encoded in generate_pixel_data_frame(dataset.PixelData, n_frames):
                _check_jpeg_end(encoded, len(frames), source)
                # colour_transform 0: the stored components, whatever the dataset says.
                flat = libjpeg_decode(encoded, 0, reshape=False)
                frames.append(_reshape_frame(flat, dtype, shape, len(frames), source))
                if len(frames) == n_frames:
                    break
        else:
            from pydicom.pixel_data_handlers.pylibjpeg_handler import generate_frames

            for frame in generate_frames(dataset, reshape=False):
                planar = syntax == RLELossless
                frames.append(_reshape_frame(frame, dtype, shape, len(frames), source, planar))
                if len(frames) == n_frames:
                    break
    except SonoInputError:
        raise
    except (ValueError, RuntimeError, IndexError, KeyError, EOFError, OSError, TypeError) as exc:
        # The decoders' exception types are not documented; these are what they raise.
        raise SonoInputError(
            source,
            f"cannot decode the {transfer_syntax_name(syntax)} pixel data "
            f"(frame {len(frames)} of {n_frames}): {exc}",
        ) from exc
    if len(frames) < n_frames:
        raise SonoInputError(
            source, f"pixel data is truncated: {len(frames)} of {n_frames} frames present"
        )
    pixels = np.stack(frames)
    if syntax in LOSSY_JPEG and dataset.PhotometricInterpretation == "RGB" and samples == 3:
        first = next(generate_pixel_data_frame(dataset.PixelData, n_frames))
        if jpeg_stores_ycbcr(first):
            from .colour import ybr_full_to_rgb

            pixels = ybr_full_to_rgb(pixels)
    return pixels


def _check_jpeg_end(encoded: bytes, index: int, source: str) -> None:
    """A JPEG / JPEG-LS frame ends with the EOI marker (plus at most a little padding).

    libjpeg decodes a truncated stream without complaint, filling the rest with grey; EOI cannot
    occur inside entropy-coded data (0xFF is byte-stuffed there), so its absence at the end means
    the frame was cut.
    """
    if b"\xff\xd9" not in encoded[-8:]:
        raise SonoInputError(source, f"compressed frame {index} is truncated: no JPEG end-of-image marker")


def _reshape_frame(
    flat: np.ndarray,
    dtype: np.dtype,
    shape: tuple[int, ...],
    index: int,
    source: str,
    planar: bool = False,
) -> np.ndarray:
    flat = np.asarray(flat)
    if flat.dtype != dtype:
        flat = flat.view(np.uint8).view(dtype) if flat.nbytes % dtype.itemsize == 0 else flat
    expected = int(np.prod(shape))
    if flat.size != expected:
        raise SonoInputError(
            source,
            f"frame {index} decodes to {flat.size} values, but Rows x Columns x Samples is {expected}",
        )
    if planar and len(shape) == 3:  # RLE stores colour planes one after the other
        return flat.reshape(shape[2], shape[0], shape[1]).transpose(1, 2, 0)
    return flat.reshape(shape)


def _with_frame_axis(pixels: np.ndarray, dataset) -> np.ndarray:
    samples = int(dataset.SamplesPerPixel)
    single_frame_ndim = 3 if samples > 1 else 2
    if pixels.ndim == single_frame_ndim:
        return pixels[None]
    return pixels


def jpeg_stores_ycbcr(encoded: bytes) -> bool:
    """Whether a 3-component JPEG stream holds YCbCr, by libjpeg's rules.

    A JFIF (APP0) marker means YCbCr; an Adobe (APP14) marker says it with its transform flag
    (0 = RGB); otherwise component ids ``R``, ``G``, ``B`` mean RGB and anything else YCbCr.
    """
    pos, end = 2, len(encoded)
    component_ids: list[int] = []
    jfif = False
    adobe_transform: int | None = None
    while pos + 4 <= end:
        if encoded[pos] != 0xFF:
            break
        marker = encoded[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = int.from_bytes(encoded[pos + 2 : pos + 4], "big")
        body = encoded[pos + 4 : pos + 2 + length]
        if marker == 0xE0 and body.startswith(b"JFIF\x00"):
            jfif = True
        elif marker == 0xEE and body.startswith(b"Adobe") and len(body) >= 12:
            adobe_transform = body[11]
        elif marker in (0xC0, 0xC1, 0xC2, 0xC3) and len(body) >= 6:
            n = body[5]
            component_ids = [body[6 + 3 * i] for i in range(n) if 6 + 3 * i < len(body)]
        elif marker == 0xDA:  # start of scan: the header is over
            break
        pos += 2 + length
    if adobe_transform is not None:
        return adobe_transform != 0
    if jfif:
        return True
    return component_ids != [ord("R"), ord("G"), ord("B")]
