"""How each organ's segment is coded in a DICOM Segmentation, and the free-text findings beside it.

Every code comes from the DICOM context groups shipped with pydicom (``pydicom.sr.codedict``), so
it is a concept the standard lists for that attribute, not one typed in by hand:

* ``lymph_node``: category SCT 123037004 "Anatomical Structure" (CID 7150), type SCT 59441001
  "Lymph node" (CID 7166 / 7192), no anatomic region (the type is the structure).
* ``breast_lesion``: category SCT 49755003 "Morphologically Abnormal Structure", type SCT 4147007
  "Mass" (CID 7159), anatomic region SCT 76752008 "Breast" (CID 4).
* ``thyroid_nodule``: category SCT 49755003 "Morphologically Abnormal Structure", type SCT 27925004
  "Nodule" (CID 7159), anatomic region SCT 69748006 "Thyroid" (CID 4).

The lesion types are post-coordinated (a CID 7159 "Lesion Segmentation Types" concept plus the
segment's Anatomic Region Sequence): "mass of breast" and "nodule of thyroid". Pre-coordinated
disorder concepts such as SCT 237495005 "Thyroid nodule (disorder)" are findings, not segmentable
morphologies, and are in no segmentation context group, so they are not used. A lymph node is
coded as the anatomical structure it is; whether it is abnormal is its pathology.

**Findings** (pathology and measurements) go into the segment's Segment Description (0062,0006, VR
ST, up to 1024 characters) as ``key=value`` pairs separated by ``"; "``, for example
``pathology=malignant; area_mm2=48.2; long_axis_mm=11.3; short_axis_mm=6.1; taller_than_wide=no``.
It travels with the mask in one object, any PACS viewer shows it, and :func:`parse_findings`
reads it back. (A TID 1500 Structured Report would code the same findings formally, but it is a
second object to keep consistent with the SEG and nothing in this project reads one.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from ..errors import SonoInputError
from ..organs import ORGAN_LABELS, PATHOLOGIES, organ_label


@dataclass(frozen=True)
class OrganCoding:
    """The coded concepts of one organ's segment.

    Attributes:
        organ: SonoVLM organ name (a key of :data:`~sonovlm.organs.ORGAN_LABELS`).
        category: Segmented Property Category (CID 7150).
        property_type: Segmented Property Type.
        anatomic_region: Anatomic Region of the segment, or ``None`` when the type is itself the
            anatomical structure.
        description: human words for the segment (Content Description, series description).
    """

    organ: str
    category: Code
    property_type: Code
    anatomic_region: Code | None
    description: str


ORGAN_CODING: dict[str, OrganCoding] = {
    "lymph_node": OrganCoding(
        "lymph_node",
        codes.cid7150.AnatomicalStructure,
        codes.cid7166.LymphNode,
        None,
        "Lymph node",
    ),
    "breast_lesion": OrganCoding(
        "breast_lesion",
        codes.cid7150.MorphologicallyAbnormalStructure,
        codes.cid7159.Mass,
        codes.cid4.Breast,
        "Breast mass",
    ),
    "thyroid_nodule": OrganCoding(
        "thyroid_nodule",
        codes.cid7150.MorphologicallyAbnormalStructure,
        codes.cid7159.Nodule,
        codes.cid4.Thyroid,
        "Thyroid nodule",
    ),
}
assert set(ORGAN_CODING) == set(ORGAN_LABELS), "every organ needs its segment coding"


def organ_coding(organ: str) -> OrganCoding:
    """The coding of ``organ``; :class:`SonoInputError` for an organ SonoVLM does not know."""
    organ_label(organ)
    return ORGAN_CODING[organ]


def _key(code: Any) -> tuple[str, str] | None:
    if code is None:
        return None
    return (str(code.scheme_designator).upper(), str(code.value))


def organ_from_codes(property_type: Any, anatomic_regions: list[Any] | tuple[Any, ...] = ()) -> str | None:
    """The organ a segment's coded type (and anatomic region) means, or ``None`` when unknown.

    ``property_type`` and ``anatomic_regions`` are anything with ``value`` and
    ``scheme_designator`` (pydicom ``Code``, highdicom ``CodedConcept``). A lesion type (mass,
    nodule) without a region is ambiguous and gives ``None``.
    """
    type_key = _key(property_type)
    region_keys = {_key(r) for r in anatomic_regions}
    for coding in ORGAN_CODING.values():
        if _key(coding.property_type) != type_key:
            continue
        if coding.anatomic_region is None or _key(coding.anatomic_region) in region_keys:
            return coding.organ
    return None


# -- findings in the segment description -----------------------------------------------------------

#: Measurement keys written into the description (from :meth:`LesionMeasurement.to_dict`), in order.
#: Millimetre values when the image is calibrated, else their pixel twins.
MEASUREMENT_KEYS: tuple[str, ...] = (
    "area_mm2",
    "long_axis_mm",
    "short_axis_mm",
    "axis_ratio",
    "orientation_deg",
    "taller_than_wide",
    "area_px",
    "long_axis_px",
    "short_axis_px",
)

#: Segment Description is VR ST: at most 1024 characters.
MAX_DESCRIPTION_CHARS = 1024


def _format_value(value: Any) -> str | None:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else None
    return None


def format_findings(pathology: str | None, measurements: Mapping[str, Any] | None) -> str:
    """``pathology=...; key=value; ...`` for the Segment Description (see the module notes).

    ``measurements`` is the dict of :meth:`sonovlm.measure.LesionMeasurement.to_dict` (other keys
    and ``None`` values are left out). Raises :class:`SonoInputError` for an unknown pathology.
    """
    parts: list[str] = []
    if pathology is not None:
        if pathology not in PATHOLOGIES:
            raise SonoInputError(
                "pathology", f"unknown pathology {pathology!r} (known: {', '.join(PATHOLOGIES)})"
            )
        parts.append(f"pathology={pathology}")
    for key in MEASUREMENT_KEYS:
        text = _format_value((measurements or {}).get(key))
        if text is not None:
            parts.append(f"{key}={text}")
    return "; ".join(parts)[:MAX_DESCRIPTION_CHARS]


def parse_findings(text: str | None) -> tuple[str | None, dict[str, float | bool]]:
    """Read back :func:`format_findings`: ``(pathology, measurements)``.

    Unknown keys and values that are not numbers are ignored, so a description written by another
    tool gives ``(None, {})`` rather than an error.
    """
    pathology: str | None = None
    measurements: dict[str, float | bool] = {}
    for part in str(text or "").split(";"):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep:
            continue
        if key == "pathology" and value.lower() in PATHOLOGIES:
            pathology = value.lower()
        elif key in MEASUREMENT_KEYS:
            if value in ("yes", "no"):
                measurements[key] = value == "yes"
                continue
            try:
                number = float(value)
            except ValueError:
                continue
            measurements[key] = int(number) if key == "area_px" else number
    return pathology, measurements
