"""LiveSegmenter: one frame in, a labelmap and measurements out; stalls and geometry changes told."""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import numpy as np
import pyigtl
import pytest
from sonovlm.errors import SonoInputError
from sonovlm.live import LatestFrameBuffer, LiveSegmenter, frame_from_message, image_message
from sonovlm.measure import measure_lesion


def _frame(rows=60, cols=80, spacing=(0.2, 0.1), timestamp=1700000000.0, arrived=None):
    packed = image_message(np.zeros((rows, cols), np.uint8), spacing, timestamp=timestamp).pack()
    size = pyigtl.MessageBase.IGTL_HEADER_SIZE
    message = pyigtl.ImageMessage()
    message.unpack(pyigtl.MessageBase.parse_header(packed[:size]), packed[size:])
    return frame_from_message(message, time.monotonic() if arrived is None else arrived)


class FakePredictor:
    """Two blobs: a big one (probability 0.9) and a small one (0.7), or what ``probability`` says."""

    model_version = "fake-1"
    backbone_info = {"name": "fake", "untrained": True}
    model_card = None

    def __init__(self, delay_s=0.0, fail_on=None):
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.calls = 0
        self.probability = None

    def segment(self, image, organ, frame=0):
        self.calls += 1
        if self.fail_on is not None and self.calls == self.fail_on:
            raise SonoInputError(image.source, "cannot segment this one")
        if self.delay_s:
            time.sleep(self.delay_s)
        rows, cols = image.frames.shape[1:3]
        if self.probability is not None:
            return SimpleNamespace(probability=np.broadcast_to(self.probability, (rows, cols)).copy())
        probability = np.zeros((rows, cols), np.float32)
        probability[10:30, 10:50] = 0.9
        probability[20:25, 20:25] = 0.2  # a hole, filled by the single-lesion post-processing
        probability[40:45, 60:65] = 0.7
        return SimpleNamespace(probability=probability)


class Recorder:
    def __init__(self):
        self.bundles = []

    def __call__(self, messages, kind="frame"):
        self.bundles.append((kind, list(messages)))

    def events(self):
        return [json.loads(m[0].string)["event"] for kind, m in self.bundles if kind == "event"]

    def frames(self):
        return [m for kind, m in self.bundles if kind == "frame"]


def test_one_frame_gives_a_labelmap_and_its_measurements():
    recorder = Recorder()
    segmenter = LiveSegmenter(FakePredictor(), "thyroid_nodule", recorder)
    frame = _frame(timestamp=1700000123.5)
    result = segmenter.process(frame)
    label, status_message = recorder.frames()[0]
    assert label.device_name == "SonoVLMLabel" and status_message.device_name == "SonoVLMStatus"
    assert label.image.shape == (1, 60, 80) and label.timestamp == frame.timestamp
    np.testing.assert_array_equal(label.ijk_to_world_matrix, frame.ijk_to_world.astype(np.float32))
    expected = np.zeros((60, 80), np.uint8)
    expected[10:30, 10:50] = 3  # thyroid nodule label; the small blob dropped, the hole filled
    np.testing.assert_array_equal(result.mask, expected)
    status = json.loads(status_message.string)
    truth = measure_lesion(expected, (0.2, 0.1)).to_dict()
    for key in ("long_axis_mm", "short_axis_mm", "area_mm2", "long_axis_px"):
        assert status[key] == pytest.approx(truth[key])
    assert status["confidence"] == pytest.approx((0.9 * 775 + 0.2 * 25) / 800, rel=1e-5)
    assert status["frame_timestamp"] == frame.timestamp and status_message.timestamp == frame.timestamp
    assert status["organ"] == "thyroid_nodule" and status["label"] == 3 and status["calibrated"]
    assert status["latency_ms"] >= 0 and status["processed"] == 1 and status["research_use_only"]


def test_forward_image_sends_the_segmented_frame_first():
    recorder = Recorder()
    LiveSegmenter(FakePredictor(), "lymph_node", recorder, forward_image=True).process(_frame(timestamp=7.25))
    image, label, status = recorder.frames()[0]
    assert image.device_name == "Image_Reference" and image.timestamp == label.timestamp == 7.25
    assert image.image.shape == label.image.shape == (1, 60, 80)
    np.testing.assert_array_equal(image.ijk_to_world_matrix, label.ijk_to_world_matrix)
    assert status.device_name == "SonoVLMStatus"


def test_all_components_and_an_empty_frame():
    recorder = Recorder()
    predictor = FakePredictor()
    segmenter = LiveSegmenter(predictor, "lymph_node", recorder, single_lesion=False)
    result = segmenter.process(_frame())
    assert result.mask[42, 62] == 1 and result.mask[22, 22] == 0
    predictor.probability = np.float32(0.1)
    empty = segmenter.process(_frame())
    assert not empty.mask.any()
    assert empty.status["lesion"] is False and empty.status["long_axis_mm"] is None
    assert empty.status["confidence"] == 0.0


def test_uncalibrated_frames_are_measured_in_pixels_only():
    result = LiveSegmenter(FakePredictor(), "lymph_node", Recorder()).process(_frame(spacing=(1.0, 1.0)))
    assert result.status["calibrated"] is False and result.status["long_axis_mm"] is None
    assert result.status["long_axis_px"] > 0


