"""The sonographer's workflow (``SonoVLMLogic`` = AnnotationSession) end to end: a real server,
3D Slicer's MRML core (slicer-core), no Qt. Next case, auto-segment, measure, correct, classify,
submit, cine frames, a volume already in Slicer, training."""

from __future__ import annotations

import csv
import time

import numpy as np
import pytest
from slicer_extension_helpers import asymmetric_lesion, write_us_dicom

pytest.importorskip("slicer", reason="the slicer-core test extra is not installed")

import slicer  # noqa: E402
from SonoVLMLib.client import SonoVLMClient  # noqa: E402
from SonoVLMLib.geometry import pixel_points_to_ras, volume_ijk_to_ras  # noqa: E402
from SonoVLMLib.organs import ORGAN_COLOURS, segment_name  # noqa: E402
from SonoVLMLib.scene import UltrasoundSceneLogic  # noqa: E402
from SonoVLMLib.workflow import AnnotationSession  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture
def session(sonovlm_server, slicer_scene, tmp_path):
    client = SonoVLMClient(sonovlm_server.url, timeout=60, client_id="pytest-workflow")
    return AnnotationSession(client, UltrasoundSceneLogic(slicer_scene), str(tmp_path / "work"))


def recorded_organs(server) -> dict[str, str]:
    with open(server.studies / "cases.csv", newline="") as handle:
        return {row["id"]: row["organ"] for row in csv.DictReader(handle)}


def stored_label(server, image_id: str, shape) -> np.ndarray:
    from sonovlm.io import load_mask

    path = next((server.studies / "labels" / "final").glob(f"{image_id}.*"))
    return load_mask(path, shape) != 0


def test_next_case_segment_correct_classify_submit(session, sonovlm_server, slicer_scene):
    summary = session.connect()
    assert {"segmentation", "classification"} <= set(summary.models)

    case = session.next_case("first")
    assert case is not None and case.image_id in recorded_organs(sonovlm_server)
    assert case.spacing_mm is not None  # the sample studies carry a calibrated region
    assert slicer.util.arrayFromVolume(case.volume).shape == (1, case.rows, case.cols)

    outcome = session.auto_segment(case, "auto")
    assert outcome.organ == recorded_organs(sonovlm_server)[case.image_id]  # "auto" = the recorded organ
    segment = case.segmentation.GetSegmentation().GetSegment(outcome.segment_id)
    assert segment.GetName() == segment_name(outcome.organ)
    assert segment.GetColor() == pytest.approx(ORGAN_COLOURS[outcome.organ])
    server_mask = session.scene_logic.segment_mask(case, outcome.segment_id)
    assert int(server_mask.sum()) == outcome.result["lesion_pixels"]
    if outcome.measurement is not None:  # the extension measures what the server measured
        theirs = outcome.result["measurements"]
        ours = outcome.measurement
        assert ours.physical.long_axis == pytest.approx(theirs["long_axis_mm"], rel=1e-9)
        assert ours.physical.short_axis == pytest.approx(theirs["short_axis_mm"], rel=1e-9)
        assert ours.physical.area == pytest.approx(theirs["area_mm2"], rel=1e-9)
        assert ours.physical.orientation_deg == pytest.approx(theirs["orientation_deg"], abs=1e-6)

    # The sonographer corrects the contour (here: replaces it), the measurements follow.
    from sonovlm.measure import measure_lesion

    corrected = asymmetric_lesion(case.rows, case.cols)
    session.scene_logic.apply_mask(case, corrected, outcome.organ)
    measurement = session.update_measurements(case, outcome.segment_id)
    reference = measure_lesion(corrected, case.spacing_mm)
    assert measurement.physical.long_axis == pytest.approx(reference.physical.long_axis)
    lines = slicer_scene.GetNodesByClass("vtkMRMLMarkupsLineNode")
    assert lines.GetNumberOfItems() == 2
    long_line = next(
        lines.GetItemAsObject(i)
        for i in range(2)
        if lines.GetItemAsObject(i).GetAttribute("SonoVLM.axis") == "long"
    )
    expected = pixel_points_to_ras(volume_ijk_to_ras(case.volume), measurement.physical.long_axis_endpoints)
    assert np.allclose(slicer.util.arrayFromMarkupsControlPoints(long_line), expected)
    assert long_line.GetLineLengthWorld() == pytest.approx(reference.physical.long_axis)

    classification = session.classify(case, outcome.organ)
    assert sum(score for _, score in classification.probabilities) == pytest.approx(1.0)
    assert classification.organ == outcome.organ

    reply = session.submit(case, outcome.segment_id, "benign")
    assert reply["image"] == case.image_id
    assert (reply["organ"], reply["pathology"]) == (outcome.organ, "benign")
    assert np.array_equal(stored_label(sonovlm_server, case.image_id, (case.rows, case.cols)), corrected)
    assert session.submissions == 1
    assert session.retrain_due(1) and not session.retrain_due(2) and not session.retrain_due(0)

    session.scene_logic.remove_case(case)
    assert slicer_scene.GetNodesByClass("vtkMRMLMarkupsLineNode").GetNumberOfItems() == 0
    assert slicer_scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 0


