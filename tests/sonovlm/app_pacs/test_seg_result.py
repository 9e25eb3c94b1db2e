"""``result_format: "dicom_seg"``: an auto-segmentation result as a DICOM SEG over its input."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from sonovlm.app.seg_result import wants_dicom_seg, write_result_seg
from sonovlm.dicomseg import read_dicom_seg
from sonovlm.errors import SonoInputError
from sonovlm.io import save_mask

from tests.dicom_factory import cine_us_dicom


def test_wants_dicom_seg():
    assert wants_dicom_seg({}) is False
    assert wants_dicom_seg({"result_format": "mask"}) is False
    assert wants_dicom_seg({"result_format": "dicom_seg"}) is True
    assert wants_dicom_seg({"result_format": ["dicom_seg", "mask"]}) is True  # a client's config list
    with pytest.raises(SonoInputError, match="result_format"):
        wants_dicom_seg({"result_format": "nifti"})


def test_result_seg_over_a_real_sample(test_data):
    mask = np.zeros((350, 800), np.uint8)
    mask[100:180, 300:420] = 3
    mask[180:200, 300:320] = 3
    path = write_result_seg(
        test_data / "examples_palette.dcm",
        mask,
        "thyroid_nodule",
        frame=0,
        model_version="abc123@2026-11-27T10:00:00",
        measurements={"area_px": int((mask != 0).sum()), "long_axis_px": 140.2},
    )
    read = read_dicom_seg(path)
    np.testing.assert_array_equal(read.mask, mask)
    assert read.automatic and read.organ == "thyroid_nodule"
    assert read.measurements == {"area_px": int((mask != 0).sum()), "long_axis_px": 140.2}
    algorithm = pydicom.dcmread(path).SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmVersion == "abc123@2026-11-27T10:00:00"


def test_result_seg_of_a_cine_frame(tmp_path):
    cine = cine_us_dicom(tmp_path / "cine.dcm", n_frames=4, seed=8)
    mask = np.zeros((64, 80), np.uint8)
    mask[10:30, 20:25] = 1
    read = read_dicom_seg(write_result_seg(cine, mask, "lymph_node", frame=3, model_version="v"))
    assert read.frames == [3]
    np.testing.assert_array_equal(read.mask, mask)


def test_result_seg_needs_a_dicom_input(tmp_path):
    png = tmp_path / "image.png"
    save_mask(png, np.ones((8, 8), np.uint8))
    with pytest.raises(SonoInputError, match="needs a DICOM input"):
        write_result_seg(png, np.ones((8, 8), np.uint8), "lymph_node", frame=0, model_version="v")
