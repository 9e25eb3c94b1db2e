"""DICOM SEG writing and reading for single-frame ultrasound and cine loops."""

from __future__ import annotations

import io
import shutil
import subprocess
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.sr._cid_dict import cid_concepts
from sonovlm.dicomseg import (
    ORGAN_CODING,
    SegAlgorithm,
    format_findings,
    organ_coding,
    organ_from_codes,
    parse_findings,
    read_dicom_seg,
    segmentation_to_dicom_seg,
)
from sonovlm.dicomseg.reader import read_dicom_seg_header
from sonovlm.errors import SonoInputError
from sonovlm.organs import ORGAN_LABELS

from tests.dicom_factory import cine_us_dicom, jpeg2000_us_dicom

SAMPLES = ("ExplVR_BigEnd.dcm", "examples_palette.dcm", "examples_rgb_color.dcm")


def lesion(rows: int, cols: int, shift: int = 0) -> np.ndarray:
    """An asymmetric (L-shaped) lesion: a transpose or flip would show."""
    mask = np.zeros((rows, cols), np.uint8)
    mask[rows // 4 + shift : rows // 2 + shift, cols // 5 : cols // 2] = 1
    mask[
        rows // 2 + shift : rows // 2 + shift + max(1, rows // 8), cols // 5 : cols // 5 + max(1, cols // 10)
    ] = 1
    return mask


def round_trip(seg: pydicom.Dataset) -> pydicom.Dataset:
    buffer = io.BytesIO()
    seg.save_as(buffer, write_like_original=False)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


# -- coding ----------------------------------------------------------------------------------------


def _in_cid(code, cid: int) -> bool:
    from pydicom.sr._concepts_dict import concepts

    names = cid_concepts[cid].get(code.scheme_designator, [])
    return any(code.value in concepts[code.scheme_designator][name] for name in names)


def test_every_organ_is_coded_with_concepts_of_the_right_context_groups():
    assert set(ORGAN_CODING) == set(ORGAN_LABELS)
    for coding in ORGAN_CODING.values():
        assert _in_cid(coding.category, 7150), coding  # Segmentation Property Categories
        assert coding.category.scheme_designator == "SCT" and coding.property_type.scheme_designator == "SCT"
        if coding.anatomic_region is None:
            assert _in_cid(coding.property_type, 7192)  # Anatomical Structure types
        else:
            assert _in_cid(coding.property_type, 7159)  # Lesion Segmentation Types
            assert _in_cid(coding.anatomic_region, 4)  # Anatomic Region
    assert organ_coding("lymph_node").property_type.value == "59441001"
    assert organ_coding("thyroid_nodule").anatomic_region.value == "69748006"
    assert organ_coding("breast_lesion").anatomic_region.value == "76752008"


def test_organ_from_codes():
    for organ, coding in ORGAN_CODING.items():
        regions = [coding.anatomic_region] if coding.anatomic_region else []
        assert organ_from_codes(coding.property_type, regions) == organ
    mass = ORGAN_CODING["breast_lesion"].property_type
    assert organ_from_codes(mass, []) is None  # a mass of what?
    assert organ_from_codes(mass, [ORGAN_CODING["thyroid_nodule"].anatomic_region]) is None
    with pytest.raises(SonoInputError, match="unknown organ"):
        organ_coding("spleen")


def test_findings_round_trip_and_limits():
    measured = {
        "area_mm2": 48.21,
        "long_axis_mm": 11.3,
        "taller_than_wide": False,
        "area_px": 1234,
        "components": 2,
        "long_axis_endpoints": [[1, 2], [3, 4]],
        "short_axis_mm": None,
    }
    text = format_findings("malignant", measured)
    assert text == "pathology=malignant; area_mm2=48.21; long_axis_mm=11.3; taller_than_wide=no; area_px=1234"
    assert parse_findings(text) == (
        "malignant",
        {"area_mm2": 48.21, "long_axis_mm": 11.3, "taller_than_wide": False, "area_px": 1234},
    )
    assert parse_findings("Segmented by hand") == (None, {})
    assert format_findings(None, None) == ""
    with pytest.raises(SonoInputError, match="unknown pathology"):
        format_findings("suspicious", None)


# -- single-frame SEGs (highdicom) -----------------------------------------------------------------


@pytest.mark.parametrize("name", SAMPLES)
def test_real_samples_round_trip(test_data, name):
    path = test_data / name
    source = pydicom.dcmread(path)
    before = {k: source.get(k) for k in ("PatientID", "StudyTime", "StudyDate")}
    mask = lesion(source.Rows, source.Columns)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seg = segmentation_to_dicom_seg(
            source,
            mask,
            "thyroid_nodule",
            pathology="benign",
            measurements={"area_px": int(mask.sum())},
            content_creator="alice",
        )
    patient_name = str(source.get("PatientName") or "")
    assert not [w for w in caught if patient_name and patient_name in str(w.message)], "no name in warnings"
    assert {k: source.get(k) for k in before} == before, "the source dataset is not changed"
    read = read_dicom_seg(round_trip(seg))
    np.testing.assert_array_equal(read.mask, mask * ORGAN_LABELS["thyroid_nodule"])
    assert read.organ == "thyroid_nodule" and read.pathology == "benign"
    assert read.measurements == {"area_px": int(mask.sum())}
    assert read.source_sop_instance_uid == source.SOPInstanceUID
    assert read.source_series_instance_uid == source.SeriesInstanceUID
    assert read.study_instance_uid == source.StudyInstanceUID
    assert read.content_creator == "alice" and not read.automatic and read.frames == [0]
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert "FrameOfReferenceUID" not in seg


def test_j2k_source_and_automatic_result(tmp_path):
    path = jpeg2000_us_dicom(tmp_path / "j2k.dcm", seed=5)
    mask = lesion(480, 640)
    seg = segmentation_to_dicom_seg(
        path, mask, "breast_lesion", algorithm=SegAlgorithm(version="v7 2026-11-27")
    )
    segment = seg.SegmentSequence[0]
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    assert segment.SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == "v7 2026-11-27"
    assert segment.AnatomicRegionSequence[0].CodeValue == "76752008"
    read = read_dicom_seg(round_trip(seg))
    assert read.automatic and read.organ == "breast_lesion"
    np.testing.assert_array_equal(read.mask, mask * 2)


def test_bad_input_is_a_sono_input_error(test_data, tmp_path):
    source = test_data / "examples_rgb_color.dcm"
    with pytest.raises(SonoInputError, match="does not match"):
        segmentation_to_dicom_seg(source, np.ones((10, 10)), "lymph_node")
    with pytest.raises(SonoInputError, match="out of range"):
        segmentation_to_dicom_seg(source, lesion(240, 320), "lymph_node", frame=1)
    (tmp_path / "x.dcm").write_bytes(b"not dicom")
    with pytest.raises(SonoInputError, match="not a readable DICOM"):
        segmentation_to_dicom_seg(tmp_path / "x.dcm", lesion(2, 2), "lymph_node")
    with pytest.raises(SonoInputError, match="not a Segmentation"):
        read_dicom_seg(source)


# -- cine SEGs (pydicom, read back with highdicom) -------------------------------------------------


def test_cine_frames_are_referenced_by_number(tmp_path):
    path = cine_us_dicom(tmp_path / "cine.dcm", n_frames=6, seed=2)
    masks = {0: lesion(64, 80), 3: np.flipud(lesion(64, 80)), 5: np.zeros((64, 80), np.uint8)}
    seg = segmentation_to_dicom_seg(path, masks, "lymph_node", pathology="malignant", content_creator="bob")
    read_back = round_trip(seg)
    assert int(read_back.NumberOfFrames) == 3
    refs = [
        int(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
        for item in read_back.PerFrameFunctionalGroupsSequence
    ]
    assert refs == [1, 4, 6]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # highdicom must read it without complaint
        read = read_dicom_seg(read_back)
    assert read.frames == [0, 3, 5]
    for frame, mask in masks.items():
        np.testing.assert_array_equal(read.masks[frame], mask)
    assert read.organ == "lymph_node" and read.pathology == "malignant" and read.content_creator == "bob"
    header = read_dicom_seg_header(read_back)
    assert (
        header["frames"] == [0, 3, 5]
        and header["organ"] == "lymph_node"
        and header["pathology"] == "malignant"
    )
    with pytest.raises(SonoInputError, match="pick one"):
        _ = read.mask


def test_one_frame_of_a_cine(tmp_path):
    path = cine_us_dicom(tmp_path / "cine.dcm", n_frames=4, seed=3)
    mask = lesion(64, 80, shift=3)
    seg = segmentation_to_dicom_seg(
        path, mask, "breast_lesion", frame=2, algorithm=SegAlgorithm(version="v1")
    )
    read = read_dicom_seg(round_trip(seg))
    assert read.frames == [2] and read.automatic
    np.testing.assert_array_equal(read.mask, mask * 2)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy missing: apt-get install dicom3tools")
def test_both_builders_pass_the_dicom3tools_iod_validator(test_data, tmp_path):
    single = segmentation_to_dicom_seg(
        test_data / "examples_rgb_color.dcm", lesion(240, 320), "thyroid_nodule", pathology="benign"
    )
    cine_path = cine_us_dicom(tmp_path / "cine.dcm", n_frames=3, seed=4)
    cine = segmentation_to_dicom_seg(cine_path, {0: lesion(64, 80), 2: lesion(64, 80)}, "lymph_node")
    for name, seg in (("single", single), ("cine", cine)):
        out = tmp_path / f"{name}.seg.dcm"
        seg.save_as(out, write_like_original=False)
        report = subprocess.run(["dciodvfy", str(out)], capture_output=True, text=True, timeout=60)
        text = report.stdout + report.stderr
        errors = [line for line in text.splitlines() if line.startswith("Error")]
        assert errors == [], f"{name}: {text}"
        assert "Segmentation" in text
