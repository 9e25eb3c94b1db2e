"""The extension's scene logic against 3D Slicer's own MRML core (slicer-core), end to end:
DICOM in, server mask to segment, measurement lines, label out."""

from __future__ import annotations

import numpy as np
import pytest
from slicer_extension_helpers import asymmetric_lesion, write_us_dicom

pytest.importorskip("slicer", reason="the slicer-core test extra is not installed")

import slicer  # noqa: E402
from SonoVLMLib.geometry import pixel_points_to_ras, volume_ijk_to_ras  # noqa: E402
from SonoVLMLib.organs import FRAME_TAG, ORGAN_COLOURS, ORGAN_TAG  # noqa: E402
from SonoVLMLib.scene import UltrasoundSceneLogic, read_mask  # noqa: E402

ROWS, COLS = 60, 80
SPACING = (0.2, 0.1)  # (row_mm, col_mm): anisotropic, so swapped axes show


def speckle(frames: int = 1, seed: int = 0, rows: int = ROWS, cols: int = COLS) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, rows, cols), dtype=np.uint8)


def calibrated_region(rows: int = ROWS, cols: int = COLS, spacing=SPACING) -> list[dict]:
    return [{"bbox": (0, 0, cols - 1, rows - 1), "spacing_mm": spacing}]


def segment_tag(case, segment_id: str, tag: str) -> str | None:
    import vtk

    value = vtk.mutable("")
    found = case.segmentation.GetSegmentation().GetSegment(segment_id).GetTag(tag, value)
    return str(value) if found else None


def write_server_nrrd(path, mask: np.ndarray, spacing=SPACING) -> None:
    """A mask as the server writes it: x fastest, one slice, LPS identity directions, mm spacing."""
    import nrrd

    row_mm, col_mm = spacing
    nrrd.write(
        str(path),
        mask.T[:, :, np.newaxis].astype(np.uint8),
        {
            "space": "left-posterior-superior",
            "space directions": np.diag([col_mm, row_mm, 1.0]),
            "space origin": np.zeros(3),
            "kinds": ["domain", "domain", "domain"],
            "encoding": "gzip",
        },
        index_order="F",
    )


def test_calibrated_dicom_loads_as_one_slice_volume_with_region_spacing(slicer_scene, tmp_path):
    pixels = speckle()
    path = write_us_dicom(tmp_path / "us.dcm", pixels, calibrated_region())
    case = UltrasoundSceneLogic(slicer_scene).load_image(str(path), image_id="us")

    assert (case.rows, case.cols, case.frames, case.is_cine) == (ROWS, COLS, 1, False)
    assert case.spacing_mm == pytest.approx(SPACING)
    assert case.volume.GetSpacing() == pytest.approx((SPACING[1], SPACING[0], 1.0))
    assert np.allclose(volume_ijk_to_ras(case.volume), np.diag([-SPACING[1], -SPACING[0], 1.0, 1.0]))
    voxels = slicer.util.arrayFromVolume(case.volume)
    assert voxels.shape == (1, ROWS, COLS)
    assert np.array_equal(voxels[0], pixels[0])  # same orientation: no transpose, no flip
    assert case.volume.GetAttribute("SonoVLM.imageId") == "us"
    assert case.volume.GetAttribute("SonoVLM.calibrated") == "1"
    assert case.segmentation.GetNodeReference(
        slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
    )


