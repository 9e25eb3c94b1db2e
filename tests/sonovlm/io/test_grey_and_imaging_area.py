"""UltrasoundImage.grey() and the imaging area that keeps burned-in text from models."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sonovlm.errors import SonoInputError
from sonovlm.io import UltrasoundImage, UltrasoundRegion, load_image
from sonovlm.io.imaging_area import estimate_imaging_bbox

from tests.dicom_factory import RegionSpec, bmode_frame, sector_mask, us_dataset, write_dataset


def _box_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def test_grey_of_rgb_is_bt601_luma():
    rgb = np.zeros((2, 2, 3, 3), np.uint8)
    rgb[0, 0, 0] = (255, 0, 0)
    rgb[0, 0, 1] = (0, 255, 0)
    rgb[0, 0, 2] = (0, 0, 255)
    rgb[1] = 100
    image = UltrasoundImage(rgb, "x", channels=3)
    grey = image.grey()
    assert grey.dtype == np.float32 and grey.shape == (2, 2, 3)
    np.testing.assert_allclose(grey[0, 0], [0.299 * 255, 0.587 * 255, 0.114 * 255], rtol=1e-5)
    np.testing.assert_allclose(image.grey(1), np.full((2, 3), 100.0), rtol=1e-5)


def test_grey_of_grey_keeps_stored_range():
    frames = np.array([[[0, 4095]], [[7, 9]]], np.uint16)
    image = UltrasoundImage(frames, "x")
    np.testing.assert_array_equal(image.grey(0), [[0.0, 4095.0]])
    assert image.grey().shape == (2, 1, 2)


@pytest.mark.parametrize("frame", [2, -1])
def test_grey_frame_out_of_range(frame):
    image = UltrasoundImage(np.zeros((2, 3, 3), np.uint8), "cine.dcm")
    with pytest.raises(SonoInputError, match="cine.dcm: frame"):
        image.grey(frame)


def test_imaging_bbox_excludes_burned_in_text_outside_the_sector(tmp_path):
    rows, cols = 240, 320
    frame = bmode_frame(rows, cols, seed=1)  # has "ID 1234" top left and ruler ticks at the right
    # more burned-in patient details in the bottom-left corner, outside the sector
    canvas = Image.fromarray(frame)
    from PIL import ImageDraw

    ImageDraw.Draw(canvas).text((2, rows - 11), "DOE^JANE 1970", fill=255)
    frame = np.asarray(canvas)
    text_pixels = (frame > 0) & ~sector_mask(rows, cols)
    assert text_pixels.sum() > 50  # the test image really has text outside the sector

    Image.fromarray(frame).save(tmp_path / "us.png")
    image = load_image(tmp_path / "us.png")
    assert image.regions == []
    x0, y0, x1, y1 = image.imaging_bbox()
    expected = _box_of(sector_mask(rows, cols))
    assert np.abs(np.subtract((x0, y0, x1, y1), expected)).max() <= 3
    inside = np.zeros_like(text_pixels)
    inside[y0:y1, x0:x1] = True
    assert not inside[text_pixels].any()  # no burned-in text reaches the crop
    crop = image.crop_to_imaging_area()
    assert crop.shape == (1, y1 - y0, x1 - x0)


def test_imaging_bbox_of_cine_uses_all_frames():
    frames = np.zeros((3, 60, 80), np.uint8)
    frames[0, 10:30, 10:40] = 200
    frames[1, 20:50, 30:70] = 200  # the area moves: the union is the imaging area
    frames[2, 10:50, 10:70] = 0
    assert estimate_imaging_bbox(frames.astype(np.float32)) == (10, 10, 70, 50)


def test_imaging_bbox_blank_image_is_whole_image():
    assert UltrasoundImage(np.zeros((1, 20, 30), np.uint8), "x").imaging_bbox() == (0, 0, 30, 20)


def test_imaging_bbox_prefers_the_main_region(tmp_path):
    ds = us_dataset(bmode_frame(60, 80), regions=[RegionSpec((5, 6, 44, 50), spacing_mm=(0.1, 0.1))])
    image = load_image(write_dataset(ds, tmp_path / "r.dcm"))
    assert image.imaging_bbox() == (5, 6, 45, 51)
    image = UltrasoundImage(np.zeros((1, 60, 80), np.uint8), "x",
                            regions=[UltrasoundRegion((1, 2, 3, 4), None)])
    assert image.imaging_bbox() == (1, 2, 3, 4)
