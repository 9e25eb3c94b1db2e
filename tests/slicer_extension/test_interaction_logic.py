"""Clicks, boxes, undo and cine propagation in the extension's Qt-free logic: RAS -> voxel indices
through real volume geometry (slicer-core), the undo stack, and a live server (tiny backbone, not
trained for interactions: the tests check geometry and what the request carried, via the reply's
``interaction`` block, not the contour's quality)."""

from __future__ import annotations

import urllib.parse
import urllib.request

import numpy as np
import pytest
from slicer_extension_helpers import asymmetric_lesion, write_us_dicom

pytest.importorskip("slicer", reason="the slicer-core test extra is not installed")

import slicer  # noqa: E402
import vtk  # noqa: E402
from SonoVLMLib.client import SonoVLMClient  # noqa: E402
from SonoVLMLib.geometry import pixel_points_to_ras, volume_ijk_to_ras  # noqa: E402
from SonoVLMLib.interaction import (  # noqa: E402
    ContourHistory,
    ContourSnapshot,
    Prompts,
    box_roi,
    control_points_ras,
    ras_to_ijk_matrix,
    ras_to_voxels,
    review_order,
    roi_corners_ras,
)
from SonoVLMLib.scene import UltrasoundSceneLogic  # noqa: E402
from SonoVLMLib.workflow import AnnotationSession  # noqa: E402

ROWS, COLS = 64, 80


def oblique_volume(scene):
    """A one-slice volume with non-identity spacing, origin and a flipped axis."""
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "oblique")
    slicer.util.updateVolumeFromArray(volume, np.zeros((1, ROWS, COLS), np.uint8))
    volume.SetSpacing(0.3, 0.7, 1.0)
    volume.SetOrigin(12.5, -40.0, 3.0)
    directions = vtk.vtkMatrix4x4()
    directions.SetElement(0, 0, -1.0)
    directions.SetElement(1, 1, -1.0)
    volume.SetIJKToRASDirectionMatrix(directions)
    return volume


def test_ras_points_become_rounded_voxel_indices_with_the_frame_as_k(slicer_scene):
    volume = oblique_volume(slicer_scene)
    ijk_to_ras = volume_ijk_to_ras(volume)
    pixels = [(40.0, 30.0), (0.0, 0.0), (79.0, 63.0)]
    ras = pixel_points_to_ras(ijk_to_ras, pixels)
    # A click lands between voxel centres: 0.4 voxel off rounds back, 0.6 rounds on.
    ras_off = pixel_points_to_ras(ijk_to_ras, [(40.4, 29.6), (10.6, 5.4)], k=0.3)
    markups = slicer_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "clicks")
    for point in [*ras, *ras_off]:
        markups.AddControlPoint(vtk.vtkVector3d(*point))

    voxels = ras_to_voxels(ras_to_ijk_matrix(volume), control_points_ras(markups), frame=3)
    assert voxels == [[40, 30, 3], [0, 0, 3], [79, 63, 3], [40, 30, 3], [11, 5, 3]]
    assert ras[0][0] != 40.0  # the geometry really is not the identity


def test_box_from_corners_in_any_order_and_from_a_markups_roi(slicer_scene):
    volume = oblique_volume(slicer_scene)
    ijk_to_ras = volume_ijk_to_ras(volume)
    corner_a, corner_b = pixel_points_to_ras(ijk_to_ras, [(60, 45), (20, 10)])
    ras_to_ijk = ras_to_ijk_matrix(volume)
    assert box_roi(ras_to_ijk, corner_a, corner_b, frame=2) == [20, 60, 10, 45, 2, 2]
    assert box_roi(ras_to_ijk, corner_b, corner_a, frame=2) == [20, 60, 10, 45, 2, 2]

    roi = slicer_scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    roi.SetXYZ(*((corner_a + corner_b) / 2.0))
    roi.SetRadiusXYZ(*(np.abs(corner_a - corner_b) / 2.0 + [0.0, 0.0, 0.5]))
    assert box_roi(ras_to_ijk, *roi_corners_ras(roi)) == [20, 60, 10, 45, 0, 0]


