"""Headers of compressed DICOM frames (JPEG, JPEG-LS, JPEG 2000), read without decoding.

The decoders size their buffers from the codestream's own header, not from the dataset, and a
corrupt header can ask for gigabytes: pylibjpeg-libjpeg touches and keeps ~7 GB for a JPEG-LS
frame header that says 55750 x 32033 (its ``get_parameters`` allocates the same). So each frame's
header is read here, with plain byte parsing, and checked against Rows, Columns and
SamplesPerPixel before the frame reaches a decoder.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Start-of-frame markers: JPEG SOF0-3, 5-7, 9-11, 13-15 (C4, C8, CC are DHT, JPG, DAC) and
#: JPEG-LS SOF55 (F7).
JPEG_SOF_MARKERS = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}
)
J2K_SOC_SIZ = b"\xff\x4f\xff\x51"


@dataclass
class JpegHeader:
    """What a JPEG / JPEG-LS stream's markers up to its first scan say.

    Attributes:
        size: ``(rows, cols, components)`` from the start-of-frame marker, ``None`` without one.
        component_ids: the frame's component identifiers.
        jfif: an APP0 JFIF marker is present.
        adobe_transform: the APP14 Adobe marker's colour transform flag, ``None`` without one.
    """

    size: tuple[int, int, int] | None = None
    component_ids: list[int] = field(default_factory=list)
    jfif: bool = False
    adobe_transform: int | None = None


def read_jpeg_header(encoded: bytes) -> JpegHeader:
    """Walk the markers of a JPEG / JPEG-LS stream (after SOI) up to the start of scan."""
    header = JpegHeader()
    pos, end = 2, len(encoded)
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
            header.jfif = True
        elif marker == 0xEE and body.startswith(b"Adobe") and len(body) >= 12:
            header.adobe_transform = body[11]
        elif marker in JPEG_SOF_MARKERS and len(body) >= 6:
            # P (1 byte), Y (2), X (2), Nf (1), then Nf x (id, sampling, table)
            rows, cols, n = int.from_bytes(body[1:3], "big"), int.from_bytes(body[3:5], "big"), body[5]
            header.size = (rows, cols, n)
            header.component_ids = [body[6 + 3 * i] for i in range(n) if 6 + 3 * i < len(body)]
        elif marker == 0xDA:  # start of scan: the header is over
            break
        pos += 2 + length
    return header


def jpeg_stores_ycbcr(encoded: bytes) -> bool:
    """Whether a 3-component JPEG stream holds YCbCr, by libjpeg's rules.

    A JFIF (APP0) marker means YCbCr; an Adobe (APP14) marker says it with its transform flag
    (0 = RGB); otherwise component ids ``R``, ``G``, ``B`` mean RGB and anything else YCbCr.
    """
    header = read_jpeg_header(encoded)
    if header.adobe_transform is not None:
        return header.adobe_transform != 0
    if header.jfif:
        return True
    return header.component_ids != [ord("R"), ord("G"), ord("B")]


def j2k_size(encoded: bytes) -> tuple[int, int, int] | None:
    """``(rows, cols, components)`` from a JPEG 2000 codestream's SIZ marker.

    ``None`` when the frame does not start with SOC and SIZ (for example a JP2 file wrapped in
    the pixel data, which the decoder may still read).
    """
    # SIZ: Lsiz, Rsiz (2 bytes each), Xsiz, Ysiz, XOsiz, YOsiz, XTsiz, YTsiz, XTOsiz, YTOsiz
    # (4 each), Csiz (2); the image is (Xsiz - XOsiz) x (Ysiz - YOsiz).
    if not encoded.startswith(J2K_SOC_SIZ) or len(encoded) < 4 + 38:
        return None
    siz = encoded[4:]

    def word(offset: int) -> int:
        return int.from_bytes(siz[offset : offset + 4], "big")

    cols, rows = word(4) - word(12), word(8) - word(16)
    return rows, cols, int.from_bytes(siz[36:38], "big")


def j2k_components(encoded: bytes) -> list[tuple[int, bool, int, int]] | None:
    """Each component's ``(bit depth, signed, x subsampling, y subsampling)`` from a JPEG 2000
    codestream's SIZ marker (``Ssiz``, ``XRsiz``, ``YRsiz``); ``None`` without SOC and SIZ or
    when the marker is cut short."""
    if not encoded.startswith(J2K_SOC_SIZ) or len(encoded) < 4 + 38:
        return None
    siz = encoded[4:]
    count = int.from_bytes(siz[36:38], "big")
    if len(siz) < 38 + 3 * count:
        return None
    components = []
    for index in range(count):
        ssiz, xr, yr = siz[38 + 3 * index : 41 + 3 * index]
        components.append(((ssiz & 0x7F) + 1, bool(ssiz & 0x80), xr, yr))
    return components
