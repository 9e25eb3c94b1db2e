"""The DICOM elements SonoVLM needs, read and checked before any pixel is decoded.

pydicom parses a file lazily: an element's bytes stay raw until the element is first accessed,
and only then are they converted to a value. A corrupt value (an unknown VR, a length that is not
a multiple of its VR's size, a sequence whose items run past its end) therefore fails at that
first access, wherever it happens. So every element a reader needs is read here, through
:func:`element_value`, which turns pydicom's failure into :class:`SonoInputError` naming the file
and the element; a value once read stays converted, so the decoders that read it again later
cannot fail on it.

:func:`read_pixel_format` reads and validates the Image Pixel module (Rows, Columns,
BitsAllocated, BitsStored, SamplesPerPixel, PixelRepresentation, PhotometricInterpretation,
NumberOfFrames, PlanarConfiguration, PixelData) into a :class:`PixelFormat` that the decoders use
instead of the dataset's raw attributes.
"""

from __future__ import annotations

import reprlib
import struct
import zlib
from dataclasses import dataclass

from pydicom.errors import BytesLengthException, InvalidDicomError

from ..errors import SonoInputError

GREY = ("MONOCHROME1", "MONOCHROME2")
#: Photometric interpretations whose decoded data is already RGB.
DECODED_AS_RGB = ("RGB", "YBR_ICT", "YBR_RCT")
YBR = ("YBR_FULL", "YBR_FULL_422")
PALETTE = "PALETTE COLOR"
SUPPORTED_PHOTOMETRIC = (*GREY, *DECODED_AS_RGB, *YBR, PALETTE)
#: BitsAllocated values of integer pixel data (PS3.5 8.1.1; 1 is a bit plane, as pydicom reads it).
BITS_ALLOCATED = (1, 8, 16, 32)

#: Elements of the Image Pixel module without which no pixel can be decoded (PS3.3 C.7.6.3).
REQUIRED = (
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "SamplesPerPixel",
    "PixelRepresentation",
    "PhotometricInterpretation",
)

#: What pydicom 2.4.5 raises for a corrupt dataset, while parsing it or when a value is first
#: converted: not DICOM (InvalidDicomError); lengths that run past the data (EOFError,
#: struct.error, OSError "No tag to read"); deflated data that does not inflate (zlib.error); an
#: unknown VR (NotImplementedError); a value whose length does not fit its VR
#: (BytesLengthException); malformed numbers, text or item tags (ValueError, which includes
#: UnicodeDecodeError, KeyError, TypeError, OverflowError).
CORRUPT_DICOM_ERRORS: tuple[type[BaseException], ...] = (
    InvalidDicomError,
    BytesLengthException,
    NotImplementedError,
    EOFError,
    OSError,
    struct.error,
    zlib.error,
    ValueError,
    KeyError,
    TypeError,
    OverflowError,
)

_shown = reprlib.Repr()
_shown.maxstring = _shown.maxother = 40
_shown.maxlist = _shown.maxtuple = 4


def shown(value) -> str:
    """A short repr of a value for an error message (a corrupt value can be megabytes long)."""
    return _shown.repr(value)


def element_value(dataset, keyword: str, source: str):
    """The value of ``keyword`` in ``dataset`` (``None`` when absent), converted now.

    Raises :class:`SonoInputError` naming ``source`` and the element when pydicom cannot convert
    the stored bytes (unknown VR, wrong length, corrupt sequence). A value it converts with a
    warning (an invalid IS stays a str) is returned as it is; the caller checks its type.
    """
    try:
        return dataset.get(keyword)
    except CORRUPT_DICOM_ERRORS as exc:
        raise SonoInputError(source, f"DICOM element {keyword} is corrupt: {exc}") from exc


def is_empty(value) -> bool:
    return value is None or (isinstance(value, (str, bytes)) and not value.strip())


@dataclass(frozen=True)
class PixelFormat:
    """The validated Image Pixel attributes of a DICOM image.

    Attributes:
        transfer_syntax: the TransferSyntaxUID (a ``pydicom.uid.UID``); whether SonoVLM decodes
            it is decided by :func:`.dicom_pixels.decode_pixels`.
        rows, cols: Rows and Columns, at least 1.
        frames: NumberOfFrames; 1 when absent or 0 (as pydicom reads it).
        samples: SamplesPerPixel, 1 or 3 as the photometric interpretation requires.
        bits_allocated: 1, 8, 16 or 32.
        bits_stored: 1 to ``bits_allocated``.
        signed: PixelRepresentation is 1 (two's complement).
        photometric: PhotometricInterpretation, upper case, one of :data:`SUPPORTED_PHOTOMETRIC`.
        planar_configuration: 0 (colour-by-pixel) or 1 (colour-by-plane) for colour data when
            the file gives it, else ``None``.
    """

    transfer_syntax: str
    rows: int
    cols: int
    frames: int
    samples: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    photometric: str
    planar_configuration: int | None = None

    @property
    def frame_shape(self) -> tuple[int, ...]:
        """``(rows, cols)`` or ``(rows, cols, samples)``."""
        return (self.rows, self.cols, self.samples) if self.samples > 1 else (self.rows, self.cols)


