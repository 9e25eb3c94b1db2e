"""NIfTI and NRRD images as 3D Slicer writes them: x fastest at the file, (frames, rows, cols) out."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from sonovlm.errors import SonoInputError
from sonovlm.io import load_image

from tests.dicom_factory import bmode_frame, colour_frame
from tests.sonovlm.io.slicer_files import slicer_nifti, slicer_nrrd

ROWS, COLS = 30, 44  # not square: a transposed read cannot pass


@pytest.fixture(scope="module")
def grey() -> np.ndarray:
    return bmode_frame(ROWS, COLS, seed=7)


@pytest.mark.parametrize("space_header", [True, False], ids=["space-header", "no-space-header"])
@pytest.mark.parametrize("one_slice", [True, False], ids=["one-slice", "2d"])
def test_nrrd_grey(tmp_path, grey, space_header, one_slice):
    path = slicer_nrrd(tmp_path / "g.nrrd", grey, spacing_mm=(0.3, 0.15), space_header=space_header,
                       one_slice=one_slice)
    image = load_image(path)
    assert image.frames.shape == (1, ROWS, COLS)
    np.testing.assert_array_equal(image.frames[0], grey)
    assert (image.modality, image.photometric, image.channels) == (None, None, 1)
    assert image.spacing_mm == pytest.approx((0.3, 0.15))
    assert image.regions[0].bbox == (0, 0, COLS, ROWS)


def test_nrrd_without_any_spacing_or_with_slicer_default_is_uncalibrated(tmp_path, grey):
    image = load_image(slicer_nrrd(tmp_path / "a.nrrd", grey, spacing_mm=None, space_header=False))
    assert image.spacing_mm is None and image.regions == []
    image = load_image(slicer_nrrd(tmp_path / "b.nrrd", grey, spacing_mm=(1.0, 1.0)))
    assert image.spacing_mm is None


def test_nrrd_raw_encoding_and_16_bit(tmp_path):
    values = (np.arange(ROWS * COLS).reshape(ROWS, COLS) * 40).astype(np.uint16)
    image = load_image(slicer_nrrd(tmp_path / "r.nrrd", values, gzip_data=False))
    np.testing.assert_array_equal(image.frames[0], values)


@pytest.mark.parametrize("kind", ["vector", "RGB-color"])
def test_nrrd_rgb_vector_volume(tmp_path, kind):
    rgb = colour_frame(ROWS, COLS)
    image = load_image(slicer_nrrd(tmp_path / "c.nrrd", rgb, components=kind, spacing_mm=(0.2, 0.2)))
    assert image.frames.shape == (1, ROWS, COLS, 3)
    assert image.channels == 3
    np.testing.assert_array_equal(image.frames[0], rgb)
    assert image.spacing_mm == pytest.approx((0.2, 0.2))


def test_nrrd_slices_are_frames(tmp_path):
    import nrrd

    frames = np.stack([bmode_frame(ROWS, COLS, seed=s, text=False) for s in range(3)])
    # pynrrd's default (Fortran) order is x-first: (cols, rows, slices)
    nrrd.write(str(tmp_path / "v.nrrd"), frames.transpose(2, 1, 0), {"kinds": ["domain"] * 3})
    image = load_image(tmp_path / "v.nrrd")
    np.testing.assert_array_equal(image.frames, frames)


def test_nifti_as_slicer_writes_it(tmp_path, grey):
    image = load_image(slicer_nifti(tmp_path / "g.nii.gz", grey, spacing_mm=(0.25, 0.125)))
    assert image.frames.shape == (1, ROWS, COLS)
    np.testing.assert_array_equal(image.frames[0], grey)
    assert image.spacing_mm == pytest.approx((0.25, 0.125))
    image = load_image(slicer_nifti(tmp_path / "g.nii", grey))
    np.testing.assert_array_equal(image.frames[0], grey)
    assert image.spacing_mm is None


def test_nifti_2d_and_rgb24(tmp_path, grey):
    nib.save(nib.Nifti1Image(grey.T.copy(), np.eye(4)), str(tmp_path / "flat.nii"))
    np.testing.assert_array_equal(load_image(tmp_path / "flat.nii").frames[0], grey)

    rgb = colour_frame(ROWS, COLS)
    rgb24 = np.zeros((COLS, ROWS, 1), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    for index, name in enumerate("RGB"):
        rgb24[name] = rgb[..., index].T[:, :, None]
    nib.save(nib.Nifti1Image(rgb24, np.eye(4)), str(tmp_path / "rgb.nii"))
    image = load_image(tmp_path / "rgb.nii")
    assert image.channels == 3
    np.testing.assert_array_equal(image.frames[0], rgb)


def test_nifti_time_axis_is_frames(tmp_path):
    frames = np.stack([bmode_frame(ROWS, COLS, seed=s, text=False) for s in range(4)])
    data = frames.transpose(2, 1, 0)[:, :, None, :]  # (x, y, z=1, t)
    nib.save(nib.Nifti1Image(data.copy(), np.eye(4)), str(tmp_path / "cine.nii.gz"))
    np.testing.assert_array_equal(load_image(tmp_path / "cine.nii.gz").frames, frames)


def test_corrupt_nrrd_and_nifti(tmp_path):
    bad = tmp_path / "bad.nrrd"
    bad.write_bytes(b"NRRD0004\ntype: uchar\ndimension: 2\nsizes: 10 10\nencoding: raw\n\n" + b"\x00" * 20)
    with pytest.raises(SonoInputError, match="bad.nrrd"):
        load_image(bad)
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00not really gzip")
    with pytest.raises(SonoInputError, match="broken.nii.gz"):
        load_image(broken)


def test_nifti_vector_rgb(tmp_path):
    """Slicer's vector volumes in NIfTI: components on the fifth axis, (x, y, z=1, t=1, 3)."""
    rgb = colour_frame(ROWS, COLS)
    data = rgb.transpose(1, 0, 2)[:, :, None, None, :].copy()
    image = nib.Nifti1Image(data, np.eye(4))
    image.header.set_intent("vector")
    nib.save(image, str(tmp_path / "vec.nii.gz"))
    loaded = load_image(tmp_path / "vec.nii.gz")
    assert loaded.frames.shape == (1, ROWS, COLS, 3)
    np.testing.assert_array_equal(loaded.frames[0], rgb)


def test_seg_nrrd_layers_keep_spacing(tmp_path):
    layers = np.zeros((ROWS, COLS, 2), np.uint8)
    layers[2:5, 3:9, 0] = 1
    layers[4:8, 6:12, 1] = 2
    path = slicer_nrrd(tmp_path / "s.seg.nrrd", layers, components="list", spacing_mm=(0.4, 0.2),
                       extra={"Segment0_ID": "a", "Segment1_ID": "b"})
    image = load_image(path)
    assert image.frames.shape == (1, ROWS, COLS)
    np.testing.assert_array_equal(image.frames[0], layers.max(axis=-1))
    assert image.spacing_mm == pytest.approx((0.4, 0.2))
