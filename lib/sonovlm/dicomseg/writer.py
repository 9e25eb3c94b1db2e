"""Write a lesion mask as a DICOM Segmentation (SEG) that references its ultrasound source.

* A **single-frame** source (US Image Storage) gets a SEG made by highdicom 0.22: one BINARY
  segment, one frame, referencing the source instance (ultrasound has no Frame of Reference, and
  highdicom allows that for one source frame).
* A **multi-frame** source (a cine loop, US Multi-frame Image Storage) gets a SEG built with
  pydicom by :mod:`.cine`, because highdicom 0.22 refuses a multi-frame source without a Frame of
  Reference. It follows the Segmentation IOD the same way, with one SEG frame per annotated source
  frame referenced by its frame number.

The segment is coded for its organ (:mod:`.coding`); pathology and measurements go into its
Segment Description. A submitted label is ``MANUAL``; a model's result is ``AUTOMATIC`` with an
Algorithm Identification naming SonoVLM and the model version.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from .. import __version__
from ..errors import SonoInputError
from .cine import build_multiframe_seg
from .coding import format_findings, organ_coding
from .content import MANUFACTURER, SEG_SERIES_NUMBER, SegAlgorithm, SegmentContent
from .source import number_of_frames, read_source, seg_ready_source


def _frame_masks(
    mask: np.ndarray | Mapping[int, np.ndarray], frame: int, n_frames: int, shape: tuple[int, int]
) -> dict[int, np.ndarray]:
    """``{source frame (0-based): bool (rows, cols)}``, checked against the source."""
    items = dict(mask) if isinstance(mask, Mapping) else {frame: mask}
    if not items:
        raise SonoInputError("mask", "no frame to write")
    masks: dict[int, np.ndarray] = {}
    for index, array in sorted(items.items()):
        index = int(index)
        if not 0 <= index < n_frames:
            raise SonoInputError(
                "frame", f"frame {index} is out of range: the source has {n_frames} frame(s)"
            )
        array = np.asarray(array)
        if array.shape != shape:
            raise SonoInputError(
                "mask",
                f"shape {array.shape} does not match the source image's (rows, cols) {shape}",
            )
        masks[index] = array != 0
    return masks


def segmentation_to_dicom_seg(
    source: Dataset | str | os.PathLike,
    mask: np.ndarray | Mapping[int, np.ndarray],
    organ: str,
    *,
    frame: int = 0,
    pathology: str | None = None,
    measurements: Mapping[str, Any] | None = None,
    algorithm: SegAlgorithm | None = None,
    content_creator: str | None = None,
    series_number: int = SEG_SERIES_NUMBER,
) -> Dataset:
    """A DICOM SEG of ``mask`` over ``source`` (a dataset or a DICOM file path).

    Args:
        mask: ``(rows, cols)`` (non-zero = lesion) for source frame ``frame``, or a mapping
            ``{frame (0-based): (rows, cols) mask}`` for several frames of a cine.
        organ: SonoVLM organ name; picks the segment's coding.
        frame: the source frame a single ``mask`` belongs to (0 for a single-frame source).
        pathology: ``benign``/``malignant`` or ``None``; written to the segment description.
        measurements: :meth:`sonovlm.measure.LesionMeasurement.to_dict` of the mask, or ``None``.
        algorithm: ``None`` for a submitted (manual) label; the model for an automatic result.
        content_creator: who made it (a user name, never patient data); optional.
        series_number: Series Number of the new SEG series.

    Returns:
        The SEG dataset (with file meta), ready for ``save_as`` or STOW-RS.

    Raises:
        SonoInputError: unknown organ or pathology, a mask that does not match the source, a frame
            out of range, or a source that is not a usable DICOM image.
    """
    dataset = read_source(source)
    n_frames = number_of_frames(dataset)
    shape = (int(dataset.Rows), int(dataset.Columns))
    masks = _frame_masks(mask, frame, n_frames, shape)
    content = SegmentContent(
        coding=organ_coding(organ),
        findings=format_findings(pathology, measurements),
        algorithm=algorithm,
        content_creator=content_creator,
    )
    ready = seg_ready_source(dataset)
    if n_frames > 1 or "NumberOfFrames" in dataset:
        return build_multiframe_seg(ready, masks, content, series_number=series_number)
    return _highdicom_seg(ready, masks[0], content, series_number)


def _highdicom_seg(source: Dataset, mask: np.ndarray, content: SegmentContent, series_number: int) -> Dataset:
    import highdicom as hd
    from highdicom.seg import (
        SegmentAlgorithmTypeValues,
        SegmentationTypeValues,
        SegmentDescription,
    )

    algorithm_identification = None
    if content.algorithm is not None:
        algorithm_identification = hd.AlgorithmIdentificationSequence(
            name=content.algorithm.name,
            family=codes.cid7162.ArtificialIntelligence,
            version=content.algorithm.version,
        )
    coding = content.coding
    segment = SegmentDescription(
        segment_number=1,
        segment_label=coding.organ,
        segmented_property_category=coding.category,
        segmented_property_type=coding.property_type,
        algorithm_type=(
            SegmentAlgorithmTypeValues.AUTOMATIC if content.algorithm else SegmentAlgorithmTypeValues.MANUAL
        ),
        algorithm_identification=algorithm_identification,
        anatomic_regions=[coding.anatomic_region] if coding.anatomic_region else None,
    )
    if content.findings:
        segment.SegmentDescription = content.findings
    try:
        with warnings.catch_warnings():
            # highdicom warns about odd person names quoting them: the patient's name must not
            # reach a log. Nothing else it warns about changes the object.
            warnings.simplefilter("ignore", UserWarning)
            seg = hd.seg.Segmentation(
                source_images=[source],
                pixel_array=mask.astype(np.uint8),
                segmentation_type=SegmentationTypeValues.BINARY,
                segment_descriptions=[segment],
                series_instance_uid=generate_uid(),
                series_number=series_number,
                sop_instance_uid=generate_uid(),
                instance_number=1,
                manufacturer=MANUFACTURER,
                manufacturer_model_name=MANUFACTURER,
                software_versions=__version__,
                device_serial_number="0",
                content_label=content.content_label,
                content_description=content.content_description,
                content_creator_name=content.creator_pn,
                series_description=f"SonoVLM {content.content_description}"[:64],
                omit_empty_frames=False,
            )
    except (ValueError, TypeError, AttributeError) as exc:
        raise SonoInputError("source image", f"highdicom cannot make a SEG for it: {exc}") from exc
    # General Image, type 2C: required without a Frame of Reference; highdicom 0.22 leaves it out.
    seg.PatientOrientation = source.get("PatientOrientation")
    return seg