def test_history_is_bounded_and_per_case():
    history = ContourHistory(depth=3)
    for index in range(5):
        history.push(ContourSnapshot("a", "lymph_node", None, np.full((2, 2), index, np.uint8), Prompts(0)))
    history.push(ContourSnapshot("b", "lymph_node", None, None, Prompts(0)))
    assert len(history) == 3  # the oldest of "a" dropped
    assert int(history.pop("a").mask[0, 0]) == 4
    assert int(history.pop("a").mask[0, 0]) == 3
    assert history.pop("a") is None  # index 2 was dropped beyond the depth
    assert history.pop("b").mask is None
    with pytest.raises(ValueError):
        ContourHistory(depth=0)


def test_review_order_is_weakest_first_and_checked_against_the_server():
    result = {"confidence": [0.9, None, 0.2, 0.5, 0.2], "review_first": [2, 4, 3, 0]}
    assert [(f.frame, f.confidence) for f in review_order(result)] == [(2, 0.2), (4, 0.2), (3, 0.5), (0, 0.9)]
    with pytest.raises(ValueError, match="review_first"):
        review_order({"confidence": [0.9, 0.1], "review_first": [1]})


# ---------------------------------------------------------------- against a live server


@pytest.fixture
def session(sonovlm_server, slicer_scene, tmp_path):
    """A session on the shared server; the images it uploads are removed afterwards, so that the
    workflow tests' strategies never pick them."""
    client = SonoVLMClient(sonovlm_server.url, timeout=60, client_id="pytest-interaction")
    session = AnnotationSession(client, UltrasoundSceneLogic(slicer_scene), str(tmp_path / "work"))
    session.uploaded = []
    yield session
    for image_id in session.uploaded:
        request = urllib.request.Request(
            f"{sonovlm_server.url}/datastore/image?id={urllib.parse.quote(image_id)}", method="DELETE"
        )
        with urllib.request.urlopen(request, timeout=30) as reply:
            assert reply.status == 200


def upload_case(session, tmp_path, count=1, name="interaction.dcm"):
    frames = np.random.default_rng(3).integers(30, 120, (count, ROWS, COLS), dtype=np.uint8)
    path = write_us_dicom(
        tmp_path / name, frames, [{"bbox": (0, 0, COLS - 1, ROWS - 1), "spacing_mm": (0.25, 0.4)}]
    )
    image_id = session.client.upload_image(str(path))
    session.uploaded.append(image_id)
    return session.scene_logic.load_image(str(path), image_id=image_id)


def ras_of(case, x, y):
    return pixel_points_to_ras(volume_ijk_to_ras(case.volume), [(x, y)])[0]


@pytest.mark.slow
def test_clicks_and_box_update_the_segment_in_place_and_undo_restores_it(session, tmp_path):
    case = upload_case(session, tmp_path)
    drawn = asymmetric_lesion(ROWS, COLS)
    segment_id = session.scene_logic.apply_mask(case, drawn, "lymph_node")  # the user's contour

    outcome = session.add_click(case, True, ras_of(case, 40, 30), organ="lymph_node", prompt="a node")
    assert outcome.segment_id == segment_id  # updated in place, not a new segment
    interaction = outcome.result["interaction"]
    assert interaction["foreground"] == [[40, 30]] and interaction["background"] == []
    assert interaction["previous_mask"] is True  # the current contour went with the click
    assert outcome.result["organ"] == "lymph_node" and outcome.result["prompt"] == "a node"
    after_click = session.scene_logic.segment_mask(case, segment_id)
    assert after_click.shape == (ROWS, COLS)
    assert int(after_click.sum()) == outcome.result["lesion_pixels"]
    assert not np.array_equal(after_click, drawn)  # else undo below would prove nothing

    second = session.add_click(case, False, ras_of(case, 5, 60), organ="lymph_node")
    assert second.result["interaction"]["foreground"] == [[40, 30]]  # earlier clicks are resent
    assert second.result["interaction"]["background"] == [[5, 60]]
    boxed = session.set_box(case, ras_of(case, 70, 50), ras_of(case, 10, 8), organ="lymph_node")
    assert boxed.result["interaction"]["box"] == [10, 8, 71, 51]  # reversed corners, exclusive ends
    assert session.prompts(case).roi == [10, 70, 8, 50, 0, 0]

    session.undo(case)  # the box
    session.undo(case)  # the negative click
    assert session.prompts(case).background == [] and session.prompts(case).roi is None
    np.testing.assert_array_equal(session.scene_logic.segment_mask(case, segment_id), after_click)
    restored = session.undo(case)  # the first click: back to the drawn contour, exactly
    assert restored.segment_id == segment_id
    np.testing.assert_array_equal(session.scene_logic.segment_mask(case, segment_id), drawn.astype(np.uint8))
    assert session.prompts(case).is_empty()
    assert session.undo(case) is None


