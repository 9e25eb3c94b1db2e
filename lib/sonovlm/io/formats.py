"""Which reader a file needs, from its first bytes (and, for NIfTI, its name).

The content decides, not the extension, so a DICOM named ``.png`` or a PNG named ``.dcm`` still
reads; the only names used are ``.nii``/``.nii.gz`` (a gzip stream says nothing of what it holds).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import SonoInputError

DICOM = "dicom"
#: A DICOM dataset without the 128-byte preamble and "DICM" (an older or raw file).
DICOM_RAW = "dicom-raw"
NRRD = "nrrd"
NIFTI = "nifti"
NUMPY = "npy"
RASTER = "raster"

#: Pillow format names SonoVLM accepts for raster images.
RASTER_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG", "BMP": "BMP", "DIB": "BMP", "TIFF": "TIFF"}

_RASTER_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*")
EXPECTED = "PNG, JPEG, BMP, TIFF, DICOM, NIfTI or NRRD"


def check_readable(path: str | os.PathLike) -> Path:
    """The path as a :class:`Path`; a missing file or a directory raises SonoInputError."""
    file = Path(path)
    if not file.exists():
        raise SonoInputError(path, "file not found")
    if file.is_dir():
        raise SonoInputError(path, "is a directory, not a file")
    return file


def is_nifti_name(path: str | os.PathLike) -> bool:
    name = os.fspath(path).lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def sniff(path: str | os.PathLike) -> str:
    """The kind of file at ``path``: one of the constants of this module.

    Raises :class:`SonoInputError` for a missing, unreadable, empty or unrecognised file.
    """
    file = check_readable(path)
    try:
        with file.open("rb") as handle:
            head = handle.read(352)
    except OSError as exc:
        raise SonoInputError(path, f"cannot read the file: {exc.strerror or exc}") from exc
    if not head:
        raise SonoInputError(path, "file is empty")
    if head[128:132] == b"DICM":
        return DICOM
    if head.startswith(b"NRRD000"):
        return NRRD
    if head.startswith(b"\x93NUMPY"):
        return NUMPY
    if is_nifti_name(file) or _nifti_magic(head):
        return NIFTI
    if head.startswith(_RASTER_MAGIC):
        return RASTER
    if _looks_like_raw_dicom(head):
        return DICOM_RAW
    if _pillow_identifies(file):
        return RASTER  # an image format SonoVLM does not take; the raster reader names it
    raise SonoInputError(path, f"not an image: unrecognised file format (expected {EXPECTED})")


def _nifti_magic(head: bytes) -> bool:
    nifti1 = len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00")
    nifti2 = len(head) >= 8 and head[4:8] in (b"n+2\x00", b"ni2\x00")
    return nifti1 or nifti2


def _looks_like_raw_dicom(head: bytes) -> bool:
    """A preamble-less dataset starts with a group 0x0002 or 0x0008 tag, little endian."""
    if len(head) < 8:
        return False
    group = int.from_bytes(head[0:2], "little")
    element = int.from_bytes(head[2:4], "little")
    return group in (0x0002, 0x0008) and element < 0x0100


def _pillow_identifies(path: Path) -> bool:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path):
            return True
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return False
