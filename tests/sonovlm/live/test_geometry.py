"""OpenIGTLink IMAGE <-> LiveFrame: pixels, spacing, pose and timestamp survive the wire."""

from __future__ import annotations

import json

import numpy as np
import pyigtl
import pytest
from sonovlm.errors import SonoInputError
from sonovlm.live import (
    StreamGeometry,
    frame_from_message,
    image_message,
    label_message,
    string_message,
)
from sonovlm.live.geometry import check_device_name


def wire(message):
    """``message`` packed and read back by pyigtl, as a receiver gets it."""
    packed = message.pack()
    header = pyigtl.MessageBase.parse_header(packed[: pyigtl.MessageBase.IGTL_HEADER_SIZE])
    received = pyigtl.MessageBase.create_message(header["message_type"])
    received.unpack(header, packed[pyigtl.MessageBase.IGTL_HEADER_SIZE :])
    return received


def _pixels(rows=30, cols=40, channels=None, dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    shape = (rows, cols) if channels is None else (rows, cols, channels)
    return rng.integers(0, 200, size=shape).astype(dtype)


def test_grey_frame_keeps_pixels_spacing_and_timestamp():
    pixels = _pixels()
    message = wire(image_message(pixels, (0.2, 0.15), origin=(5.0, -3.0, 10.0), timestamp=1700000000.25))
    frame = frame_from_message(message, received_monotonic=12.5)
    assert frame.image.frames.shape == (1, 30, 40) and frame.image.channels == 1
    np.testing.assert_array_equal(frame.image.frames[0], pixels)
    assert frame.geometry == StreamGeometry(30, 40, 1, "uint8", frame.geometry.spacing_mm)
    np.testing.assert_allclose(frame.geometry.spacing_mm, (0.2, 0.15), rtol=1e-6)
    np.testing.assert_allclose(frame.image.spacing_mm, (0.2, 0.15), rtol=1e-6)
    assert frame.image.imaging_bbox() == (0, 0, 40, 30)
    np.testing.assert_allclose(frame.ijk_to_world[:3, 3], (5.0, -3.0, 10.0), atol=1e-4)
    assert frame.timestamp == pytest.approx(1700000000.25, abs=1e-6)
    assert frame.device_name == "Image_Reference" and frame.received_monotonic == 12.5
    assert frame.coordinate_system == "lps"


@pytest.mark.parametrize("components", [3, 4])
def test_rgb_and_rgba_frames_arrive_as_rgb(components):
    pixels = _pixels(channels=components)
    frame = frame_from_message(wire(image_message(pixels, (0.1, 0.1))))
    assert frame.image.frames.shape == (1, 30, 40, 3) and frame.geometry.channels == 3
    np.testing.assert_array_equal(frame.image.frames[0], pixels[..., :3])
    assert frame.image.grey(0).shape == (30, 40)


def test_big_endian_uint16_becomes_native():
    """OpenIGTLink voxels may be big-endian (pyigtl reads them so, it cannot send them)."""
    pixels = _pixels(dtype=np.uint16)
    packed = bytearray(image_message(pixels, (0.1, 0.1)).pack())
    size = pyigtl.MessageBase.IGTL_HEADER_SIZE
    packed[size + 4] = 1  # image header: endianness 1 = big
    packed[-pixels.nbytes :] = pixels.astype(">u2").tobytes()
    message = pyigtl.ImageMessage()
    message.unpack(pyigtl.MessageBase.parse_header(bytes(packed[:size])), bytes(packed[size:]))
    assert message.image.dtype == np.dtype(">u2")
    frame = frame_from_message(message)
    assert frame.image.frames.dtype == np.dtype("=u2")
    np.testing.assert_array_equal(frame.image.frames[0], pixels)


def test_one_by_one_spacing_reads_as_uncalibrated():
    frame = frame_from_message(wire(image_message(_pixels(), (1.0, 1.0))))
    assert frame.geometry.spacing_mm is None and frame.image.spacing_mm is None


def test_rotated_pose_gives_the_axis_lengths_as_spacing():
    angle = np.deg2rad(30)
    matrix = np.eye(4)
    matrix[:3, 0] = 0.3 * np.array([np.cos(angle), np.sin(angle), 0.0])
    matrix[:3, 1] = 0.2 * np.array([-np.sin(angle), np.cos(angle), 0.0])
    message = pyigtl.ImageMessage(image=_pixels()[np.newaxis], ijk_to_world_matrix=matrix)
    frame = frame_from_message(wire(message))
    np.testing.assert_allclose(frame.geometry.spacing_mm, (0.2, 0.3), rtol=1e-6)


def test_labelmap_has_the_frames_geometry_and_timestamp():
    sent = wire(image_message(_pixels(), (0.2, 0.15), origin=(1.0, 2.0, 3.0), timestamp=1700000001.5))
    frame = frame_from_message(sent)
    mask = np.zeros((30, 40), np.uint8)
    mask[5:10, 6:20] = 2
    label = wire(label_message(mask, frame, "SonoVLMLabel"))
    assert label.device_name == "SonoVLMLabel" and label.image.shape == (1, 30, 40)
    assert label.image.dtype == np.uint8
    np.testing.assert_array_equal(label.image[0], mask)
    np.testing.assert_allclose(label.ijk_to_world_matrix, sent.ijk_to_world_matrix, atol=1e-5)
    assert label.timestamp == pytest.approx(sent.timestamp, abs=1e-6)
    assert label.world_coordinate_system == sent.world_coordinate_system


def test_labelmap_of_another_size_is_refused():
    frame = frame_from_message(wire(image_message(_pixels(), (0.1, 0.1))))
    with pytest.raises(SonoInputError, match="does not match the frame"):
        label_message(np.zeros((3, 3), np.uint8), frame, "SonoVLMLabel")


def test_string_message_is_one_json_line():
    message = wire(string_message({"long_axis_mm": 12.5, "lesion": True}, "SonoVLMStatus", timestamp=5.0))
    assert message.device_name == "SonoVLMStatus" and message.timestamp == pytest.approx(5.0)
    assert json.loads(message.string) == {"long_axis_mm": 12.5, "lesion": True}
    with pytest.raises(SonoInputError, match="STRING"):
        string_message({"x": "a" * 70000}, "SonoVLMStatus")


def test_geometry_comparison():
    a = StreamGeometry(30, 40, 1, "uint8", (0.1, 0.1))
    assert a.same_as(StreamGeometry(30, 40, 1, "uint8", (0.1000001, 0.1)))
    assert not a.same_as(None)
    assert not a.same_as(StreamGeometry(30, 41, 1, "uint8", (0.1, 0.1)))
    assert not a.same_as(StreamGeometry(30, 40, 3, "uint8", (0.1, 0.1)))
    assert not a.same_as(StreamGeometry(30, 40, 1, "uint8", (0.12, 0.1)))
    assert not a.same_as(StreamGeometry(30, 40, 1, "uint8", None))
    assert a.to_dict()["spacing_mm"] == [0.1, 0.1]


def test_bad_messages_are_refused_naming_the_device():
    with pytest.raises(SonoInputError, match="'Probe'.*expected an IMAGE"):
        frame_from_message(wire(pyigtl.StringMessage("hi", device_name="Probe")))
    volume = pyigtl.ImageMessage(image=np.zeros((2, 4, 4), np.uint8), device_name="Probe")
    with pytest.raises(SonoInputError, match="'Probe'.*one slice"):
        frame_from_message(wire(volume))
    two = pyigtl.ImageMessage(image=np.zeros((1, 4, 4, 2), np.uint8), device_name="Probe")
    with pytest.raises(SonoInputError, match="'Probe'.*2 components"):
        frame_from_message(wire(two))
    flat = np.diag([0.0, 0.1, 1.0, 1.0])
    zero = pyigtl.ImageMessage(
        image=np.zeros((1, 4, 4), np.uint8), ijk_to_world_matrix=flat, device_name="Probe"
    )
    with pytest.raises(SonoInputError, match="'Probe'.*spacing must be positive"):
        frame_from_message(wire(zero))


@pytest.mark.parametrize("name", ["", "x" * 21, "Sonde\u00e9"])
def test_device_names_must_fit_the_header(name):
    with pytest.raises(SonoInputError, match="--label-device"):
        check_device_name(name, "--label-device")
