"""A DICOM SEG over frames of a multi-frame ultrasound source (a cine loop), built with pydicom.

highdicom 0.22 refuses a multi-frame source without a Frame of Reference, and ultrasound has none.
This module writes the same object by hand, module by module, following the Segmentation IOD
(PS3.3 A.51) the way highdicom does for a single frame without a Frame of Reference:

* Patient, General Study, General Series / Segmentation Series, General Equipment / Enhanced
  General Equipment, General Image, Segmentation Image, SOP Common (copied or fixed values);
* Image Pixel: BINARY, 1 bit, frames bit-packed back to back (PS3.5 8.1.1);
* Multi-frame Functional Groups: per SEG frame a Derivation Image Sequence whose Source Image
  Sequence names the source instance **and its frame number** (Referenced Frame Number), a Frame
  Content Sequence and a Segment Identification Sequence; shared groups empty (no plane position
  or orientation without a Frame of Reference);
* Multi-frame Dimension: segment number, then the source frame (Temporal Position Index of the
  Frame Content Sequence, = the 1-based source frame number of this cine);
* Common Instance Reference: the source series and instance.

:func:`sonovlm.dicomseg.reader.read_dicom_seg` reads it back with highdicom
(``get_pixels_by_source_frame``), which is how the tests check it.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.pixel_data_handlers.numpy_handler import pack_bits
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from .. import __version__
from .content import SegmentContent

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"

#: Tags used as dimension index pointers / functional group pointers.
_REFERENCED_SEGMENT_NUMBER = 0x0062000B
_SEGMENT_IDENTIFICATION_SEQUENCE = 0x0062000A
_TEMPORAL_POSITION_INDEX = 0x00209128
_FRAME_CONTENT_SEQUENCE = 0x00209111


def _code_item(code) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def _segment_item(content: SegmentContent) -> Dataset:
    coding = content.coding
    segment = Dataset()
    segment.SegmentNumber = 1
    segment.SegmentLabel = coding.organ
    if content.findings:
        segment.SegmentDescription = content.findings
    segment.SegmentedPropertyCategoryCodeSequence = Sequence([_code_item(coding.category)])
    segment.SegmentedPropertyTypeCodeSequence = Sequence([_code_item(coding.property_type)])
    if coding.anatomic_region is not None:
        segment.AnatomicRegionSequence = Sequence([_code_item(coding.anatomic_region)])
    if content.algorithm is None:
        segment.SegmentAlgorithmType = "MANUAL"
    else:
        segment.SegmentAlgorithmType = "AUTOMATIC"
        segment.SegmentAlgorithmName = content.algorithm.name
        algorithm = Dataset()
        algorithm.AlgorithmFamilyCodeSequence = Sequence([_code_item(codes.cid7162.ArtificialIntelligence)])
        algorithm.AlgorithmName = content.algorithm.name
        algorithm.AlgorithmVersion = content.algorithm.version
        segment.SegmentationAlgorithmIdentificationSequence = Sequence([algorithm])
    return segment


def _source_frame_reference(source: Dataset, frame_number: int) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    ref.ReferencedFrameNumber = frame_number
    ref.SpatialLocationsPreserved = "YES"
    ref.PurposeOfReferenceCodeSequence = Sequence(
        [_code_item(codes.cid7202.SourceImageForImageProcessingOperation)]
    )
    return ref


def _per_frame_item(source: Dataset, frame_number: int) -> Dataset:
    derivation = Dataset()
    derivation.DerivationCodeSequence = Sequence([_code_item(codes.cid7203.Segmentation)])
    derivation.SourceImageSequence = Sequence([_source_frame_reference(source, frame_number)])

    frame_content = Dataset()
    frame_content.DimensionIndexValues = [1, frame_number]
    frame_content.TemporalPositionIndex = frame_number

    segment_id = Dataset()
    segment_id.ReferencedSegmentNumber = 1

    item = Dataset()
    item.DerivationImageSequence = Sequence([derivation])
    item.FrameContentSequence = Sequence([frame_content])
    item.SegmentIdentificationSequence = Sequence([segment_id])
    return item


def _dimension_index(organization_uid: str, pointer: int, group: int, label: str) -> Dataset:
    item = Dataset()
    item.DimensionOrganizationUID = organization_uid
    item.DimensionIndexPointer = pointer
    item.FunctionalGroupPointer = group
    item.DimensionDescriptionLabel = label
    return item


def build_multiframe_seg(
    source: Dataset,
    masks: dict[int, np.ndarray],
    content: SegmentContent,
    *,
    series_number: int,
) -> FileDataset:
    """The SEG of ``masks`` ``{source frame (0-based): bool (rows, cols)}`` over a cine ``source``.

    ``source`` must already be fixed by :func:`~sonovlm.dicomseg.source.seg_ready_source`; masks
    are checked by the caller (:func:`~sonovlm.dicomseg.writer.segmentation_to_dicom_seg`).
    """
    import datetime

    frame_numbers = [index + 1 for index in sorted(masks)]
    stack = np.stack([masks[index] for index in sorted(masks)]).astype(np.uint8)
    rows, cols = stack.shape[1:]
    now = datetime.datetime.now()

    sop_instance_uid = generate_uid()
    meta = FileMetaDataset()
    meta.FileMetaInformationGroupLength = 0  # pydicom writes the real length
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = SEGMENTATION_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = FileDataset("", Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.is_little_endian = True
    ds.is_implicit_VR = False

    # SOP Common
    ds.SOPClassUID = SEGMENTATION_STORAGE
    ds.SOPInstanceUID = sop_instance_uid
    ds.SpecificCharacterSet = source.get("SpecificCharacterSet", "ISO_IR 100")
    # Patient and General Study (copied: the SEG belongs to the source's patient and study)
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "StudyID",
        "AccessionNumber",
        "ReferringPhysicianName",
    ):
        setattr(ds, keyword, source.get(keyword))
    # General Series / Segmentation Series
    ds.Modality = "SEG"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = series_number
    ds.SeriesDescription = f"SonoVLM {content.content_description}"[:64]
    # General Equipment / Enhanced General Equipment
    ds.Manufacturer = "SonoVLM"
    ds.ManufacturerModelName = "SonoVLM"
    ds.DeviceSerialNumber = "0"
    ds.SoftwareVersions = __version__
    # General Image / Segmentation Image
    ds.InstanceNumber = 1
    ds.PatientOrientation = source.get("PatientOrientation")  # type 2C: no Frame of Reference
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S.%f")
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.ContentLabel = content.content_label
    ds.ContentDescription = content.content_description
    ds.ContentCreatorName = content.creator_pn
    ds.SegmentationType = "BINARY"
    ds.SegmentsOverlap = "NO"
    ds.SegmentSequence = Sequence([_segment_item(content)])
    # Image Pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(rows), int(cols)
    ds.BitsAllocated = 1
    ds.BitsStored = 1
    ds.HighBit = 0
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "00"
    ds.NumberOfFrames = len(frame_numbers)
    ds.PixelData = pack_bits(stack.ravel())
    ds["PixelData"].VR = "OB"
    # Multi-frame Functional Groups and Dimension
    ds.SharedFunctionalGroupsSequence = Sequence([Dataset()])
    ds.PerFrameFunctionalGroupsSequence = Sequence([_per_frame_item(source, n) for n in frame_numbers])
    organization_uid = generate_uid()
    organization = Dataset()
    organization.DimensionOrganizationUID = organization_uid
    ds.DimensionOrganizationSequence = Sequence([organization])
    ds.DimensionIndexSequence = Sequence(
        [
            _dimension_index(
                organization_uid,
                _REFERENCED_SEGMENT_NUMBER,
                _SEGMENT_IDENTIFICATION_SEQUENCE,
                "Segment Number",
            ),
            _dimension_index(
                organization_uid, _TEMPORAL_POSITION_INDEX, _FRAME_CONTENT_SEQUENCE, "Source Frame Number"
            ),
        ]
    )
    # Common Instance Reference, and the derivation summary highdicom also writes
    instance = Dataset()
    instance.ReferencedSOPClassUID = source.SOPClassUID
    instance.ReferencedSOPInstanceUID = source.SOPInstanceUID
    series = Dataset()
    series.SeriesInstanceUID = source.SeriesInstanceUID
    series.ReferencedInstanceSequence = Sequence([instance])
    ds.ReferencedSeriesSequence = Sequence([series])
    ds.SourceImageSequence = Sequence([_source_frame_reference(source, n) for n in frame_numbers])
    return ds
