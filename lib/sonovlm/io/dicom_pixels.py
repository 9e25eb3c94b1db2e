"""Decoding and verifying DICOM pixel data (pydicom 2.4.5 with the pylibjpeg plugins; 8-bit
JPEG 2000 with Pillow, whose libopenjp2 decodes on several threads: :func:`_pillow_decodes`).

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

import io
import os

import numpy as np
from PIL import Image
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
from .codestreams import j2k_components, j2k_size, jpeg_stores_ycbcr, read_jpeg_header
from .dicom_header import CORRUPT_DICOM_ERRORS, PixelFormat

UNCOMPRESSED = frozenset(
    {ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian}
)
#: Lossy JPEG: the stream may hold YCbCr even where the dataset says RGB (see
#: :func:`.codestreams.jpeg_stores_ycbcr`).
LOSSY_JPEG = frozenset({JPEGBaseline8Bit, JPEGExtended12Bit})
#: Decoded by pylibjpeg-libjpeg.
LIBJPEG = LOSSY_JPEG | {JPEGLosslessP14, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless}
#: Decoded through pydicom's pylibjpeg handler (openjpeg, rle plugins), except the 8-bit JPEG 2000
#: frames :func:`_pillow_j2k` decodes.
PYLIBJPEG_HANDLER = frozenset({JPEG2000Lossless, JPEG2000, RLELossless})
JPEG2000_SYNTAXES = frozenset({JPEG2000Lossless, JPEG2000})
SUPPORTED_TRANSFER_SYNTAXES = UNCOMPRESSED | LIBJPEG | PYLIBJPEG_HANDLER


#: What the decoders raise for data they cannot decode (their exception types are not documented;
#: these are the ones seen), plus pydicom's failures on values it converts while decoding.
DECODER_ERRORS: tuple[type[BaseException], ...] = (
    RuntimeError,
    IndexError,
    *CORRUPT_DICOM_ERRORS,
    OSError,  # Pillow: a stream it cannot identify or that breaks off
    Image.DecompressionBombError,
)


def transfer_syntax_name(uid) -> str:
    name = getattr(uid, "name", "") or ""
    return f"{name} ({uid})" if name and name != str(uid) else str(uid)


def decode_pixels(dataset, pixel_format: PixelFormat, source: str) -> np.ndarray:
    """The verified pixel data of ``dataset``: ``(frames, rows, cols[, samples])`` as stored.

    ``pixel_format`` is the dataset's validated Image Pixel module (:func:`.read_pixel_format`).
    Raises :class:`SonoInputError` naming ``source`` for an unsupported transfer syntax,
    truncated data, missing frames, data the decoder rejects, or pixel data too large for the
    memory there is.
    """
    syntax = pixel_format.transfer_syntax
    if syntax not in SUPPORTED_TRANSFER_SYNTAXES:
        raise SonoInputError(
            source,
            f"unsupported transfer syntax {transfer_syntax_name(syntax)}; SonoVLM reads uncompressed, "
            "RLE, JPEG baseline/extended/lossless, JPEG-LS and JPEG 2000 DICOM",
        )
    try:
        if syntax in UNCOMPRESSED:
            return _uncompressed(dataset, pixel_format, source)
        return _compressed(dataset, pixel_format, source)
    except MemoryError as exc:
        # Rows x Columns x frames come from the file; a corrupt header can ask for terabytes.
        raise SonoInputError(
            source,
            f"not enough memory to decode {pixel_format.frames} frame(s) of {pixel_format.rows} x "
            f"{pixel_format.cols} x {pixel_format.samples} samples at {pixel_format.bits_allocated} bits",
        ) from exc


def _uncompressed(dataset, pixel_format: PixelFormat, source: str) -> np.ndarray:
    expected = get_expected_length(dataset, "bytes")
    actual = len(dataset.PixelData)
    if actual < expected:
        raise SonoInputError(
            source, f"pixel data is truncated: {actual} of {expected} bytes present"
        )
    try:
        pixels = dataset.pixel_array
    except (AttributeError, *DECODER_ERRORS) as exc:
        # AttributeError: pydicom's numpy handler names a missing conditional element
        # (PlanarConfiguration of colour data).
        raise SonoInputError(source, f"cannot read the pixel data: {exc}") from exc
    pixels = np.asarray(pixels)
    return pixels[None] if pixels.ndim == len(pixel_format.frame_shape) else pixels


def _compressed(dataset, pixel_format: PixelFormat, source: str) -> np.ndarray:
    syntax, n_frames, shape = pixel_format.transfer_syntax, pixel_format.frames, pixel_format.frame_shape
    frames: list[np.ndarray] = []
    try:
        dtype = pixel_dtype(dataset)
        if syntax in LIBJPEG:
            from libjpeg import decode as libjpeg_decode

            for encoded in generate_pixel_data_frame(dataset.PixelData, n_frames):
                _check_frame(encoded, pixel_format, len(frames), source)
                # colour_transform 0: the stored components, whatever the dataset says.
                flat = libjpeg_decode(encoded, 0, reshape=False)
                frames.append(_reshape_frame(flat, dtype, shape, len(frames), source))
                if len(frames) == n_frames:
                    break
        elif syntax in JPEG2000_SYNTAXES and _pillow_decodes(dataset, pixel_format):
            for encoded in generate_pixel_data_frame(dataset.PixelData, n_frames):
                _check_frame(encoded, pixel_format, len(frames), source)
                frames.append(_reshape_frame(_pillow_j2k(encoded), dtype, shape, len(frames), source))
                if len(frames) == n_frames:
                    break
        else:
            from pydicom.pixel_data_handlers.pylibjpeg_handler import generate_frames

            if syntax != RLELossless:  # RLE output is sized from the dataset, not the stream
                for index, encoded in enumerate(generate_pixel_data_frame(dataset.PixelData, n_frames)):
                    _check_frame(encoded, pixel_format, index, source)
            for frame in generate_frames(dataset, reshape=False):
                planar = syntax == RLELossless
                frames.append(_reshape_frame(frame, dtype, shape, len(frames), source, planar))
                if len(frames) == n_frames:
                    break
    except SonoInputError:
        raise
    except DECODER_ERRORS as exc:
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
    if syntax in LOSSY_JPEG and pixel_format.photometric == "RGB":
        first = next(generate_pixel_data_frame(dataset.PixelData, n_frames))
        if jpeg_stores_ycbcr(first):
            from .colour import ybr_full_to_rgb

            pixels = ybr_full_to_rgb(pixels)
    return pixels


def _pillow_decodes(dataset, pixel_format: PixelFormat) -> bool:
    """Whether Pillow decodes this JPEG 2000 data: 8-bit unsigned grey or colour whose first
    frame's codestream says 8-bit unsigned components, none subsampled (an ultrasound frame).

    Pillow's libopenjp2 decodes on several threads (``OPJ_NUM_THREADS``); pylibjpeg-openjpeg's
    decodes on one. A 640 x 480 lossless frame: 21 ms with pylibjpeg-openjpeg, 14 ms with Pillow on
    2 threads; the pixels are equal (grey and RGB, lossless and lossy, with and without the
    colour transform: ``tests/sonovlm/io/test_dicom_pixels.py``). Other bit depths, signed data and
    subsampled components stay with pylibjpeg-openjpeg, whose handling pydicom adjusts for them.
    """
    if pixel_format.bits_allocated != 8 or pixel_format.signed or pixel_format.samples not in (1, 3):
        return False
    first = next(generate_pixel_data_frame(dataset.PixelData, pixel_format.frames), b"")
    components = j2k_components(first)
    return components is not None and all(c == (8, False, 1, 1) for c in components)


def decode_threads() -> int:
    """Threads for Pillow's JPEG 2000 decoder: ``OPJ_NUM_THREADS`` when set, else the server's
    ``OMP_NUM_THREADS`` (its torch thread budget), else the CPUs this process may use."""
    for name in ("OPJ_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return max(1, len(os.sched_getaffinity(0)))


def _pillow_j2k(encoded: bytes) -> np.ndarray:
    """One 8-bit JPEG 2000 frame decoded by Pillow: ``(rows, cols)`` or ``(rows, cols, 3)`` uint8,
    the components as stored (libopenjp2 undoes the codestream's own colour transform)."""
    # libopenjp2 reads the variable each time it creates a decoder; one the user set is kept.
    if "OPJ_NUM_THREADS" not in os.environ:
        os.environ["OPJ_NUM_THREADS"] = str(decode_threads())
    with Image.open(io.BytesIO(encoded), formats=["JPEG2000"]) as image:
        image.load()
        if image.mode not in ("L", "RGB"):
            raise RuntimeError(f"JPEG 2000 frame decodes as {image.mode}, not 8-bit grey or RGB")
        return np.asarray(image)


def _check_frame(encoded: bytes, pixel_format: PixelFormat, index: int, source: str) -> None:
    """Check a compressed frame's own header before a decoder sizes its buffers from it.

    A JPEG / JPEG-LS frame must end with the EOI marker (plus at most a little padding): libjpeg
    decodes a truncated stream without complaint, filling the rest with grey; EOI cannot occur
    inside entropy-coded data (0xFF is byte-stuffed there), so its absence at the end means the
    frame was cut. Its start-of-frame marker, and a JPEG 2000 frame's SIZ marker, must give the
    dataset's Rows, Columns and SamplesPerPixel (see :mod:`.codestreams`).
    """
    expected = (pixel_format.rows, pixel_format.cols, pixel_format.samples)
    if pixel_format.transfer_syntax in LIBJPEG:
        if b"\xff\xd9" not in encoded[-8:]:
            raise SonoInputError(
                source, f"compressed frame {index} is truncated: no JPEG end-of-image marker"
            )
        size = read_jpeg_header(encoded).size
    else:
        size = j2k_size(encoded)
    if size is not None and size != expected:
        raise SonoInputError(
            source,
            f"compressed frame {index} is {size[0]} x {size[1]} x {size[2]} (rows x columns x samples), "
            f"but the dataset says {expected[0]} x {expected[1]} x {expected[2]}",
        )


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