def test_colour_dicom_becomes_bt601_luma(slicer_scene, tmp_path):
    rgb = np.random.default_rng(3).integers(0, 256, (1, ROWS, COLS, 3), dtype=np.uint8)
    path = write_us_dicom(tmp_path / "rgb.dcm", rgb)
    case = UltrasoundSceneLogic(slicer_scene).load_image(str(path))
    expected = np.rint(rgb[0].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
    assert np.array_equal(slicer.util.arrayFromVolume(case.volume)[0], expected.astype(np.uint8))
    assert case.spacing_mm is None
    assert case.volume.GetAttribute("SonoVLM.calibrated") == "0"


@pytest.mark.parametrize(
    "regions",
    [
        None,
        [{"bbox": (0, 0, COLS - 1, ROWS - 1), "spacing_mm": (0.3, 0.25)}],
        [{"bbox": (0, 0, COLS + 40, ROWS - 1), "spacing_mm": (0.3, 0.25)}],  # does not fit: uncalibrated
        [
            {"bbox": (0, 0, 9, 9), "spacing_mm": (0.5, 0.5), "data_type": 2},
            {"bbox": (10, 5, 60, 50), "spacing_mm": (0.12, 0.09)},
            {"bbox": (0, 0, COLS - 1, ROWS - 1), "spacing_mm": (0.7, 0.7), "data_type": 3},
        ],
        [{"bbox": (0, 0, 40, 40), "spacing_mm": None}],
    ],
)
def test_region_spacing_matches_sonovlm_io(tmp_path, regions):
    from sonovlm.io import load_image
    from SonoVLMLib.dicom_header import read_dicom_header

    path = write_us_dicom(tmp_path / "r.dcm", speckle(), regions)
    expected = load_image(path).spacing_mm
    got = read_dicom_header(str(path)).spacing_mm
    assert got == (pytest.approx(expected) if expected is not None else None)


def test_real_sample_with_regions_that_do_not_fit_is_uncalibrated(test_data):
    from SonoVLMLib.dicom_header import read_dicom_header

    header = read_dicom_header(str(test_data / "examples_palette.dcm"))
    assert (header.rows, header.cols, header.samples_per_pixel) == (350, 800, 1)
    assert header.spacing_mm is None


def test_server_nrrd_mask_becomes_organ_segment_and_label_round_trips(slicer_scene, tmp_path):
    """Reply mask -> segment (name, colour) -> measurements and lines -> label NRRD the server reads."""
    import nrrd
    from sonovlm.io import load_mask
    from sonovlm.measure import measure_lesion

    logic = UltrasoundSceneLogic(slicer_scene)
    case = logic.load_image(str(write_us_dicom(tmp_path / "us.dcm", speckle(), calibrated_region())), "us")
    lesion = asymmetric_lesion(ROWS, COLS)
    reply = tmp_path / "reply.nrrd"
    write_server_nrrd(reply, lesion.astype(np.uint8) * 1)

    mask = read_mask(str(reply))
    assert mask.shape == (ROWS, COLS)
    assert np.array_equal(mask != 0, lesion)

    segment_id = logic.apply_mask(case, mask, "lymph_node")
    segmentation = case.segmentation.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1
    segment = segmentation.GetSegment(segment_id)
    assert segment.GetName() == "Lymph node"
    assert segment.GetColor() == pytest.approx(ORGAN_COLOURS["lymph_node"])
    assert logic.segment_organ(case, segment_id) == "lymph_node"
    assert np.array_equal(logic.segment_mask(case, segment_id), lesion.astype(np.uint8))

    measurement = logic.measure(case, segment_id)
    reference = measure_lesion(lesion, SPACING)
    assert measurement.physical.long_axis == pytest.approx(reference.physical.long_axis)
    assert measurement.physical.short_axis == pytest.approx(reference.physical.short_axis)
    assert measurement.physical.area == pytest.approx(reference.physical.area)
    assert measurement.physical.orientation_deg == pytest.approx(reference.physical.orientation_deg)

    long_line, short_line = logic.show_axes(case, measurement, "lymph_node")
    expected_long = pixel_points_to_ras(
        volume_ijk_to_ras(case.volume), reference.physical.long_axis_endpoints
    )
    got_long = slicer.util.arrayFromMarkupsControlPoints(long_line)
    assert np.allclose(got_long, expected_long)
    # Pixel (x, y) lies at RAS (-x * col_mm, -y * row_mm, 0): check one end by hand.
    (x0, y0) = reference.physical.long_axis_endpoints[0]
    assert got_long[0] == pytest.approx([-x0 * SPACING[1], -y0 * SPACING[0], 0.0])
    assert long_line.GetLineLengthWorld() == pytest.approx(reference.physical.long_axis)
    assert short_line.GetLineLengthWorld() == pytest.approx(reference.physical.short_axis)

    label = logic.export_label(case, segment_id, str(tmp_path / "label.nrrd"))
    data, header = nrrd.read(label)
    assert data.shape == (COLS, ROWS, 1)  # x fastest, one slice
    assert set(np.unique(data)) == {0, 1}
    assert np.array_equal(data[:, :, 0].T != 0, lesion)
    assert np.allclose(np.abs(np.diag(header["space directions"])), [SPACING[1], SPACING[0], 1.0])
    assert np.array_equal(load_mask(label, (ROWS, COLS)) != 0, lesion)  # what the server reads


def test_png_mask_keeps_rows_top_down(slicer_scene, tmp_path):
    from PIL import Image

    lesion = asymmetric_lesion(ROWS, COLS)
    Image.fromarray(lesion.astype(np.uint8) * 3).save(tmp_path / "m.png")
    mask = read_mask(str(tmp_path / "m.png"))
    assert mask.shape == (ROWS, COLS)
    assert np.array_equal(mask, lesion.astype(np.uint8) * 3)


def test_mask_of_the_wrong_shape_is_refused(slicer_scene, tmp_path):
    logic = UltrasoundSceneLogic(slicer_scene)
    case = logic.case_from_frames(speckle(), SPACING, "us")
    with pytest.raises(ValueError, match="shape"):
        logic.apply_mask(case, asymmetric_lesion(ROWS, COLS).T, "lymph_node")


def test_second_mask_for_an_organ_replaces_the_segment(slicer_scene):
    logic = UltrasoundSceneLogic(slicer_scene)
    case = logic.case_from_frames(speckle(), SPACING, "us")
    first = logic.apply_mask(case, asymmetric_lesion(ROWS, COLS), "breast_lesion")
    small = np.zeros((ROWS, COLS), np.uint8)
    small[10:20, 30:35] = 2
    second = logic.apply_mask(case, small, "breast_lesion")
    assert first == second
    assert case.segmentation.GetSegmentation().GetNumberOfSegments() == 1
    assert np.array_equal(logic.segment_mask(case, first), (small != 0).astype(np.uint8))
    other = logic.apply_mask(case, small, "thyroid_nodule")
    assert other != first and case.segmentation.GetSegmentation().GetNumberOfSegments() == 2


def test_empty_segment_is_not_submitted_and_has_no_axes(slicer_scene, tmp_path):
    logic = UltrasoundSceneLogic(slicer_scene)
    case = logic.case_from_frames(speckle(), SPACING, "us")
    segment_id = logic.apply_mask(case, asymmetric_lesion(ROWS, COLS), "lymph_node")
    logic.show_axes(case, logic.measure(case, segment_id), "lymph_node")
    assert slicer_scene.GetNodesByClass("vtkMRMLMarkupsLineNode").GetNumberOfItems() == 2
    logic.apply_mask(case, np.zeros((ROWS, COLS), np.uint8), "lymph_node")
    assert logic.measure(case, segment_id) is None
    logic.show_axes(case, None)
    assert slicer_scene.GetNodesByClass("vtkMRMLMarkupsLineNode").GetNumberOfItems() == 0
    with pytest.raises(ValueError, match="empty"):
        logic.export_label(case, segment_id, str(tmp_path / "label.nrrd"))


def test_cine_is_a_sequence_and_the_segment_keeps_its_frame(slicer_scene, tmp_path):
    import nrrd

    pixels = speckle(frames=5, seed=7)
    path = write_us_dicom(tmp_path / "cine.dcm", pixels, calibrated_region())
    logic = UltrasoundSceneLogic(slicer_scene)
    case = logic.load_image(str(path), image_id="cine")
    assert case.is_cine and case.frames == 5
    assert case.current_frame() == 2  # the middle frame, the server's default
    assert np.array_equal(slicer.util.arrayFromVolume(case.volume)[0], pixels[2])
    logic.select_frame(case, 4)
    assert case.current_frame() == 4
    assert np.array_equal(slicer.util.arrayFromVolume(case.volume)[0], pixels[4])
    assert case.volume.GetSpacing() == pytest.approx((SPACING[1], SPACING[0], 1.0))
    with pytest.raises(ValueError, match="out of range"):
        logic.select_frame(case, 5)

    lesion = asymmetric_lesion(ROWS, COLS)
    segment_id = logic.apply_mask(case, lesion, "thyroid_nodule")
    assert segment_tag(case, segment_id, FRAME_TAG) == "4"
    logic.select_frame(case, 1)  # the user scrolls on: frame 1 has no contour of its own
    assert logic.find_segment(case, "thyroid_nodule") is None
    path, unannotated = logic.export_cine_label(case, "thyroid_nodule", str(tmp_path / "label.nrrd"))
    assert unannotated == [0, 1, 2, 3] and case.current_frame() == 1
    data, _ = nrrd.read(path)
    assert data.shape == (COLS, ROWS, 5)  # the whole cine, frames as slices
    assert np.array_equal(data[:, :, 4].T != 0, lesion) and not data[:, :, :4].any()
    logic.select_frame(case, 4)
    assert logic.segment_frame(case, segment_id) == 4

    upload = logic.save_volume(case, str(tmp_path / "upload.nrrd"))
    stack, _ = nrrd.read(upload)
    assert stack.shape == (COLS, ROWS, 5)
    assert np.array_equal(stack[:, :, 3].T, pixels[3])


def test_volume_already_in_the_scene_is_used_as_is(slicer_scene):
    logic = UltrasoundSceneLogic(slicer_scene)
    volume = slicer_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "loaded")
    slicer.util.updateVolumeFromArray(volume, speckle())
    volume.SetSpacing(0.15, 0.15, 1.0)
    case = logic.case_from_volume(volume)
    assert case.volume is volume
    assert case.spacing_mm == pytest.approx((0.15, 0.15))
    segment_id = logic.apply_mask(case, asymmetric_lesion(ROWS, COLS), "lymph_node")
    assert segment_tag(case, segment_id, ORGAN_TAG) == "lymph_node"
    uncalibrated = slicer_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "png")
    slicer.util.updateVolumeFromArray(uncalibrated, speckle())
    assert logic.case_from_volume(uncalibrated).spacing_mm is None


