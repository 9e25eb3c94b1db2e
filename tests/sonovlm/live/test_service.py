"""LiveService end to end over real sockets: a pyigtl PLUS simulator in, a pyigtl viewer out.

The simulated PLUS server (pyigtl ``OpenIGTLinkServer``) streams ``sonovlm sample-data`` B-mode
frames; the viewer (pyigtl ``OpenIGTLinkClient``) reads what 3D Slicer's OpenIGTLinkIF would.
"""

from __future__ import annotations

import json
import statistics
import time
import tracemalloc

import numpy as np
import pytest
from sonovlm.live import LiveService
from sonovlm.live.simulator import SimulatedPlusServer, frames_from_studies


@pytest.fixture
def running(tiny_predictor):
    """``start(simulator, **options)``: a LiveService on the simulator's port, stopped afterwards."""
    started = []

    def start(simulator, predictor=None, **options):
        options.setdefault("retry_s", 0.05)
        service = LiveService(
            predictor or tiny_predictor, "lymph_node", "127.0.0.1", simulator.port, 0, **options
        )
        started.append(service)
        return service.start()

    yield start
    for service in started:
        service.stop()


@pytest.fixture
def simulators():
    made = []

    def make(frames, **options):
        simulator = SimulatedPlusServer(frames, **options)
        made.append(simulator)
        return simulator.start()

    yield make
    for simulator in made:
        simulator.stop()


def _labels(viewer, count, timeout=20.0):
    """``count`` (label, status) pairs, each label matched with the status of its frame."""
    pairs = []
    deadline = time.monotonic() + timeout
    while len(pairs) < count and time.monotonic() < deadline:
        label = viewer.wait_for_message("SonoVLMLabel", timeout=1)
        if label is None:
            continue
        status = viewer.wait_for_message("SonoVLMStatus", timeout=2)
        if status is not None and json.loads(status.string)["frame_timestamp"] == pytest.approx(
            label.timestamp, abs=1e-6
        ):
            pairs.append((label, json.loads(status.string)))
    assert len(pairs) == count, f"{len(pairs)} of {count} labelmaps in {timeout} s"
    return pairs


def _events(viewer, wanted, timeout=10.0):
    seen = []
    deadline = time.monotonic() + timeout
    while wanted not in seen and time.monotonic() < deadline:
        event = viewer.wait_for_message("SonoVLMEvent", timeout=0.5)
        if event is not None:
            seen.append(json.loads(event.string)["event"])
    return seen


@pytest.mark.parametrize("rgb", [False, True], ids=["grey", "rgb"])
def test_labelmaps_come_back_with_the_frames_geometry_and_timestamps(
    studies, simulators, running, viewer_factory, rgb
):
    frames = frames_from_studies(studies, count=1, rgb=rgb)
    pixels, (row_mm, col_mm) = frames[0]
    simulator = simulators(frames, fps=20, step_mm=0.5)
    service = running(simulator)
    viewer = viewer_factory(service.out_port)
    sent = simulator.sent_timestamps
    for label, status in _labels(viewer, 4):
        assert label.image.shape == (1, *pixels.shape[:2]) and label.image.dtype == np.uint8
        assert set(np.unique(label.image)) <= {0, 1}  # lymph node label 1
        matrix = label.ijk_to_world_matrix
        np.testing.assert_allclose(np.diag(matrix)[:3], (col_mm, row_mm, 1.0), rtol=1e-5)
        assert matrix[0, 3] / 0.5 == pytest.approx(round(matrix[0, 3] / 0.5), abs=1e-3)  # the pose moves
        assert min(abs(t - label.timestamp) for t in sent) < 1e-6  # the frame's own timestamp
        assert status["organ"] == "lymph_node" and status["calibrated"] is True
        assert status["device"] == "Image_Reference" and status["latency_ms"] > 0
        if status["lesion"]:
            assert status["long_axis_mm"] >= status["short_axis_mm"] > 0
            assert 0.5 <= status["confidence"] <= 1.0
    assert service.stats()["rejected"] == 0 and service.segmenter.geometry.channels == (3 if rgb else 1)


class SlowPredictor:
    """The tiny predictor, 0.15 s slower per frame: a model that cannot keep up."""

    def __init__(self, predictor):
        self.predictor = predictor
        self.model_version = predictor.model_version
        self.backbone_info = predictor.backbone_info
        self.model_card = None

    def segment(self, *args, **kwargs):
        time.sleep(0.15)
        return self.predictor.segment(*args, **kwargs)