def read_pixel_format(dataset, source: str) -> PixelFormat:
    """Read and validate the Image Pixel module of ``dataset`` (its file meta must be set).

    Also reads PixelData (so that a corrupt pixel data element fails here) and checks that it
    holds bytes. Raises :class:`SonoInputError` naming ``source`` for a missing, corrupt or
    invalid attribute.
    """
    missing = [k for k in REQUIRED if k not in dataset or is_empty(element_value(dataset, k, source))]
    if missing:
        raise SonoInputError(source, f"DICOM image is missing {', '.join(missing)}")
    syntax = element_value(dataset.file_meta, "TransferSyntaxUID", source)
    if not isinstance(syntax, str) or is_empty(syntax):
        raise SonoInputError(source, f"DICOM TransferSyntaxUID {shown(syntax)} is not a UID")

    photometric = element_value(dataset, "PhotometricInterpretation", source)
    if not isinstance(photometric, str):
        raise SonoInputError(source, f"DICOM PhotometricInterpretation {shown(photometric)} is not a name")
    photometric = photometric.strip().upper()
    if photometric not in SUPPORTED_PHOTOMETRIC:
        raise SonoInputError(
            source,
            f"unsupported photometric interpretation {photometric}; "
            f"SonoVLM reads {', '.join(SUPPORTED_PHOTOMETRIC)}",
        )
    samples = _integer(dataset, "SamplesPerPixel", source)
    expected_samples = 3 if photometric in (*DECODED_AS_RGB, *YBR) else 1
    if samples != expected_samples:
        raise SonoInputError(source, f"{photometric} with {samples} samples per pixel is not valid DICOM")

    rows, cols = _integer(dataset, "Rows", source), _integer(dataset, "Columns", source)
    if rows < 1 or cols < 1:
        raise SonoInputError(source, f"DICOM image has {rows} rows and {cols} columns")
    bits_allocated = _integer(dataset, "BitsAllocated", source)
    if bits_allocated not in BITS_ALLOCATED:
        raise SonoInputError(
            source,
            f"DICOM BitsAllocated {bits_allocated} is not valid for pixel data "
            f"(expected one of {', '.join(map(str, BITS_ALLOCATED))})",
        )
    bits_stored = _integer(dataset, "BitsStored", source)
    if not 1 <= bits_stored <= bits_allocated:
        raise SonoInputError(
            source, f"DICOM BitsStored {bits_stored} is not between 1 and BitsAllocated {bits_allocated}"
        )
    representation = _integer(dataset, "PixelRepresentation", source)
    if representation not in (0, 1):
        raise SonoInputError(
            source, f"DICOM PixelRepresentation {representation} is not 0 (unsigned) or 1 (signed)"
        )
    planar = None
    if samples > 1 and not is_empty(element_value(dataset, "PlanarConfiguration", source)):
        planar = _integer(dataset, "PlanarConfiguration", source)
        if planar not in (0, 1):
            raise SonoInputError(source, f"DICOM PlanarConfiguration {planar} is not 0 or 1")
    frames = 1
    if not is_empty(element_value(dataset, "NumberOfFrames", source)):
        frames = _integer(dataset, "NumberOfFrames", source)
        if frames < 0:
            raise SonoInputError(source, f"DICOM NumberOfFrames {frames} is negative")
        frames = max(frames, 1)

    pixel_data = element_value(dataset, "PixelData", source)
    if not isinstance(pixel_data, bytes):
        raise SonoInputError(
            source, f"DICOM PixelData holds {type(pixel_data).__name__} values, not bytes (a corrupt VR)"
        )
    return PixelFormat(
        transfer_syntax=syntax,
        rows=rows,
        cols=cols,
        frames=frames,
        samples=samples,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        signed=representation == 1,
        photometric=photometric,
        planar_configuration=planar,
    )


def _integer(dataset, keyword: str, source: str) -> int:
    """A single whole-number value (US, UL, IS); anything else raises SonoInputError."""
    value = element_value(dataset, keyword, source)
    # pydicom's IS and the US/UL values are int; an invalid IS string stays a str (with a
    # warning), several values come as a list, a corrupt VR as bytes or float.
    if isinstance(value, bool) or not isinstance(value, int):
        raise SonoInputError(source, f"DICOM {keyword} {shown(value)} is not a whole number")
    return int(value)
