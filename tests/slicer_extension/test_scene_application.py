"""What 3D Slicer itself does to a case, reproduced on Slicer's own MRML core (slicer-core):
removing a propagated cine, Segment Editor strokes, images loaded through the DICOM module,
frame changes from the Sequences toolbar.

Each test names the Slicer source it follows (repository Slicer/Slicer)."""

from __future__ import annotations

import numpy as np
import pytest
from slicer_extension_helpers import asymmetric_lesion, load_as_dicom_image_sequence, write_us_dicom

pytest.importorskip("slicer", reason="the slicer-core test extra is not installed")

import slicer  # noqa: E402
from SonoVLMLib.measurement import measure_lesion  # noqa: E402
from SonoVLMLib.scene import CaseObserver, UltrasoundSceneLogic  # noqa: E402

ROWS, COLS, FRAMES = 48, 64, 4
SPACING = (0.2, 0.1)


def cine_case(logic, frames=FRAMES, name="cine"):
    pixels = np.random.default_rng(4).integers(0, 256, (frames, ROWS, COLS), dtype=np.uint8)
    return logic.case_from_frames(pixels, SPACING, name), pixels


def count(scene, class_name):
    return scene.GetNumberOfNodesByClass(class_name)


def paint_stroke(case, segment_id, mask):
    """A Segment Editor stroke: Slicer's paint/erase/scissors effects end in
    vtkSlicerSegmentationsModuleLogic::SetBinaryLabelmapToSegment (qSlicerSegmentEditorAbstractEffect
    ::modifySegmentByLabelmap), which changes the source representation of the segment."""
    import vtk
    from vtk.util import numpy_support

    labelmap = slicer.vtkOrientedImageData()
    case.segmentation.GetBinaryLabelmapRepresentation(segment_id, labelmap)
    painted = slicer.vtkOrientedImageData()
    painted.ShallowCopy(labelmap)
    painted.SetExtent(0, COLS - 1, 0, ROWS - 1, 0, 0)
    matrix = vtk.vtkMatrix4x4()
    case.volume.GetIJKToRASMatrix(matrix)
    painted.SetImageToWorldMatrix(matrix)
    scalars = numpy_support.numpy_to_vtk(mask.astype(np.uint8).ravel(), deep=True)
    painted.GetPointData().SetScalars(scalars)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    assert logic.SetBinaryLabelmapToSegment(painted, case.segmentation, segment_id, logic.MODE_REPLACE)


def test_a_case_is_removed_after_propagation_and_the_next_one_loads(slicer_scene):
    """Item 2: vtkMRMLSequenceBrowserNode::RemoveProxyNode takes a postfix string
    (Modules/Loadable/Sequences/MRML/vtkMRMLSequenceBrowserNode.h); passing the segmentation node
    raised TypeError and left half a case in the scene."""
    logic = UltrasoundSceneLogic(slicer_scene)
    case, _ = cine_case(logic)
    masks = np.zeros((FRAMES, ROWS, COLS), np.uint8)
    masks[:, 10:20, 10:30] = 1
    logic.apply_frame_masks(case, masks, "lymph_node")  # what a propagation does
    logic.remove_case(case)
    for class_name in (
        "vtkMRMLSegmentationNode",
        "vtkMRMLSequenceNode",
        "vtkMRMLSequenceBrowserNode",
        "vtkMRMLScalarVolumeNode",
        "vtkMRMLMarkupsLineNode",
    ):
        assert count(slicer_scene, class_name) == 0, class_name
    nxt, _ = cine_case(logic, name="next")
    assert nxt.is_cine and logic.segmentation_sequence(nxt) is not None
    logic.remove_case(nxt)


def test_a_paint_stroke_is_observed_and_the_measurements_follow(slicer_scene):
    """Item 3: Segment Editor strokes invoke SourceRepresentationModified only
    (Libs/vtkSegmentationCore/vtkSegmentation.cxx), never SegmentModified."""
    logic = UltrasoundSceneLogic(slicer_scene)
    volume = slicer_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "image")
    slicer.util.updateVolumeFromArray(volume, np.zeros((1, ROWS, COLS), np.uint8))
    volume.SetSpacing(SPACING[1], SPACING[0], 1.0)
    case = logic.case_from_volume(volume)
    first = np.zeros((ROWS, COLS), np.uint8)
    first[5:15, 5:15] = 1
    segment_id = logic.apply_mask(case, first, "breast_lesion")

    seen = []
    only_segment_modified = case.segmentation.AddObserver(
        slicer.vtkSegmentation.SegmentModified, lambda *args: seen.append("SegmentModified")
    )
    edits = []
    observer = CaseObserver(case, on_edit=lambda: edits.append(logic.measure(case, segment_id)))
    lesion = asymmetric_lesion(ROWS, COLS)
    paint_stroke(case, segment_id, lesion)
    case.segmentation.RemoveObserver(only_segment_modified)
    observer.close()

    assert seen == []  # what the panel observed before: it never heard of the stroke
    assert edits, "the stroke was not observed"
    expected = measure_lesion(lesion, SPACING)
    assert edits[-1].physical.long_axis == pytest.approx(expected.physical.long_axis)
    assert edits[-1].physical.area == pytest.approx(expected.physical.area)


