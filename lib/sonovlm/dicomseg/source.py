"""The source image of a Segmentation: read it, and make its header fit to be copied into a SEG.

A SEG repeats its source's Patient and General Study modules. Real ultrasound archives hold
files whose type 2 attributes are absent (no PatientID in an anonymised export) or written in the
retired ACR-NEMA style (``StudyTime`` ``14:04:38``, ``StudyDate`` ``1997.04.24``); highdicom
refuses both. :func:`seg_ready_source` returns a shallow copy with those fixed: absent type 2
attributes empty, old-style dates and times rewritten, values that still do not parse emptied.
The source dataset itself is never changed.
"""

from __future__ import annotations

import copy
import os
import re
import warnings

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ..errors import SonoInputError

#: Type 2 attributes of the Patient / General Study modules a SEG copies from its source.
COPIED_TYPE2 = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)

PIXEL_DATA = 0x7FE00010

#: What a source must have to be referenced at all.
REQUIRED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Rows", "Columns")


def read_source(source: Dataset | str | os.PathLike) -> Dataset:
    """``source`` itself when it is a dataset, else the DICOM file read with pydicom.

    Raises :class:`SonoInputError` for a file that is not DICOM or lacks what a SEG references.
    """
    if isinstance(source, Dataset):
        dataset = source
        name = "source image"
    else:
        name = os.fspath(source)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dataset = dcmread(name, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, NotImplementedError) as exc:
            raise SonoInputError(
                name, f"not a readable DICOM file, so no DICOM SEG can reference it ({exc})"
            ) from exc
    missing = [k for k in REQUIRED if not dataset.get(k)]
    if missing:
        raise SonoInputError(name, f"a DICOM SEG needs its source's {', '.join(missing)}, which it lacks")
    return dataset


def number_of_frames(dataset: Dataset) -> int:
    """NumberOfFrames of ``dataset`` (1 when absent or unreadable)."""
    try:
        return max(1, int(dataset.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


_STRICT_DA = re.compile(r"\d{8}")
_STRICT_TM = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")


def _fixed_da(value: str) -> str | None:
    text = re.sub(r"[.\-/]", "", value.strip())
    return text if _STRICT_DA.fullmatch(text) else None


def _fixed_tm(value: str) -> str | None:
    text = value.strip().replace(":", "")
    return text if _STRICT_TM.fullmatch(text) else None


def _copy_header(dataset: Dataset) -> Dataset:
    """A copy whose elements are independent of ``dataset``'s (pixel data shared, never changed).

    ``copy.copy`` of a pydicom dataset shares its element objects: setting a value on the copy
    would change the original.
    """
    ready = Dataset()
    for element in dataset:
        ready.add(element if element.tag == PIXEL_DATA else copy.deepcopy(element))
    if hasattr(dataset, "file_meta"):
        ready.file_meta = copy.deepcopy(dataset.file_meta)
    ready.is_little_endian = dataset.is_little_endian
    ready.is_implicit_VR = dataset.is_implicit_VR
    return ready


def seg_ready_source(dataset: Dataset) -> Dataset:
    """A shallow copy of ``dataset`` whose copied type 2 attributes highdicom and pydicom accept."""
    ready = _copy_header(dataset)
    for keyword in COPIED_TYPE2:
        if keyword not in ready:
            setattr(ready, keyword, None)
    # Rewrite what is not in the strict DICOM form (pydicom reads some old forms, highdicom not).
    for keyword, strict, fix in (("StudyDate", _STRICT_DA, _fixed_da), ("StudyTime", _STRICT_TM, _fixed_tm)):
        raw = ready.get(keyword)
        if raw and not strict.fullmatch(str(raw).strip()):
            setattr(ready, keyword, fix(str(raw)))
    birth = ready.get("PatientBirthDate")
    if birth and not _STRICT_DA.fullmatch(str(birth).strip()):
        ready.PatientBirthDate = _fixed_da(str(birth))
    if str(ready.get("PatientSex") or "").strip().upper() not in ("", "M", "F", "O"):
        ready.PatientSex = None
    return ready
