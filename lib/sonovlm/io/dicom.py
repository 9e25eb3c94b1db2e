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

import io
import os
import warnings

import numpy as np

from ..errors import SonoInputError
from .colour import invert_monochrome1, palette_to_rgb, ybr_full_to_rgb
from .dicom_header import (
    CORRUPT_DICOM_ERRORS,
    DECODED_AS_RGB,
    YBR,
    PixelFormat,
    element_value,
    is_empty,
    read_pixel_format,
    shown,
)
from .dicom_pixels import decode_pixels
from .regions import regions_from_dataset
from .types import UltrasoundImage


def read_dataset(path: str | os.PathLike, force: bool = False):
    """Parse a DICOM file with pydicom; a file pydicom cannot parse raises SonoInputError.

    The file is read through :class:`BoundedReader`, so a corrupt length field cannot make
    pydicom allocate more than the file holds.

    pydicom 2.4.5 reads a file that ends inside an element of undefined length (encapsulated
    pixel data) by warning and dropping the element; that is reported here as truncation when
    the pixel data is what went missing. Its other warnings (odd values in the header) are not
    the user's problem and are not printed.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        handle = BoundedReader(path)
    except OSError as exc:
        raise SonoInputError(path, f"cannot read the file: {exc.strerror or exc}") from exc
    with handle, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            # dcmread converts a few values itself (file meta, SpecificCharacterSet), so value
            # conversion failures come out of it as well as parsing failures.
            dataset = pydicom.dcmread(handle, force=force)
        except InvalidDicomError as exc:
            raise SonoInputError(path, f"not a DICOM file: {exc}") from exc
        except MemoryError as exc:
            raise SonoInputError(path, f"DICOM file of {handle.size} bytes does not fit in memory") from exc
        except CORRUPT_DICOM_ERRORS as exc:
            raise SonoInputError(path, f"DICOM file is truncated or corrupt: {exc}") from exc
    ended_early = any("End of file reached" in str(w.message) for w in caught)
    if ended_early and "PixelData" not in dataset:
        raise SonoInputError(path, "DICOM file is truncated: it ends inside the pixel data")
    return dataset


class BoundedReader(io.BufferedReader):
    """A binary file whose ``read(n)`` asks for no more than what is left of the file.

    pydicom reads each value with ``read(length)``, and a buffered file allocates ``length``
    bytes before it finds the file shorter: a corrupt length field asks for gigabytes
    (MemoryError, or an allocation the size of the claim). Reading only what is there gives the
    short value that pydicom then handles like any other truncation. Seeking stays a file's
    (past the end is allowed), which pydicom's scan of encapsulated pixel data relies on.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(io.FileIO(os.fspath(path), "rb"))
        self.size = os.fstat(self.fileno()).st_size

    def read(self, size: int | None = -1) -> bytes:
        if size is not None and size > 0:
            size = min(size, max(self.size - self.tell(), 0))
            if size == 0:
                return b""
        return super().read(size)


def read_dicom(path: str | os.PathLike, force: bool = False) -> UltrasoundImage:
    """Read a DICOM image or cine loop, verifying its pixel data.

    Every element used is read (and so converted by pydicom) and checked before the pixel data
    is decoded; see :mod:`.dicom_header`.

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
    with warnings.catch_warnings():
        # pydicom warns about odd values it converts, the decoders about oddities they handle
        # (J2K sign, padding); what SonoVLM cannot use raises below with its own message.
        warnings.simplefilter("ignore")
        _ensure_transfer_syntax(dataset, source)
        pixel_format = read_pixel_format(dataset, source)
        modality = _text(element_value(dataset, "Modality", source))
        frame_time_ms = _frame_time_ms(dataset, source)
        try:
            regions = regions_from_dataset(dataset, pixel_format.rows, pixel_format.cols)
        except CORRUPT_DICOM_ERRORS as exc:
            raise SonoInputError(source, f"DICOM SequenceOfUltrasoundRegions is corrupt: {exc}") from exc
        stored = decode_pixels(dataset, pixel_format, source)
        frames, luma, channels = _to_display(stored, dataset, pixel_format, source)
    return UltrasoundImage(
        frames=frames,
        source=source,
        modality=modality,
        photometric=pixel_format.photometric,
        channels=channels,
        frame_time_ms=frame_time_ms,
        regions=regions,
        luma=luma,
    )


def _ensure_transfer_syntax(dataset, source: str) -> None:
    """A raw dataset (no file meta) is uncompressed in the VR and endianness it was parsed with."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(dataset, "file_meta", None)
    if meta is None:
        meta = dataset.file_meta = FileMetaDataset()
    if is_empty(element_value(meta, "TransferSyntaxUID", source)):
        if dataset.is_implicit_VR:
            meta.TransferSyntaxUID = ImplicitVRLittleEndian
        elif dataset.is_little_endian:
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
        else:
            meta.TransferSyntaxUID = ExplicitVRBigEndian


def _to_display(
    stored: np.ndarray, dataset, pixel_format: PixelFormat, source: str
) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Stored pixels to (frames as grey or RGB, stored Y plane or None, channels)."""
    photometric = pixel_format.photometric
    if photometric == "MONOCHROME1":
        return invert_monochrome1(stored, pixel_format.bits_stored, pixel_format.signed), None, 1
    if photometric == "MONOCHROME2":
        return stored, None, 1
    if photometric in DECODED_AS_RGB:
        return stored, None, 3
    if photometric in YBR:
        if stored.dtype != np.uint8:
            bits = pixel_format.bits_allocated
            raise SonoInputError(source, f"{photometric} with {bits} bits is not supported")
        return ybr_full_to_rgb(stored), stored[..., 0].copy(), 3
    # PALETTE COLOR: the lookup table elements are first read (and converted) here.
    try:
        return palette_to_rgb(stored, dataset), None, 3
    except (AttributeError, IndexError, *CORRUPT_DICOM_ERRORS) as exc:
        raise SonoInputError(source, f"cannot apply the palette colour lookup table: {exc}") from exc


def _frame_time_ms(dataset, source: str) -> float | None:
    """FrameTime, else the mean of FrameTimeVector's increments, else 1000 / CineRate."""
    value = element_value(dataset, "FrameTime", source)
    if not is_empty(value):
        return _number(value, "FrameTime", source)
    vector = element_value(dataset, "FrameTimeVector", source)
    if not is_empty(vector):
        try:
            times = np.atleast_1d(np.asarray(vector, dtype=float))
        except (TypeError, ValueError) as exc:
            raise SonoInputError(source, f"DICOM FrameTimeVector {shown(vector)} is not numbers") from exc
        increments = times[1:]  # the first entry is 0
        if increments.size:
            return float(increments.mean())
    rate = element_value(dataset, "CineRate", source)
    if not is_empty(rate) and _number(rate, "CineRate", source) > 0:
        return 1000.0 / _number(rate, "CineRate", source)
    return None


def _number(value, keyword: str, source: str) -> float:
    """One number from a DS/IS value (an invalid one stays a str in pydicom, with a warning)."""
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise SonoInputError(source, f"DICOM {keyword} {shown(value)} is not a number") from exc


def _text(value) -> str | None:
    if is_empty(value):
        return None
    return str(value)
