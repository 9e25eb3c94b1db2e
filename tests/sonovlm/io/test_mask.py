"""load_mask from every format, value rules, size checks; save_mask as Slicer reads it."""

from __future__ import annotations

import nibabel as nib
import nrrd
import numpy as np
import pytest
from PIL import Image
from sonovlm.errors import SonoInputError
from sonovlm.io import load_mask, save_mask
from sonovlm.io.mask import to_uint8_labels

from tests.sonovlm.io.slicer_files import slicer_nifti, slicer_nrrd

ROWS, COLS = 24, 36


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    """An ellipse of label 3 (thyroid nodule) beside a square of label 1, off-centre."""
    yy, xx = np.mgrid[0:ROWS, 0:COLS]
    mask = np.zeros((ROWS, COLS), np.uint8)
    mask[((yy - 8) / 5.0) ** 2 + ((xx - 22) / 9.0) ** 2 <= 1] = 3
    mask[15:20, 2:6] = 1
    return mask


def test_png_grey_keeps_values(tmp_path, labels):
    Image.fromarray(labels).save(tmp_path / "m.png")
    out = load_mask(tmp_path / "m.png", shape=(ROWS, COLS))
    assert out.dtype == np.uint8 and out.shape == (ROWS, COLS)
    np.testing.assert_array_equal(out, labels)


def test_rgb_mask_any_channel_non_zero(tmp_path, labels):
    rgb = np.zeros((ROWS, COLS, 3), np.uint8)
    rgb[labels == 3] = (0, 0, 200)  # blue only
    rgb[labels == 1] = (255, 0, 0)  # red only
    Image.fromarray(rgb).save(tmp_path / "m.png")
    Image.fromarray(rgb).save(tmp_path / "m.bmp")
    Image.fromarray(rgb).save(tmp_path / "m.tif")
    for name in ("m.png", "m.bmp", "m.tif"):
        out = load_mask(tmp_path / name)
        np.testing.assert_array_equal(out > 0, labels > 0)
        assert out[labels == 3].min() == 200


def test_jpeg_mask_ignores_compression_noise(tmp_path, labels):
    Image.fromarray((labels > 0).astype(np.uint8) * 255).save(tmp_path / "m.jpg", quality=90)
    out = load_mask(tmp_path / "m.jpg")
    assert ((out > 0) != (labels > 0)).sum() <= 0.02 * labels.size  # only at lossy edges


@pytest.mark.parametrize("space_header", [True, False])
def test_slicer_one_slice_nrrd_labelmap(tmp_path, labels, space_header):
    path = slicer_nrrd(tmp_path / "m.nrrd", labels, spacing_mm=(0.2, 0.1), space_header=space_header)
    np.testing.assert_array_equal(load_mask(path, shape=(ROWS, COLS)), labels)


def test_seg_nrrd_cropped_to_extent_is_placed_back(tmp_path, labels):
    crop = labels[3:14, 12:33]
    path = slicer_nrrd(
        tmp_path / "s.seg.nrrd",
        crop,
        extra={"Segment0_ID": "Segment_1", "Segmentation_ReferenceImageExtentOffset": "12 3 0"},
    )
    out = load_mask(path, shape=(ROWS, COLS))
    expected = np.zeros_like(labels)
    expected[3:14, 12:33] = crop
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(load_mask(path), crop)  # no image size: as stored


def test_seg_nrrd_layers_merge(tmp_path, labels):
    layers = np.stack([(labels == 1).astype(np.uint8), (labels == 3).astype(np.uint8) * 3], axis=-1)
    # Slicer's .seg.nrrd with overlapping segments: a 'list' axis of layers, fastest in the file.
    path = slicer_nrrd(tmp_path / "layers.seg.nrrd", layers, components="list",
                       extra={"Segment0_ID": "Segment_1", "Segment0_Layer": "0", "Segment1_Layer": "1"})
    np.testing.assert_array_equal(load_mask(path, shape=(ROWS, COLS)), labels)


def test_list_axis_without_segmentation_fields_is_frames(tmp_path, labels):
    layers = np.stack([labels, labels], axis=-1)
    path = slicer_nrrd(tmp_path / "seq.nrrd", layers, components="list")  # a Slicer sequence
    with pytest.raises(SonoInputError, match="2 slices"):
        load_mask(path)


def test_nifti_mask(tmp_path, labels):
    path = slicer_nifti(tmp_path / "m.nii.gz", labels.astype(np.int16), spacing_mm=(0.2, 0.2))
    out = load_mask(path, shape=(ROWS, COLS))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, labels)


