"""DICOM ultrasound images (single frame or cine) to :class:`UltrasoundImage`.

Colour is converted exactly once, here, after :func:`.dicom_pixels.decode_pixels` returned the
pixels as stored:

* MONOCHROME1 is inverted to MONOCHROME2 within BitsStored; MONOCHROME2 is kept;
* RGB is kept; YBR_FULL / YBR_FULL_422 (pydicom 2.4.5 and its decoders return these as YBR,
  422 already upsampled) go to RGB, and the stored Y plane is kept as ``luma``;
* YBR_ICT / YBR_RCT (JPEG 2000 only) come out of the decoder as RGB already (it inverts the
  component transform);
* PALETTE COLOR is expanded with the file's lookup tables to 8-bit RGB.
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib

import numpy as np

from ..errors import SonoInputError
from .colour import invert_monochrome1, palette_to_rgb, ybr_full_to_rgb
from .dicom_pixels import decode_pixels
from .image import UltrasoundImage
from .regions import regions_from_dataset

GREY = ("MONOCHROME1", "MONOCHROME2")
#: Photometric interpretations whose decoded data is already RGB.
DECODED_AS_RGB = ("RGB", "YBR_ICT", "YBR_RCT")
YBR = ("YBR_FULL", "YBR_FULL_422")
PALETTE = "PALETTE COLOR"
SUPPORTED_PHOTOMETRIC = (*GREY, *DECODED_AS_RGB, *YBR, PALETTE)

_REQUIRED = ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel", "PhotometricInterpretation")


def read_dataset(path: str | os.PathLike, force: bool = False):
    """Parse a DICOM file with pydicom; a file pydicom cannot parse raises SonoInputError.

    pydicom 2.4.5 reads a file that ends inside an element of undefined length (encapsulated
    pixel data) by warning and dropping the element; that is reported here as truncation when
    the pixel data is what went missing. Its other warnings (odd values in the header) are not
    the user's problem and are not printed.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            dataset = pydicom.dcmread(os.fspath(path), force=force)
        except InvalidDicomError as exc:
            raise SonoInputError(path, f"not a DICOM file: {exc}") from exc
        except (EOFError, struct.error, zlib.error, ValueError, KeyError, TypeError, OverflowError) as exc:
            raise SonoInputError(path, f"DICOM file is truncated or corrupt: {exc}") from exc
    ended_early = any("End of file reached" in str(w.message) for w in caught)
    if ended_early and "PixelData" not in dataset:
        raise SonoInputError(path, "DICOM file is truncated: it ends inside the pixel data")
    return dataset


def read_dicom(path: str | os.PathLike, force: bool = False) -> UltrasoundImage:
    """Read a DICOM image or cine loop, verifying its pixel data.

    Args:
        path: the file.
        force: parse a file without the DICOM preamble (raw dataset).
    """
    source = os.fspath(path)
    dataset = read_dataset(path, force=force)
    if "PixelData" not in dataset:
        raise SonoInputError(
            source, "DICOM file has no pixel data (not an image, or cut off before its pixel data)"
        )
    missing = [k for k in _REQUIRED if k not in dataset]
    if missing:
        raise SonoInputError(source, f"DICOM image is missing {', '.join(missing)}")
    _ensure_transfer_syntax(dataset)
    photometric = str(dataset.PhotometricInterpretation).strip().upper()
    if photometric not in SUPPORTED_PHOTOMETRIC:
        raise SonoInputError(
            source,
            f"unsupported photometric interpretation {photometric}; "
            f"SonoVLM reads {', '.join(SUPPORTED_PHOTOMETRIC)}",
        )
    samples = int(dataset.SamplesPerPixel)
    expected_samples = 3 if photometric in (*DECODED_AS_RGB, *YBR) else 1
    if samples != expected_samples:
        raise SonoInputError(source, f"{photometric} with {samples} samples per pixel is not valid DICOM")
    if int(dataset.Rows) < 1 or int(dataset.Columns) < 1:
        raise SonoInputError(source, "DICOM image has no rows or columns")

    with warnings.catch_warnings():
        # Decoders warn about oddities they handle (J2K sign, padding); failures raise.
        warnings.simplefilter("ignore")
        stored = decode_pixels(dataset, source)
    frames, luma, channels = _to_display(stored, dataset, photometric, source)
    n_frames, rows, cols = frames.shape[:3]
    return UltrasoundImage(
        frames=frames,
        source=source,
        modality=_text(dataset.get("Modality")),
        photometric=photometric,
        channels=channels,
        frame_time_ms=_frame_time_ms(dataset),
        regions=regions_from_dataset(dataset, rows, cols),
        luma=luma,
    )


def _ensure_transfer_syntax(dataset) -> None:
    """A raw dataset (no file meta) is uncompressed in the VR and endianness it was parsed with."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(dataset, "file_meta", None)
    if meta is None:
        meta = dataset.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        if dataset.is_implicit_VR:
            meta.TransferSyntaxUID = ImplicitVRLittleEndian
        elif dataset.is_little_endian:
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
        else:
            meta.TransferSyntaxUID = ExplicitVRBigEndian


def _to_display(
    stored: np.ndarray, dataset, photometric: str, source: str
) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Stored pixels to (frames as grey or RGB, stored Y plane or None, channels)."""
    if photometric == "MONOCHROME1":
        signed = int(dataset.get("PixelRepresentation", 0)) == 1
        bits = int(dataset.get("BitsStored", dataset.BitsAllocated))
        return invert_monochrome1(stored, bits, signed), None, 1
    if photometric == "MONOCHROME2":
        return stored, None, 1
    if photometric in DECODED_AS_RGB:
        return stored, None, 3
    if photometric in YBR:
        if stored.dtype != np.uint8:
            raise SonoInputError(source, f"{photometric} with {dataset.BitsAllocated} bits is not supported")
        return ybr_full_to_rgb(stored), stored[..., 0].copy(), 3
    # PALETTE COLOR
    try:
        return palette_to_rgb(stored, dataset), None, 3
    except (ValueError, AttributeError, KeyError, IndexError) as exc:
        raise SonoInputError(source, f"cannot apply the palette colour lookup table: {exc}") from exc


def _frame_time_ms(dataset) -> float | None:
    """FrameTime, else the mean of FrameTimeVector's increments, else 1000 / CineRate."""
    value = dataset.get("FrameTime")
    if value not in (None, ""):
        return float(value)
    vector = dataset.get("FrameTimeVector")
    if vector not in (None, ""):
        increments = np.atleast_1d(np.asarray(vector, dtype=float))[1:]  # the first entry is 0
        if increments.size:
            return float(increments.mean())
    rate = dataset.get("CineRate")
    if rate not in (None, "") and float(rate) > 0:
        return 1000.0 / float(rate)
    return None


def _text(value) -> str | None:
    if value in (None, ""):
        return None
    return str(value)
