"""Lesion masks as DICOM Segmentation objects (SEG) for a PACS, and back.

Public API:

* :func:`segmentation_to_dicom_seg` -> a SEG dataset referencing its ultrasound source (one frame,
  or several frames of a cine), its segment coded for the organ with SNOMED CT, pathology and
  measurements in the segment description.
* :func:`read_dicom_seg` -> :class:`SegLabel` (masks per source frame, organ, pathology,
  measurements, what it references), read with highdicom.
* :data:`ORGAN_CODING`: the codes per organ (see :mod:`.coding` for the choice).

Single-frame SEGs are made by highdicom 0.22; cine SEGs by :mod:`.cine` with pydicom, because
highdicom 0.22 refuses a multi-frame source without a Frame of Reference.
"""

from .coding import ORGAN_CODING, OrganCoding, format_findings, organ_coding, organ_from_codes, parse_findings
from .content import SegAlgorithm, SegmentContent
from .reader import SegLabel, read_dicom_seg
from .writer import segmentation_to_dicom_seg

__all__ = [
    "ORGAN_CODING",
    "OrganCoding",
    "SegAlgorithm",
    "SegLabel",
    "SegmentContent",
    "format_findings",
    "organ_coding",
    "organ_from_codes",
    "parse_findings",
    "read_dicom_seg",
    "segmentation_to_dicom_seg",
]