def test_numpy_mask(tmp_path, labels):
    np.save(tmp_path / "m.npy", labels.astype(bool))
    np.testing.assert_array_equal(load_mask(tmp_path / "m.npy"), (labels > 0).astype(np.uint8))
    np.save(tmp_path / "f.npy", labels[None].astype(np.float32))
    np.testing.assert_array_equal(load_mask(tmp_path / "f.npy"), labels)


def test_values_are_cast_safely():
    values = np.array([[0, 1, 3, 255, 256, 1000], [-1, 0.5, np.nan, 2.0, 0.0, -0.0]])
    np.testing.assert_array_equal(
        to_uint8_labels(values), np.array([[0, 1, 3, 255, 255, 255], [255, 255, 0, 2, 0, 0]], np.uint8)
    )
    # 16-bit masks with 65535 foreground stay foreground (a plain cast would keep 255, 256 -> 0)
    np.testing.assert_array_equal(to_uint8_labels(np.array([[256, 512]], np.uint16)), [[255, 255]])


def test_shape_mismatch_names_file_and_both_sizes(tmp_path, labels):
    Image.fromarray(labels).save(tmp_path / "m.png")
    with pytest.raises(SonoInputError) as info:
        load_mask(tmp_path / "m.png", shape=(ROWS + 1, COLS))
    message = str(info.value)
    assert "m.png" in message
    assert f"{ROWS}x{COLS}" in message and f"{ROWS + 1}x{COLS}" in message


def test_multi_slice_mask_is_rejected(tmp_path, labels):
    nib.save(nib.Nifti1Image(np.stack([labels.T] * 2, axis=-1), np.eye(4)), str(tmp_path / "v.nii"))
    with pytest.raises(SonoInputError, match="2 slices"):
        load_mask(tmp_path / "v.nii")


# -- save_mask ---------------------------------------------------------------------------------------


def test_save_png_is_exactly_rows_by_cols(tmp_path, labels):
    save_mask(tmp_path / "out.png", labels)
    with Image.open(tmp_path / "out.png") as image:
        assert image.size == (COLS, ROWS) and image.mode == "L"
        np.testing.assert_array_equal(np.asarray(image), labels)


def test_save_nrrd_as_slicer_labelmap(tmp_path, labels):
    save_mask(tmp_path / "out.nrrd", labels, spacing_mm=(0.3, 0.1))
    data, header = nrrd.read(str(tmp_path / "out.nrrd"))  # default order: x first, as Slicer
    assert data.shape == (COLS, ROWS, 1)
    np.testing.assert_array_equal(data[:, :, 0].T, labels)
    assert header["type"] == "uint8"
    assert header["space"] == "left-posterior-superior"
    assert header["kinds"] == ["domain", "domain", "domain"]
    np.testing.assert_allclose(header["space directions"], np.diag([0.1, 0.3, 1.0]))
    np.testing.assert_allclose(header["space origin"], np.zeros(3))
    np.testing.assert_array_equal(load_mask(tmp_path / "out.nrrd", shape=(ROWS, COLS)), labels)


def test_save_nrrd_without_spacing_uses_1mm(tmp_path, labels):
    save_mask(tmp_path / "out.nrrd", labels)
    _, header = nrrd.read(str(tmp_path / "out.nrrd"))
    np.testing.assert_allclose(header["space directions"], np.eye(3))


def test_save_nifti_as_slicer_reads_it(tmp_path, labels):
    save_mask(tmp_path / "out.nii.gz", labels, spacing_mm=(0.3, 0.1))
    image = nib.load(str(tmp_path / "out.nii.gz"))
    assert image.shape == (COLS, ROWS, 1)
    np.testing.assert_array_equal(np.asanyarray(image.dataobj)[:, :, 0].T, labels)
    assert image.get_data_dtype() == np.uint8
    # LPS identity scaled by the spacing is diag(-col, -row, 1) in NIfTI's RAS
    np.testing.assert_allclose(image.affine, np.diag([-0.1, -0.3, 1.0, 1.0]))
    assert image.header.get_xyzt_units()[0] == "mm"
    np.testing.assert_array_equal(load_mask(tmp_path / "out.nii.gz"), labels)


def test_save_mask_rejects_bad_arguments(tmp_path, labels):
    with pytest.raises(SonoInputError, match="unsupported mask format"):
        save_mask(tmp_path / "out.jpg", labels)
    with pytest.raises(SonoInputError, match="rows, cols"):
        save_mask(tmp_path / "out.png", np.zeros((2, 3, 4)))
    with pytest.raises(SonoInputError, match="spacing_mm"):
        save_mask(tmp_path / "out.nrrd", labels, spacing_mm=(0.0, 0.1))
    with pytest.raises(SonoInputError, match="does not exist"):
        save_mask(tmp_path / "no" / "out.png", labels)
