"""Ultrasound regions: boxes, calibration, clipping to the pixel data, the main region."""

from __future__ import annotations

import numpy as np
import pytest
from sonovlm.io import UltrasoundImage, UltrasoundRegion, load_image
from sonovlm.io.regions import clip_box

from tests.dicom_factory import RegionSpec, bmode_frame, us_dataset, write_dataset

ROWS, COLS = 60, 80


def _image_with(tmp_path, *regions: RegionSpec):
    ds = us_dataset(bmode_frame(ROWS, COLS), regions=list(regions))
    return load_image(write_dataset(ds, tmp_path / "regions.dcm"))


def test_calibrated_region_box_is_exclusive_and_spacing_in_mm(tmp_path):
    image = _image_with(tmp_path, RegionSpec((10, 5, 69, 54), spacing_mm=(0.25, 0.25)))
    (region,) = image.regions
    assert region.bbox == (10, 5, 70, 55)  # DICOM max corners are inclusive
    assert region.spacing_mm == pytest.approx((0.25, 0.25))
    assert region.clipped is False
    assert region.data_type == 1
    assert image.spacing_mm == pytest.approx((0.25, 0.25))
    assert image.imaging_bbox() == (10, 5, 70, 55)


def test_anisotropic_spacing_is_row_then_column(tmp_path):
    # PhysicalDeltaY = 0.03 cm (rows), PhysicalDeltaX = 0.012 cm (columns)
    image = _image_with(tmp_path, RegionSpec((0, 0, COLS - 1, ROWS - 1), spacing_mm=(0.3, 0.12)))
    assert image.spacing_mm == pytest.approx((0.3, 0.12))
    import pydicom

    item = pydicom.dcmread(tmp_path / "regions.dcm").SequenceOfUltrasoundRegions[0]
    assert (item.PhysicalDeltaY, item.PhysicalDeltaX) == pytest.approx((0.03, 0.012))


def test_whole_image_region_is_not_clipped(tmp_path):
    image = _image_with(tmp_path, RegionSpec((0, 0, COLS - 1, ROWS - 1), spacing_mm=(0.2, 0.2)))
    assert image.regions[0].bbox == (0, 0, COLS, ROWS)
    assert image.regions[0].clipped is False


def test_units_other_than_centimetres_give_no_spacing(tmp_path):
    # units 4 = seconds (a Doppler or M-mode strip): the region is kept, uncalibrated.
    image = _image_with(tmp_path, RegionSpec((0, 0, 39, 29), spacing_mm=(0.2, 0.2), units=4))
    assert image.regions[0].spacing_mm is None
    assert image.spacing_mm is None


def test_region_reaching_outside_is_clipped_and_loses_spacing(tmp_path):
    image = _image_with(tmp_path, RegionSpec((20, 10, 120, 90), spacing_mm=(0.2, 0.2)))
    (region,) = image.regions
    assert region.bbox == (20, 10, COLS, ROWS)
    assert region.clipped is True
    assert region.spacing_mm is None
    assert image.spacing_mm is None


def test_region_wholly_outside_is_dropped(tmp_path):
    image = _image_with(
        tmp_path,
        RegionSpec((0, 0, 39, 29), spacing_mm=(0.2, 0.2)),
        RegionSpec((100, 70, 150, 90), spacing_mm=(0.2, 0.2)),
    )
    assert [r.bbox for r in image.regions] == [(0, 0, 40, 30)]
    assert image.spacing_mm == pytest.approx((0.2, 0.2))


def test_real_palette_sample_regions_written_for_the_uncropped_image(test_data):
    """350x800 pixel data; regions [120,60,800,518] (B-mode) and [176,522,743,576] (Doppler)."""
    image = load_image(test_data / "examples_palette.dcm")
    assert (image.height, image.width) == (350, 800)
    # The first reaches past the last column (800 inclusive) and row: clipped, spacing dropped.
    # The second starts below the last row: dropped.
    assert image.regions == [UltrasoundRegion(bbox=(120, 60, 800, 350), spacing_mm=None, clipped=True,
                                              data_type=1)]
    assert image.spacing_mm is None
    assert image.imaging_bbox() == (120, 60, 800, 350)


def test_main_region_prefers_tissue_then_area():
    frames = np.zeros((1, 100, 100), np.uint8)
    doppler = UltrasoundRegion((0, 0, 100, 60), (0.5, 0.5), data_type=10)
    small_tissue = UltrasoundRegion((0, 60, 50, 100), (0.1, 0.1), data_type=1)
    big_tissue = UltrasoundRegion((50, 60, 100, 100), (0.2, 0.2), data_type=1)
    image = UltrasoundImage(frames, "x", regions=[doppler, small_tissue, big_tissue])
    assert image.main_region is small_tissue  # equal areas: the first in the file
    big_tissue = UltrasoundRegion((40, 60, 100, 100), (0.2, 0.2), data_type=1)
    image = UltrasoundImage(frames, "x", regions=[doppler, small_tissue, big_tissue])
    assert image.main_region is big_tissue
    assert image.spacing_mm == (0.2, 0.2)
    image = UltrasoundImage(frames, "x", regions=[doppler])
    assert image.main_region is doppler
    assert UltrasoundImage(frames, "x").main_region is None
    assert UltrasoundImage(frames, "x").spacing_mm is None


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        ((0, 0, 10, 10), ((0, 0, 10, 10), False)),
        ((-5, 2, 10, 10), ((0, 2, 10, 10), True)),
        ((5, 5, 50, 50), ((5, 5, 20, 10), True)),
        ((20, 0, 30, 10), (None, True)),
        ((0, 10, 5, 20), (None, True)),
    ],
)
def test_clip_box(box, expected):
    assert clip_box(box, rows=10, cols=20) == expected