def test_cine_contours_per_frame_and_the_whole_cine_is_submitted(session, sonovlm_server, tmp_path):
    """Items 5 and 6: the frame shown is the frame segmented, each frame keeps its own contour,
    and Submit sends every frame's contour (propagated ones included) as one whole-cine label,
    which the server stores and reads back frame by frame."""
    from sonovlm.app.labels import read_stored_label

    rows, cols, count = 72, 96, 5
    frames = np.random.default_rng(8).integers(30, 120, (count, rows, cols), dtype=np.uint8)
    path = write_us_dicom(
        tmp_path / "workflow_cine.dcm",
        frames,
        [{"bbox": (0, 0, cols - 1, rows - 1), "spacing_mm": (0.2, 0.2)}],
    )
    image_id = session.client.upload_image(str(path))
    case = session.scene_logic.load_image(str(path), image_id=image_id)
    assert case.is_cine and case.frames == count
    session.scene_logic.select_frame(case, 3)

    outcome = session.auto_segment(case, "thyroid_nodule")
    assert outcome.result["frame"] == 3 and outcome.result["n_frames"] == count
    lesion = asymmetric_lesion(rows, cols)
    session.scene_logic.apply_mask(case, lesion, "thyroid_nodule")  # the corrected contour
    session.scene_logic.select_frame(case, 1)  # another frame: its own contour
    other = np.zeros((rows, cols), bool)
    other[10:30, 20:50] = True
    session.scene_logic.apply_mask(case, other, "thyroid_nodule")
    session.scene_logic.select_frame(case, 0)  # scrolling on changes nothing that is submitted

    reply = session.submit(case, outcome.segment_id, "unknown")
    assert "pathology" not in reply and case.current_frame() == 0
    stored_path = next((sonovlm_server.studies / "labels" / "final").glob(f"{image_id}.*"))
    stored = read_stored_label(stored_path, count) != 0
    assert stored.shape == (count, rows, cols)
    np.testing.assert_array_equal(stored[3], lesion)
    np.testing.assert_array_equal(stored[1], other)
    assert not stored[[0, 2, 4]].any()
    info = session.client._json("GET", "/datastore/", query={"output": "all"})
    record = info["objects"][image_id]["labels"]["final"]["info"] if "objects" in info else None
    if record is not None:
        assert record.get("annotated_frames") == [1, 3]


def test_volume_already_in_slicer_is_uploaded_and_segmented(session, slicer_scene):
    rows, cols = 80, 100
    volume = slicer_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "loaded by user")
    pixels = np.random.default_rng(9).integers(30, 120, (1, rows, cols), dtype=np.uint8)
    slicer.util.updateVolumeFromArray(volume, pixels)
    volume.SetSpacing(0.25, 0.25, 1.0)
    volume.SetIJKToRASDirections(-1, 0, 0, 0, -1, 0, 0, 0, 1)

    case = session.open_volume(volume)
    # Item 7: a random id kept on the volume, never the node name (names repeat across patients).
    assert case.volume is volume and case.image_id.startswith("slicer-") and "loaded" not in case.image_id
    assert volume.GetAttribute("SonoVLM.uploadId") == case.image_id
    assert session.upload_id(volume) == case.image_id
    outcome = session.auto_segment(case, "lymph_node")
    assert (outcome.result["rows"], outcome.result["cols"]) == (rows, cols)
    assert session.scene_logic.segment_mask(case, outcome.segment_id).shape == (rows, cols)


def test_training_progress_until_a_new_model_is_served(session):
    before = session.connect().model_version
    session.start_training("segmentation", max_epochs=1)
    deadline = time.monotonic() + 150
    progress = session.training()
    while progress.running and time.monotonic() < deadline:
        time.sleep(1.0)
        progress = session.training()
    assert progress.state == "DONE", progress
    assert progress.percent == 100 and progress.model == "segmentation"
    assert progress.epoch == 1 and progress.total_epochs == 1 and "Dice" in progress.metric
    # Published (the first trained model always is); the server loads it in the background, so
    # the panel shows it a moment after training reports DONE.
    deadline = time.monotonic() + 30
    after = session.connect().model_version
    while after == before and time.monotonic() < deadline:
        time.sleep(0.5)
        after = session.connect().model_version
    assert after and after != before


def test_no_case_left_is_not_an_error_but_an_unknown_strategy_is(session, sonovlm_server, tmp_path):
    """Labels every image still unlabelled on the shared server: keep this test last."""
    from PIL import Image
    from sonovlm.io import load_image
    from SonoVLMLib.client import SonoVLMClientError

    with pytest.raises(SonoVLMClientError) as raised:
        session.next_case("hardest-first")
    assert raised.value.status == 404
    for _ in range(50):  # label what is left, as other annotators would
        try:
            sample = session.client.next_sample("random")
        except SonoVLMClientError as error:
            assert error.status == 404
            break
        image = load_image(session.client.download_image(sample["id"], str(tmp_path)))
        mask = np.zeros((image.height, image.width), np.uint8)
        mask[: image.height // 2, : image.width // 3] = 1
        Image.fromarray(mask).save(tmp_path / "label.png")
        session.client.save_label(sample["id"], str(tmp_path / "label.png"), "lymph_node")
    assert session.next_case("random") is None
