"""Write a simulated frame as an ultrasound DICOM with one calibrated B-mode region.

US Image Storage, explicit VR little endian, 8-bit MONOCHROME2, uncompressed. The
SequenceOfUltrasoundRegions item gives the region's box (``RegionLocationMaxX1/Y1`` are inclusive,
as the standard defines them) and its pixel size in centimetres (``PhysicalUnitsX/YDirection`` 3),
so readers get ``spacing_mm``. Dates and times are fixed and UIDs derive from the caller's
entropy sources: the same inputs give the same bytes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, generate_uid

from .simulate import SimulationMeta

#: Synthetic patient name used for every simulated study.
PATIENT_NAME = "SONOVLM^SAMPLE"
_FIXED_DATE = "20240101"
_FIXED_TIME = "090000"
_BODY_PARTS = {"lymph_node": "NECK", "breast_lesion": "BREAST", "thyroid_nodule": "THYROID"}


@dataclass(frozen=True)
class DicomIdentity:
    """Identifiers of one simulated study (one patient, study, series and instance per case)."""

    patient_id: str
    study_uid: str
    series_uid: str
    sop_instance_uid: str

    @classmethod
    def derive(cls, patient_id: str, entropy: Sequence[str]) -> DicomIdentity:
        """UIDs from ``entropy`` (``pydicom.uid.generate_uid(entropy_srcs=...)`` is deterministic)."""
        base = list(entropy)
        return cls(
            patient_id=patient_id,
            study_uid=generate_uid(entropy_srcs=[*base, "study"]),
            series_uid=generate_uid(entropy_srcs=[*base, "series"]),
            sop_instance_uid=generate_uid(entropy_srcs=[*base, "instance"]),
        )


def ultrasound_dataset(
    image: np.ndarray, meta: SimulationMeta, identity: DicomIdentity, description: str
) -> Dataset:
    """The DICOM dataset (with file meta) of one ``(rows, cols)`` uint8 frame."""
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"expected a (rows, cols) uint8 frame, got {image.dtype} {image.shape}")
    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    file_meta.MediaStorageSOPInstanceUID = identity.sop_instance_uid
    file_meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = file_meta
    ds.is_little_endian = True
    ds.is_implicit_VR = False
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.SOPClassUID = UltrasoundImageStorage
    ds.SOPInstanceUID = identity.sop_instance_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = _FIXED_DATE
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = _FIXED_TIME
    ds.AccessionNumber = ""
    ds.Modality = "US"
    ds.Manufacturer = "SonoVLM"
    ds.ManufacturerModelName = "sonovlm sample-data simulation"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = description
    ds.SeriesDescription = "Simulated B-mode"
    ds.PatientName = PATIENT_NAME
    ds.PatientID = identity.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.BodyPartExamined = _BODY_PARTS[meta.organ]
    ds.StudyInstanceUID = identity.study_uid
    ds.SeriesInstanceUID = identity.series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"

    x0, y0, x1, y1 = meta.region_bbox
    region = Dataset()
    region.RegionSpatialFormat = 1  # 2D
    region.RegionDataType = 1  # tissue (B-mode)
    region.RegionFlags = 0
    region.RegionLocationMinX0 = x0
    region.RegionLocationMinY0 = y0
    region.RegionLocationMaxX1 = x1 - 1
    region.RegionLocationMaxY1 = y1 - 1
    region.ReferencePixelX0 = (x1 - x0) // 2
    region.ReferencePixelY0 = 0
    region.PhysicalUnitsXDirection = 3  # cm
    region.PhysicalUnitsYDirection = 3
    region.ReferencePixelPhysicalValueX = 0.0
    region.ReferencePixelPhysicalValueY = 0.0
    region.PhysicalDeltaX = meta.spacing_mm[1] / 10.0
    region.PhysicalDeltaY = meta.spacing_mm[0] / 10.0
    region.TransducerFrequency = round(meta.frequency_mhz * 1000)  # kHz
    ds.SequenceOfUltrasoundRegions = DicomSequence([region])

    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = image.shape
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    pixel_bytes = np.ascontiguousarray(image).tobytes()
    ds.PixelData = pixel_bytes + b"\0" * (len(pixel_bytes) % 2)  # even length, as DICOM requires
    return ds


def write_ultrasound_dicom(
    path: str | os.PathLike,
    image: np.ndarray,
    meta: SimulationMeta,
    identity: DicomIdentity,
    description: str = "Simulated ultrasound",
) -> None:
    """Write ``image`` (``(rows, cols)`` uint8) to ``path`` as a US Image Storage DICOM file."""
    ultrasound_dataset(image, meta, identity, description).save_as(os.fspath(path), write_like_original=False)