@pytest.mark.parametrize("colour", [False, True], ids=["grey", "colour"])
def test_a_cine_loaded_by_slicers_dicom_module_is_a_case_of_all_frames(slicer_scene, tmp_path, colour):
    """Item 4: Slicer's DICOM module loads ultrasound through DICOMImageSequencePlugin
    (Modules/Scripted/DICOMPlugins/DICOMImageSequencePlugin.py): a sequence of one-slice frames and a
    one-slice proxy (a vector volume for colour). The case must hold every frame."""
    rng = np.random.default_rng(11)
    shape = (FRAMES, ROWS, COLS, 3) if colour else (FRAMES, ROWS, COLS)
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    region = [{"bbox": (0, 0, COLS - 1, ROWS - 1), "spacing_mm": SPACING}]
    path = write_us_dicom(tmp_path / "cine.dcm", pixels, region)
    browser, sequence, proxy = load_as_dicom_image_sequence(
        slicer_scene, path, colour, SPACING, uid="1.2.826.0.1.3680043.8.498.1"
    )
    assert proxy is not None and sequence.GetNumberOfDataNodes() == FRAMES
    assert slicer.util.arrayFromVolume(proxy).shape[0] == 1  # the proxy is one frame

    logic = UltrasoundSceneLogic(slicer_scene)
    case = logic.case_from_volume(proxy)
    assert case.is_cine and case.frames == FRAMES and (case.rows, case.cols) == (ROWS, COLS)
    assert case.spacing_mm == pytest.approx(SPACING)
    assert case.source_volume is proxy
    assert logic.dicom_instance_uid(proxy) == "1.2.826.0.1.3680043.8.498.1"
    grey = pixels if not colour else np.rint(pixels.astype(np.float32) @ np.float32([0.299, 0.587, 0.114]))
    # Slicer's DICOM reader stores the rows as the file has them: frame by frame, same pixels.
    for frame in (0, FRAMES - 1):
        logic.select_frame(case, frame)
        np.testing.assert_array_equal(
            slicer.util.arrayFromVolume(case.volume)[0], grey[frame].astype(np.uint8)
        )
    logic.remove_case(case)
    assert slicer_scene.GetNodeByID(proxy.GetID()) is proxy  # the user's nodes stay


def test_each_cine_frame_has_its_own_contour_and_toolbar_frame_changes_are_observed(slicer_scene):
    """Item 5: the Sequences toolbar changes the browser's selected item
    (Modules/Loadable/Sequences/Widgets/qMRMLSequenceBrowserSeekWidget.cxx) without telling the
    panel. A contour made on frame 1 must stay on frame 1, and frame 3 starts empty."""
    logic = UltrasoundSceneLogic(slicer_scene)
    case, _ = cine_case(logic)
    frames_seen = []
    observer = CaseObserver(case, on_frame=frames_seen.append)
    logic.select_frame(case, 1)
    lesion = asymmetric_lesion(ROWS, COLS)
    segment_id = logic.apply_mask(case, lesion, "thyroid_nodule")

    case.browser.SetSelectedItemNumber(3)  # what the toolbar's slider does
    assert frames_seen[-1] == 3 and case.current_frame() == 3
    assert logic.find_segment(case, "thyroid_nodule") is None  # frame 3 has no contour yet
    other = np.zeros((ROWS, COLS), np.uint8)
    other[2:6, 2:6] = 1
    other_id = logic.apply_mask(case, other, "thyroid_nodule")
    paint_stroke(case, other_id, np.pad(np.ones((8, 8), np.uint8), ((2, ROWS - 10), (2, COLS - 10))))

    case.browser.SetSelectedItemNumber(1)
    assert frames_seen[-1] == 1
    np.testing.assert_array_equal(logic.segment_mask(case, segment_id), lesion)
    assert logic.segment_frame(case, segment_id) == 1
    case.browser.SetSelectedItemNumber(3)
    assert int(logic.segment_mask(case, other_id).sum()) == 64  # the stroke was saved to frame 3

    masks, annotated = logic.frame_masks(case, "thyroid_nodule")
    assert annotated == [1, 3] and case.current_frame() == 3
    np.testing.assert_array_equal(masks[1], lesion)
    observer.close()
    case.browser.SetSelectedItemNumber(0)
    assert frames_seen[-1] == 3  # closed: no more calls
