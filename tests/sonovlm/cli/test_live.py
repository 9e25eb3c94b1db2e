"""``sonovlm live``: option errors, and the command itself as a subprocess between a pyigtl
simulated PLUS server and a pyigtl viewer, stopped by its PID (SIGTERM)."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyigtl
import pytest
from sonovlm.cli.main import main
from sonovlm.cli.model_options import resolve_weights
from sonovlm.demo_model import demo_checkpoint
from sonovlm.io import load_image, load_mask
from sonovlm.live.simulator import SimulatedPlusServer, frames_from_studies
from sonovlm.measure import measure_lesion
from sonovlm.sample_data import read_cases, write_sample_studies


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--igtl-in", "18944"], "--igtl-in"),
        (["--igtl-in", "localhost:port"], "--igtl-in"),
        (["--igtl-out", "70000"], "--igtl-out"),
        (["--organ", "kidney"], "kidney"),
        (["--smoothing", "1.5"], "--smoothing"),
        (["--max-frames", "0"], "--max-frames"),
        (["--duration", "-1"], "--duration"),
    ],
)
def test_bad_options_exit_2_naming_the_option(capsys, options, named):
    base = {"--igtl-in": "127.0.0.1:18944", "--igtl-out": "18945", "--organ": "lymph_node"}
    args = ["live"]
    for key, value in base.items():
        if key not in options:
            args += [key, value]
    assert main(args + options + ["--backbone", "tiny"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and named in err and "Traceback" not in err


def test_weights_demo_is_the_packaged_model():
    assert resolve_weights("demo") == str(demo_checkpoint()) and Path(resolve_weights("demo")).is_file()
    assert resolve_weights("model.safetensors") == "model.safetensors" and resolve_weights(None) is None


def _reader(stream) -> queue.Queue:
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


def test_live_segments_a_simulated_plus_stream_until_stopped_by_pid(tmp_path):
    studies = tmp_path / "studies"
    write_sample_studies(studies, count=1, seed=0, label_every_case=True)  # sample_001: a lymph node
    case = read_cases(studies)[0]
    image = load_image(case.image_path)
    x0, y0, x1, y1 = image.imaging_bbox()
    truth = measure_lesion(load_mask(case.label_path)[y0:y1, x0:x1], image.spacing_mm).to_dict()
    frames = frames_from_studies(studies)
    (rows, cols), (row_mm, col_mm) = frames[0][0].shape, frames[0][1]

    simulator = SimulatedPlusServer(frames, fps=15).start()
    out_port = _free_port()
    log = open(tmp_path / "live.log", "w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "sonovlm.cli.main", "live", "--igtl-in", f"127.0.0.1:{simulator.port}"]
        + ["--igtl-out", str(out_port), "--organ", "lymph_node", "--weights", "demo", "--threads", "1"]
        + ["--forward-image"],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    viewer = None
    try:
        lines = _reader(process.stdout)
        first = lines.get(timeout=120)
        assert first is not None, (tmp_path / "live.log").read_text()
        assert json.loads(first) == {"listening": f"127.0.0.1:{out_port}"}
        viewer = pyigtl.OpenIGTLinkClient(host="127.0.0.1", port=out_port)
        statuses = []
        deadline = time.monotonic() + 60
        while len(statuses) < 3 and time.monotonic() < deadline:
            label = viewer.wait_for_message("SonoVLMLabel", timeout=1)
            status = viewer.wait_for_message("SonoVLMStatus", timeout=1)
            if label is None or status is None:
                continue
            payload = json.loads(status.string)
            if payload["frame_timestamp"] != pytest.approx(label.timestamp, abs=1e-6):
                continue
            assert label.image.shape == (1, rows, cols) and label.image.dtype == np.uint8
            np.testing.assert_allclose(np.diag(label.ijk_to_world_matrix)[:3], (col_mm, row_mm, 1), rtol=1e-5)
            assert min(abs(t - label.timestamp) for t in simulator.sent_timestamps) < 1e-6
            frame = viewer.wait_for_message("Image_Reference", timeout=1)  # --forward-image
            assert frame is not None and frame.image.shape == label.image.shape
            np.testing.assert_array_equal(frame.image[0], frames[0][0])
            statuses.append(payload)
        assert len(statuses) == 3
        for payload in statuses:  # the demo model finds the phantom node and measures it
            assert payload["lesion"] and payload["model_card"] == "sonovlm-phantom-demo"
            assert payload["long_axis_mm"] == pytest.approx(truth["long_axis_mm"], rel=0.15)
            assert payload["short_axis_mm"] == pytest.approx(truth["short_axis_mm"], rel=0.25)
            assert payload["confidence"] > 0.5
        assert process.poll() is None
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        rest = []
        while (line := lines.get(timeout=10)) is not None:
            rest.append(line)
        summary = json.loads(rest[-1])
    finally:
        if viewer is not None:
            viewer.stop()
        if process.poll() is None:
            process.kill()
            process.wait()
        simulator.stop()
        log.close()
    assert (
        summary["igtl_in"] == f"127.0.0.1:{simulator.port}" and summary["igtl_out"] == f"127.0.0.1:{out_port}"
    )
    assert summary["processed"] >= 3 and summary["received"] >= summary["processed"]
    assert summary["latency_ms_p50"] > 0 and summary["input_reconnects"] == 0
    assert summary["backbone"] == "small" and summary["adapter"] == "mona"
    stderr = (tmp_path / "live.log").read_text()
    assert "live: connected: connected to the ultrasound stream" in stderr
    assert "Traceback" not in stderr
