"""The reusable test files of tests/dicom_factory.py read back as they claim."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from sonovlm.io import load_image

from tests.dicom_factory import bmode_frame, cine_us_dicom, jpeg2000_us_dicom


def test_jpeg2000_us_dicom(tmp_path):
    path = jpeg2000_us_dicom(tmp_path / "j2k.dcm", spacing_mm=(0.12, 0.1))
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000Lossless
    assert (ds.Modality, ds.Rows, ds.Columns) == ("US", 480, 640)
    image = load_image(path)
    assert image.frames.shape == (1, 480, 640)
    np.testing.assert_array_equal(image.frames[0], bmode_frame(480, 640, seed=0))
    assert image.spacing_mm == pytest.approx((0.12, 0.1))
    assert image.regions[0].bbox == (80, 24, 561, 480)
    assert image.regions[0].clipped is False


def test_jpeg2000_us_dicom_is_seeded(tmp_path):
    a = jpeg2000_us_dicom(tmp_path / "a.dcm", seed=1, rows=48, cols=64).read_bytes()
    b = jpeg2000_us_dicom(tmp_path / "b.dcm", seed=1, rows=48, cols=64).read_bytes()
    c = jpeg2000_us_dicom(tmp_path / "c.dcm", seed=2, rows=48, cols=64).read_bytes()
    assert a == b and a != c


def test_cine_us_dicom(tmp_path):
    image = load_image(cine_us_dicom(tmp_path / "cine.dcm", n_frames=4, frame_time_ms=25.0))
    assert image.frames.shape == (4, 64, 80)
    assert image.frame_time_ms == pytest.approx(25.0)
    assert image.spacing_mm == pytest.approx((0.2, 0.2))
    assert not np.array_equal(image.frames[0], image.frames[3])
