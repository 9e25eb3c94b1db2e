"""The simulated PLUS server: sample-data studies streamed as OpenIGTLink IMAGE messages by pyigtl."""

from __future__ import annotations

import numpy as np
import pytest
from sonovlm.errors import SonoInputError
from sonovlm.io import load_image
from sonovlm.live import IgtlClient
from sonovlm.live.simulator import SimulatedPlusServer, frames_from_studies, main
from sonovlm.sample_data import read_cases


def test_frames_are_the_imaging_areas_with_their_spacing(studies):
    frames = frames_from_studies(studies)
    cases = read_cases(studies)
    assert len(frames) == len(cases) == 6
    image = load_image(cases[0].image_path)
    x0, y0, x1, y1 = image.imaging_bbox()
    pixels, spacing = frames[0]
    assert pixels.shape == (y1 - y0, x1 - x0) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels, image.frames[0, y0:y1, x0:x1])
    assert spacing == pytest.approx(image.spacing_mm)
    rgb = frames_from_studies(studies, count=1, rgb=True)[0][0]
    assert rgb.shape == (*pixels.shape, 3) and (rgb[..., 1] == pixels).all()
    nodes = frames_from_studies(studies, organ="lymph_node")
    assert len(nodes) == sum(case.organ == "lymph_node" for case in cases)


def test_bad_studies_and_options_are_named(studies, tmp_path):
    with pytest.raises(SonoInputError, match="organ"):
        frames_from_studies(studies, organ="kidney")
    with pytest.raises(SonoInputError):
        frames_from_studies(tmp_path)
    with pytest.raises(SonoInputError, match="at least one frame"):
        SimulatedPlusServer([])
    frame = [(np.zeros((4, 4), np.uint8), (0.1, 0.1))]
    with pytest.raises(SonoInputError, match="--fps"):
        SimulatedPlusServer(frame, fps=0)
    with pytest.raises(SonoInputError, match="--hold"):
        SimulatedPlusServer(frame, hold=0)
    assert main([str(tmp_path)]) == 2


def test_it_streams_each_frame_hold_times_with_a_moving_origin(wait_until):
    frames = [(np.full((8, 10), value, np.uint8), (0.2, 0.1)) for value in (10, 20)]
    simulator = SimulatedPlusServer(frames, fps=100, hold=3, step_mm=0.5).start()
    received = []
    client = IgtlClient("127.0.0.1", simulator.port, lambda message, arrived: received.append(message))
    client.start()
    try:
        assert wait_until(lambda: len(received) >= 7, 10)
    finally:
        client.stop()
        simulator.stop()
    values = [int(message.image[0, 0, 0]) for message in received[:7]]
    assert values == [10, 10, 10, 20, 20, 20, 10]
    first, second = received[0], received[1]
    assert first.device_name == "Image_Reference" and first.image.shape == (1, 8, 10)
    np.testing.assert_allclose(np.diag(first.ijk_to_world_matrix)[:3], (0.1, 0.2, 1.0), rtol=1e-6)
    assert second.ijk_to_world_matrix[0, 3] - first.ijk_to_world_matrix[0, 3] == pytest.approx(0.5)
    assert second.timestamp > first.timestamp
    assert simulator.sent >= 7 and len(simulator.sent_timestamps) == simulator.sent