def test_nrrd_image_keeps_its_spacing_and_orientation(slicer_scene, tmp_path):
    """A non-DICOM image: Slicer's reader gives the pixels and the file's physical spacing."""
    pixels = speckle(seed=5)
    write_server_nrrd(tmp_path / "image.nrrd", pixels[0], spacing=(0.3, 0.15))
    case = UltrasoundSceneLogic(slicer_scene).load_image(str(tmp_path / "image.nrrd"), image_id="image")
    assert case.spacing_mm == pytest.approx((0.3, 0.15))
    assert np.array_equal(slicer.util.arrayFromVolume(case.volume)[0], pixels[0])


def test_colour_channels_of_image_files_are_read_from_their_headers(tmp_path):
    from PIL import Image
    from SonoVLMLib.scene import _file_components

    Image.fromarray(np.zeros((8, 9, 3), np.uint8)).save(tmp_path / "rgb.png")
    Image.fromarray(np.zeros((8, 9), np.uint8)).save(tmp_path / "grey.png")
    Image.fromarray(np.zeros((8, 9, 3), np.uint8)).save(tmp_path / "rgb.jpg")
    assert _file_components(str(tmp_path / "rgb.png")) == 3
    assert _file_components(str(tmp_path / "grey.png")) == 1
    assert _file_components(str(tmp_path / "rgb.jpg")) == 3