def test_smoothing_averages_frames_and_restarts_on_a_geometry_change():
    recorder = Recorder()
    predictor = FakePredictor()
    segmenter = LiveSegmenter(predictor, "lymph_node", recorder, smoothing=0.5)

    def mask(probability, **frame):
        predictor.probability = np.float32(probability)
        return segmenter.process(_frame(**frame)).mask.any()

    assert mask(1.0) and mask(0.0)  # 1.0, then 0.5: still lesion
    assert not mask(0.0)  # 0.25
    assert mask(1.0)  # 0.625
    assert mask(1.0) and segmenter.smoother.active  # 0.8125
    # Another spacing: the history is dropped (else 0.40625 * 2 = 0.8125 / 2 -> lesion).
    assert not mask(0.0, spacing=(0.3, 0.1))
    assert segmenter.geometry_changes == 1


def test_smoothing_is_off_by_default_and_checked():
    assert LiveSegmenter(FakePredictor(), "lymph_node", Recorder()).smoother is None
    with pytest.raises(SonoInputError, match="--smoothing"):
        LiveSegmenter(FakePredictor(), "lymph_node", Recorder(), smoothing=2.0)
    with pytest.raises(SonoInputError, match="--stall-s"):
        LiveSegmenter(FakePredictor(), "lymph_node", Recorder(), stall_s=0)
    with pytest.raises(SonoInputError, match="organ"):
        LiveSegmenter(FakePredictor(), "kidney", Recorder())


def test_a_geometry_change_is_reported_clearly():
    recorder = Recorder()
    segmenter = LiveSegmenter(FakePredictor(), "lymph_node", recorder, smoothing=0.5)
    segmenter.process(_frame())
    segmenter.process(_frame(rows=64, cols=80, spacing=(0.25, 0.1)))
    assert recorder.events() == ["geometry_changed"] and segmenter.geometry_changes == 1
    kind, (event,) = recorder.bundles[1]
    payload = json.loads(event.string)
    assert event.device_name == "SonoVLMEvent"
    assert "changed from 60x80 (0.2 x 0.1 mm) to 64x80 (0.25 x 0.1 mm)" in payload["message"]
    assert payload["previous"]["rows"] == 60 and payload["current"]["spacing_mm"] == pytest.approx(
        [0.25, 0.1]
    )
    label = recorder.frames()[-1][0]
    assert label.image.shape == (1, 64, 80)


def test_run_reports_the_stream_stopping_and_resuming_and_counts_rejects(wait_until):
    recorder = Recorder()
    predictor = FakePredictor(fail_on=2)
    segmenter = LiveSegmenter(predictor, "lymph_node", recorder, stall_s=0.2)
    buffer: LatestFrameBuffer = LatestFrameBuffer()
    buffer.put(_frame())
    buffer.put(_frame())  # replaces the first before the loop runs: dropped
    stop = threading.Event()
    loop = threading.Thread(target=segmenter.run, args=(buffer, stop), kwargs={"poll_s": 0.02})
    loop.start()
    try:
        assert wait_until(lambda: segmenter.processed == 1, 5)
        assert wait_until(lambda: segmenter.stalls == 1, 5)  # no frame for stall_s
        buffer.put(_frame())  # resumed; the predictor fails on this one (its 2nd call)
        assert wait_until(lambda: segmenter.rejected == 1, 5)
        buffer.put(_frame())
        assert wait_until(lambda: segmenter.processed == 2, 5)
        segmenter.reject("OpenIGTLink IMAGE 'X': a live ultrasound frame is one slice; this image has 3")
    finally:
        stop.set()
        loop.join(5)
    assert recorder.events() == ["stream_stopped", "stream_resumed", "frame_rejected", "frame_rejected"]
    stats = segmenter.stats()
    assert stats["processed"] == 2 and stats["rejected"] == 2 and stats["stalls"] == 1
    assert stats["received"] == 4 and stats["dropped"] == 1
    assert stats["latency_ms_p50"] is not None and stats["fps"] is not None
    rejected = [json.loads(m[0].string) for kind, m in recorder.bundles if kind == "event"][2]
    assert "cannot segment this one" in rejected["message"]
    stopped = [json.loads(m[0].string) for kind, m in recorder.bundles if kind == "event"][0]
    assert "the stream stopped" in stopped["message"] and stopped["seconds"] >= 0.2


def test_run_stops_after_max_frames_or_when_the_buffer_closes():
    segmenter = LiveSegmenter(FakePredictor(), "lymph_node", Recorder())
    buffer: LatestFrameBuffer = LatestFrameBuffer()
    buffer.put(_frame())
    segmenter.run(buffer, threading.Event(), max_frames=1)
    assert segmenter.processed == 1
    buffer.close()
    segmenter.run(buffer, threading.Event())  # returns at once
    assert segmenter.processed == 1


def test_warm_up_runs_the_model_once_off_the_record():
    predictor = FakePredictor()
    segmenter = LiveSegmenter(predictor, "lymph_node", Recorder())
    assert segmenter.warm_up() >= 0 and predictor.calls == 1
    assert segmenter.processed == 0 and segmenter.geometry is None
