"""Read a DICOM Segmentation of an ultrasound image back as SonoVLM masks, with highdicom.

Works for the SEGs :mod:`.writer` makes (single-frame by highdicom, cine by :mod:`.cine`) and for
BINARY or FRACTIONAL SEGs of other tools that reference one source instance. The organ comes from
the segment's coded type and anatomic region (:func:`.coding.organ_from_codes`), the pathology and
measurements from its description (:func:`.coding.parse_findings`).
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from ..errors import SonoInputError
from ..organs import ORGAN_LABELS
from .coding import organ_from_codes, parse_findings

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


@dataclass
class SegLabel:
    """A lesion label read from a SEG.

    Attributes:
        masks: ``{source frame (0-based): (rows, cols) uint8}``; lesion pixels carry the organ's
            label value (1 when the organ is unknown), 0 elsewhere.
        organ: SonoVLM organ name, or ``None`` when the segment's coding names none of them.
        pathology: ``benign``/``malignant`` from the segment description, else ``None``.
        measurements: numbers (and yes/no flags) from the segment description.
        source_sop_instance_uid, source_series_instance_uid, study_instance_uid: what it labels.
        seg_sop_instance_uid, seg_series_instance_uid: the SEG itself.
        automatic: the segment was made by an algorithm (``AUTOMATIC``), not drawn or corrected.
        content_creator: Content Creator's Name, or ``None``.
        content_datetime: ``YYYYMMDDHHMMSS[.ffffff]`` from Content Date and Time (for ordering).
    """

    masks: dict[int, np.ndarray]
    organ: str | None
    pathology: str | None
    measurements: dict[str, float | bool] = field(default_factory=dict)
    source_sop_instance_uid: str = ""
    source_series_instance_uid: str | None = None
    study_instance_uid: str = ""
    seg_sop_instance_uid: str = ""
    seg_series_instance_uid: str = ""
    automatic: bool = False
    content_creator: str | None = None
    content_datetime: str = ""

    @property
    def frames(self) -> list[int]:
        """The annotated source frames (0-based), ascending."""
        return sorted(self.masks)

    @property
    def mask(self) -> np.ndarray:
        """The ``(rows, cols)`` mask of a one-frame label; :class:`SonoInputError` for several."""
        if len(self.masks) != 1:
            raise SonoInputError("DICOM SEG", f"labels {len(self.masks)} frames; pick one from .masks")
        return next(iter(self.masks.values()))


def _as_dataset(seg: Dataset | bytes | str | os.PathLike) -> Dataset:
    if isinstance(seg, Dataset):
        return seg
    raw = isinstance(seg, bytes | bytearray | memoryview)
    source = "DICOM SEG" if raw else os.fspath(seg)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dcmread(io.BytesIO(bytes(seg)) if raw else source)
    except (InvalidDicomError, OSError, ValueError, NotImplementedError) as exc:
        raise SonoInputError(source, f"not a readable DICOM file ({exc})") from exc


def _referenced_frames(dataset: Dataset) -> tuple[str, str, dict[int, list[int]]]:
    """``(source SOP class, source SOP instance, {SEG frame index: [source frame numbers]})``."""
    sop_class = sop_instance = ""
    frames: dict[int, list[int]] = {}
    for index, item in enumerate(dataset.get("PerFrameFunctionalGroupsSequence", [])):
        for derivation in item.get("DerivationImageSequence", []):
            for ref in derivation.get("SourceImageSequence", []):
                sop_class = sop_class or str(ref.ReferencedSOPClassUID)
                if sop_instance and str(ref.ReferencedSOPInstanceUID) != sop_instance:
                    raise SonoInputError("DICOM SEG", "references more than one source instance")
                sop_instance = str(ref.ReferencedSOPInstanceUID)
                numbers = ref.get("ReferencedFrameNumber")
                if numbers is not None:
                    values = list(numbers) if isinstance(numbers, MultiValue) else [numbers]
                    frames.setdefault(index, []).extend(int(n) for n in values)
    if not sop_instance:
        for series in dataset.get("ReferencedSeriesSequence", []):
            for ref in series.get("ReferencedInstanceSequence", []):
                sop_class, sop_instance = str(ref.ReferencedSOPClassUID), str(ref.ReferencedSOPInstanceUID)
    if not sop_instance:
        raise SonoInputError("DICOM SEG", "references no source image")
    return sop_class, sop_instance, frames


def _coded(item: Dataset, keyword: str) -> list[Any]:
    return list(item.get(keyword, []))


def _segment_organ(segment: Dataset) -> str | None:
    types = _coded(segment, "SegmentedPropertyTypeCodeSequence")
    if not types:
        return None
    regions = _coded(segment, "AnatomicRegionSequence")
    # Before 2018 the region sat inside the type item (SegmentedPropertyTypeModifierCodeSequence).
    regions += _coded(types[0], "SegmentedPropertyTypeModifierCodeSequence")
    return organ_from_codes(_CodeView(types[0]), [_CodeView(r) for r in regions])


class _CodeView:
    """``value`` / ``scheme_designator`` of a code sequence item, for :func:`organ_from_codes`."""

    def __init__(self, item: Dataset) -> None:
        self.value = str(item.get("CodeValue", ""))
        self.scheme_designator = str(item.get("CodingSchemeDesignator", ""))


def read_dicom_seg_header(dataset: Dataset) -> dict[str, Any]:
    """What a SEG labels, from its header alone (a WADO-RS metadata response is enough).

    Returns a dict: ``source`` (SOP Instance UID), ``organ``, ``pathology``, ``measurements``,
    ``frames`` (annotated source frames, 0-based), ``automatic``, ``creator`` and
    ``content_datetime`` (see :class:`SegLabel`). Raises :class:`SonoInputError` for a header
    that is not a SEG of one source instance.
    """
    if str(dataset.get("SOPClassUID", "")) != SEGMENTATION_STORAGE and dataset.get("Modality") != "SEG":
        raise SonoInputError("DICOM SEG", "not a Segmentation")
    _, source_uid, frame_refs = _referenced_frames(dataset)
    segments = list(dataset.get("SegmentSequence", []))
    if not segments:
        raise SonoInputError("DICOM SEG", "has no segment")
    organs = [_segment_organ(s) for s in segments]
    known = [i for i, organ in enumerate(organs) if organ is not None]
    first = segments[known[0] if known else 0]
    pathology, measurements = parse_findings(first.get("SegmentDescription"))
    frames = sorted({n - 1 for numbers in frame_refs.values() for n in numbers}) or [0]
    creator = dataset.get("ContentCreatorName")
    return {
        "source": source_uid,
        "organ": organs[known[0]] if known else None,
        "pathology": pathology,
        "measurements": measurements,
        "frames": frames,
        "automatic": str(first.get("SegmentAlgorithmType", "")).upper() == "AUTOMATIC",
        "creator": str(creator).rstrip("^") if creator else None,
        "content_datetime": f"{dataset.get('ContentDate', '')}{dataset.get('ContentTime', '')}",
    }


def read_dicom_seg(seg: Dataset | bytes | str | os.PathLike) -> SegLabel:
    """Read a SEG (a dataset, the bytes of a file, or a path) as a :class:`SegLabel`.

    Raises :class:`SonoInputError` for something that is not a SEG, references several source
    instances, or that highdicom cannot decode.
    """
    import highdicom as hd

    dataset = _as_dataset(seg)
    if str(dataset.get("SOPClassUID", "")) != SEGMENTATION_STORAGE:
        raise SonoInputError(
            "DICOM SEG", f"not a Segmentation (SOP class {dataset.get('SOPClassUID', 'none')})"
        )
    _, source_uid, frame_refs = _referenced_frames(dataset)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # they may quote the patient's name
            parsed = hd.seg.Segmentation.from_dataset(dataset, copy=False)
        segments = list(parsed.segment_numbers)
        descriptions = {n: parsed.get_segment_description(n) for n in segments}
        organs = {
            n: organ_from_codes(d.segmented_property_type, list(d.anatomic_regions))
            for n, d in descriptions.items()
        }
        known = [n for n in segments if organs[n] is not None]
        organ = organs[known[0]] if known else None
        chosen = [n for n in segments if organs[n] == organ] if organ else segments
        source_frames = sorted({n for numbers in frame_refs.values() for n in numbers})
        if source_frames:
            pixels = parsed.get_pixels_by_source_frame(
                source_uid, source_frames, segment_numbers=chosen, combine_segments=False
            )
            keys = [n - 1 for n in source_frames]
        else:
            pixels = parsed.get_pixels_by_source_instance([source_uid], segment_numbers=chosen)
            keys = [0]
    except (ValueError, KeyError, AttributeError, RuntimeError, TypeError) as exc:
        raise SonoInputError("DICOM SEG", f"highdicom cannot decode it: {exc}") from exc

    value = ORGAN_LABELS[organ] if organ else 1
    lesion = np.asarray(pixels).reshape(len(keys), *pixels.shape[1:3], -1).any(axis=-1)
    masks = {key: (lesion[i] * value).astype(np.uint8) for i, key in enumerate(keys)}
    first = descriptions[chosen[0]]
    pathology, measurements = parse_findings(first.get("SegmentDescription"))
    source_series = None
    for series in dataset.get("ReferencedSeriesSequence", []):
        source_series = str(series.SeriesInstanceUID)
    creator = dataset.get("ContentCreatorName")
    return SegLabel(
        masks=masks,
        organ=organ,
        pathology=pathology,
        measurements=measurements,
        source_sop_instance_uid=source_uid,
        source_series_instance_uid=source_series,
        study_instance_uid=str(dataset.get("StudyInstanceUID", "")),
        seg_sop_instance_uid=str(dataset.SOPInstanceUID),
        seg_series_instance_uid=str(dataset.get("SeriesInstanceUID", "")),
        automatic=str(first.get("SegmentAlgorithmType", "")).upper() == "AUTOMATIC",
        content_creator=str(creator).rstrip("^") if creator else None,
        content_datetime=f"{dataset.get('ContentDate', '')}{dataset.get('ContentTime', '')}",
    )
