"""PNG, JPEG, BMP and TIFF images through load_image."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sonovlm.io import load_image

from tests.dicom_factory import bmode_frame, colour_frame


@pytest.mark.parametrize("fmt,suffix", [("PNG", ".png"), ("BMP", ".bmp"), ("TIFF", ".tif")])
def test_lossless_grey_and_rgb(tmp_path, fmt, suffix):
    grey, rgb = bmode_frame(30, 40), colour_frame(30, 40)
    Image.fromarray(grey).save(tmp_path / f"g{suffix}", format=fmt)
    Image.fromarray(rgb).save(tmp_path / f"c{suffix}", format=fmt)
    g = load_image(tmp_path / f"g{suffix}")
    c = load_image(tmp_path / f"c{suffix}")
    assert g.frames.shape == (1, 30, 40) and g.channels == 1
    np.testing.assert_array_equal(g.frames[0], grey)
    assert c.frames.shape == (1, 30, 40, 3) and c.channels == 3
    np.testing.assert_array_equal(c.frames[0], rgb)
    assert (g.modality, g.photometric, g.regions) == (None, None, [])


def test_jpeg(tmp_path):
    rgb = colour_frame(32, 48)
    Image.fromarray(rgb).save(tmp_path / "c.jpg", quality=95)
    image = load_image(tmp_path / "c.jpg")
    assert image.frames.shape == (1, 32, 48, 3)
    assert np.abs(image.frames[0].astype(int) - rgb).mean() < 2.5


def test_sixteen_bit_png_keeps_values(tmp_path):
    values = (np.arange(30 * 40).reshape(30, 40) * 50).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    image = load_image(tmp_path / "g16.png")
    np.testing.assert_array_equal(image.frames[0], values)


def test_rgba_drops_alpha_and_palette_expands(tmp_path):
    rgb = colour_frame(20, 24)
    rgba = np.concatenate([rgb, np.full((20, 24, 1), 128, np.uint8)], axis=-1)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_image(tmp_path / "a.png").frames[0], rgb)
    palette_image = Image.fromarray(rgb).quantize(colors=16)
    palette_image.save(tmp_path / "p.png")
    image = load_image(tmp_path / "p.png")
    assert image.channels == 3
    np.testing.assert_array_equal(image.frames[0], np.asarray(palette_image.convert("RGB")))


def test_multipage_tiff_pages_are_frames(tmp_path):
    pages = [Image.fromarray(bmode_frame(20, 30, seed=s, text=False)) for s in range(3)]
    pages[0].save(tmp_path / "cine.tif", save_all=True, append_images=pages[1:])
    image = load_image(tmp_path / "cine.tif")
    assert image.frames.shape == (3, 20, 30)
    np.testing.assert_array_equal(image.frames[2], np.asarray(pages[2]))


def test_content_decides_not_the_name(tmp_path):
    grey = bmode_frame(20, 30)
    Image.fromarray(grey).save(tmp_path / "really_png.dcm", format="PNG")
    np.testing.assert_array_equal(load_image(tmp_path / "really_png.dcm").frames[0], grey)