def test_a_sender_faster_than_the_model_costs_dropped_frames_not_memory(
    node_frames, simulators, running, tiny_predictor, viewer_factory, wait_until
):
    frames = node_frames[:1]
    frame_bytes = frames[0][0].nbytes
    simulator = simulators(frames, fps=None)  # as fast as the connection takes them
    service = running(simulator, predictor=SlowPredictor(tiny_predictor))
    viewer_factory(service.out_port)
    assert wait_until(lambda: service.segmenter.processed >= 1, 20)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        received_before = service.buffer.received
        most_pending = 0
        samples = []  # traced bytes every ~5 ms
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            most_pending = max(most_pending, service.buffer.pending)
            samples.append(tracemalloc.get_traced_memory()[0])
            time.sleep(0.005)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    stats = service.stats()
    streamed = stats["received"] - received_before
    assert streamed > 60, f"the sender managed only {streamed} frames in 3 s"
    assert most_pending <= 1 and stats["dropped"] > 2 * stats["processed"]
    # What is held does not grow with the frames that arrived: the last half second holds what
    # the first did (medians: a sample may fall inside a model call and its float work arrays).
    # The peak stays far below what queueing the frames would hold.
    sixth = max(1, len(samples) // 6)
    first, last = statistics.median(samples[:sixth]), statistics.median(samples[-sixth:])
    assert last - first < 6 * frame_bytes, f"held memory grew by {(last - first) / 2**20:.1f} MiB"
    assert peak - before < min(48 * frame_bytes, streamed * frame_bytes / 5), (
        f"{(peak - before) / 2**20:.1f} MiB at the peak while {streamed} frames of "
        f"{frame_bytes / 2**10:.0f} KiB arrived"
    )
    counts = service.buffer.counts()
    assert counts["received"] == counts["taken"] + counts["dropped"] + service.buffer.pending


def test_a_dropped_connection_reconnects(node_frames, simulators, running, viewer_factory, wait_until):
    frames = node_frames[:1]
    first = simulators(frames, fps=20)
    service = running(first, stall_s=0.3)
    viewer = viewer_factory(service.out_port)
    _labels(viewer, 2)
    first.stop()
    assert "stream_stopped" in _events(viewer, "stream_stopped")
    assert service.client.connected is False
    restarted_at = time.time()
    second = simulators(frames, port=first.port, fps=20)
    assert wait_until(lambda: service.client.connections == 2, 10)
    label, status = _labels(viewer, 1)[0]
    while label.timestamp < restarted_at:  # a labelmap of the new connection's frames
        label, status = _labels(viewer, 1)[0]
    assert second.sent > 0 and status["frame_timestamp"] >= restarted_at
    stats = service.stats()
    assert stats["input_reconnects"] == 1 and stats["stalls"] >= 1
    events = [event["event"] for event in service.segmenter.events]
    assert events.count("connected") == 2 and "disconnected" in events


def test_a_viewer_that_leaves_and_comes_back_gets_the_newest_labelmap(
    node_frames, simulators, running, viewer_factory, wait_until
):
    simulator = simulators(node_frames[:1], fps=20)
    service = running(simulator)
    first = viewer_factory(service.out_port)
    _labels(first, 1)
    first.stop()
    simulator.pause()
    time.sleep(1.0)  # the frame in hand, if any, is done
    newest = service.segmenter.processed
    second = viewer_factory(service.out_port)
    label = second.wait_for_message("SonoVLMLabel", timeout=5)
    assert label is not None and label.image.shape[1:] == node_frames[0][0].shape
    assert service.segmenter.processed == newest  # not recomputed: the last bundle, resent


def test_the_stream_stopping_and_its_geometry_changing_are_told(
    node_frames, studies, simulators, running, viewer_factory, wait_until
):
    simulator = simulators(node_frames[:1], fps=20)
    service = running(simulator, stall_s=0.3, smoothing=0.5)
    viewer = viewer_factory(service.out_port)
    _labels(viewer, 1)
    simulator.pause()
    assert "stream_stopped" in _events(viewer, "stream_stopped")
    other = frames_from_studies(studies, organ="breast_lesion")[:1]  # another depth: other spacing
    assert other[0][1] != node_frames[0][1]
    simulator.replace_frames(other)
    resumed_at = time.time()
    simulator.resume()
    seen = _events(viewer, "geometry_changed")
    assert "geometry_changed" in seen
    label, _ = _labels(viewer, 1)[0]
    deadline = time.monotonic() + 10
    while label.timestamp < resumed_at and time.monotonic() < deadline:  # not one from before the pause
        label, _ = _labels(viewer, 1)[0]
    np.testing.assert_allclose(label.ijk_to_world_matrix[1, 1], other[0][1][0], rtol=1e-5)
    logged = [event for event in service.segmenter.events if event["event"] == "geometry_changed"]
    assert "the stream's frames changed from" in logged[0]["message"]
    assert service.stats()["geometry_changes"] == 1 and service.stats()["stalls"] == 1