@pytest.mark.slow
def test_undo_of_the_first_contour_removes_the_segment(session, tmp_path):
    case = upload_case(session, tmp_path, name="first.dcm")
    outcome = session.add_click(case, True, ras_of(case, 20, 20), organ="thyroid_nodule")
    assert outcome.result["interaction"]["previous_mask"] is False
    assert session.scene_logic.find_segment(case, "thyroid_nodule") == outcome.segment_id
    undone = session.undo(case)
    assert undone.segment_id is None and session.scene_logic.find_segment(case, "thyroid_nodule") is None


@pytest.mark.slow
def test_a_click_on_a_cine_frame_sends_that_frame(session, tmp_path):
    case = upload_case(session, tmp_path, count=4, name="click_cine.dcm")
    session.scene_logic.select_frame(case, 1)
    outcome = session.add_click(case, True, ras_of(case, 33, 22), organ="breast_lesion")
    assert outcome.result["frame"] == 1 and outcome.result["interaction"]["foreground"] == [[33, 22]]
    assert outcome.result["interaction"]["ignored_points"] == 0
    session.scene_logic.select_frame(case, 2)
    assert session.prompts(case).is_empty()  # clicks belong to the frame they were placed on


@pytest.mark.slow
def test_propagate_gives_each_frame_its_contour_and_a_weakest_first_list(session, tmp_path):
    frames = 5
    case = upload_case(session, tmp_path, count=frames, name="propagate.dcm")
    session.scene_logic.select_frame(case, 2)
    seed = asymmetric_lesion(ROWS, COLS)
    session.scene_logic.apply_mask(case, seed, "lymph_node")
    calls = []

    outcome = session.propagate(case, organ="lymph_node", progress=lambda *call: calls.append(call))
    assert outcome.result["seed_frame"] == 2 and case.current_frame() == 2  # the frame shown is kept
    assert [f.frame for f in outcome.review] == outcome.result["review_first"]
    scores = [f.confidence for f in outcome.review]
    assert sorted(outcome.result["review_first"]) == list(range(frames)) and scores == sorted(scores)
    assert calls[0][0] == 0 and calls[-1][0] == calls[-1][1] == frames + 1
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)

    for frame in range(frames):
        session.scene_logic.select_frame(case, frame)
        mask = session.scene_logic.segment_mask(case, outcome.segment_id)
        assert mask.shape == (ROWS, COLS)
        assert int(mask.sum()) == outcome.result["lesion_pixels"][frame]
        assert session.scene_logic.segment_frame(case, outcome.segment_id) == frame
    session.scene_logic.select_frame(case, 2)
    np.testing.assert_array_equal(session.scene_logic.segment_mask(case, outcome.segment_id), seed)

    ranged = session.propagate(case, organ="lymph_node", first_frame=1, last_frame=3)
    assert [f.frame for f in ranged.review] == ranged.result["review_first"]
    assert sorted(f.frame for f in ranged.review) == [1, 2, 3]
    session.scene_logic.select_frame(case, 4)
    # Outside the range each frame keeps the contour it had (the first propagation's).
    assert (
        int(session.scene_logic.segment_mask(case, ranged.segment_id).sum())
        == (outcome.result["lesion_pixels"][4])
    )

    with pytest.raises(ValueError, match="single image"):
        session.propagate(upload_case(session, tmp_path, name="single.dcm"), organ="lymph_node")
