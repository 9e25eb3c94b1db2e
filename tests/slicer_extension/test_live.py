"""The Live panel's logic (SonoVLMLib/live.py) on Slicer's MRML core, fed as 3D Slicer's
OpenIGTLinkIF feeds it.

:class:`OpenIGTLinkIF` below stands in for the connector node. It takes the bytes ``sonovlm live``
and PLUS put on the wire (real pyigtl messages, made by ``sonovlm.live``'s own code) and updates
the scene the way these files do (read, not copied):

* openigtlink/SlicerOpenIGTLink ``OpenIGTLinkIF/MRML/vtkMRMLIGTLConnectorNode.cxx``:
  ``CreateNewMRMLNodeForDevice`` (IMAGE: ``GetFirstNode(device, "vtkMRMLScalarVolumeNode")`` or
  a new scalar volume named after the device with a grey scalar display, vector volume for
  more than one component; STRING: ``GetFirstNode(device, "vtkMRMLTextNode")`` or a new text
  node; name set before ``AddNode``) and ``ProcessIncomingDeviceModifiedEvent`` (inside
  ``StartModify``/``EndModify``: ``SetIJKToRASMatrix``, ``SetAndObserveImageData``, image data
  spacing 1 and origin 0, ``Modified()``; ``SetEncoding``, ``SetText``, ``Modified()``);
* IGSIO/OpenIGTLinkIO ``Converter/igtlioImageConverter.cxx``: ``IGTLToVTKImageData`` (pixels
  copied into the device's ``vtkImageData``, a new one only when size, type or components
  change, then ``Modified()``) and ``IGTLToVTKTransform`` (IJK-to-RAS = the message's direction
  columns times their spacing, origin = the message's image centre shifted back by half the
  image; the message's coordinate-system byte is not looked at).
"""

from __future__ import annotations

import json
import struct
import types

import numpy as np
import pytest

pytest.importorskip("slicer", reason="the slicer-core test extra is not installed")

import pyigtl  # noqa: E402
import slicer  # noqa: E402
import vtk  # noqa: E402
from sonovlm.live.geometry import frame_from_message, image_message, string_message  # noqa: E402
from sonovlm.live.loop import LiveSegmenter  # noqa: E402
from SonoVLMLib import live  # noqa: E402
from SonoVLMLib.geometry import volume_ijk_to_ras  # noqa: E402
from SonoVLMLib.organs import ORGAN_LABELS, ORGAN_TAG, segment_colour, segment_name  # noqa: E402
from SonoVLMLib.scene import UltrasoundSceneLogic, read_mask  # noqa: E402
from SonoVLMLib.tasks import run_steps  # noqa: E402
from SonoVLMLib.workflow import AnnotationSession  # noqa: E402
from vtk.util import numpy_support  # noqa: E402

ROWS, COLS = 40, 56
SPACING = (0.25, 0.2)  # (row_mm, col_mm)
ORGAN = "thyroid_nodule"

#: OpenIGTLink IMAGE scalar types (the protocol's numbers) -> NumPy and VTK types.
SCALAR_TYPES = {
    2: (np.int8, vtk.VTK_SIGNED_CHAR),
    3: (np.uint8, vtk.VTK_UNSIGNED_CHAR),
    4: (np.int16, vtk.VTK_SHORT),
    5: (np.uint16, vtk.VTK_UNSIGNED_SHORT),
    10: (np.float32, vtk.VTK_FLOAT),
}


class OpenIGTLinkIF:
    """What one OpenIGTLinkIF client connector does with the messages it receives (see the
    module docstring for the files followed)."""

    def __init__(self, scene):
        self.scene = scene
        self.images: dict[str, vtk.vtkImageData] = {}  # the IMAGE devices' content images
        self.nodes: dict[str, object] = {}  # device -> the node registered for it

    def receive(self, *messages):
        """One ``PeriodicProcess``: every message of the batch is applied, then each node's
        ``EndModify`` fires its events (as ``PendingNodeModifications``)."""
        pending = []
        for message in messages:
            wire = message.pack()
            header = pyigtl.MessageBase.parse_header(wire[: pyigtl.MessageBase.IGTL_HEADER_SIZE])
            body = wire[pyigtl.MessageBase.IGTL_HEADER_SIZE :]
            if header["message_type"] == "IMAGE":
                node = self._image(header["device_name"], body)
            elif header["message_type"] == "STRING":
                node = self._string(header["device_name"], body)
            else:
                raise AssertionError(f"not a message sonovlm live or PLUS sends: {header['message_type']}")
            pending.append((node, node.StartModify()))
        for node, was_modifying in reversed(pending):
            node.EndModify(was_modifying)

    # IGTLToVTKImageData + IGTLToVTKTransform, then the connector's IMAGE branches.
    def _image(self, device, body):
        fields = struct.unpack("> H B B B B H H H 12f 6H", body[:72])
        components, scalar_type, endian = fields[1], fields[2], fields[3]
        size = fields[5:8]  # i (columns), j (rows), k
        t, s, n, c = (np.array(fields[8 + 3 * a : 11 + 3 * a], dtype=np.float64) for a in range(4))
        numpy_type, vtk_type = SCALAR_TYPES[scalar_type]
        pixels = np.frombuffer(
            body[72:], dtype=np.dtype(numpy_type).newbyteorder(">" if endian == 1 else "<")
        )
        image = self.images.get(device)
        if (
            image is None
            or image.GetDimensions() != tuple(size)
            or image.GetScalarType() != vtk_type
            or image.GetNumberOfScalarComponents() != components
        ):
            image = vtk.vtkImageData()
            image.SetDimensions(*size)
            image.SetOrigin(0, 0, 0)
            image.SetSpacing(1, 1, 1)
            image.AllocateScalars(vtk_type, components)
            self.images[device] = image
        target = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
        target[...] = pixels.astype(numpy_type).reshape(target.shape)
        image.Modified()
        ijk_to_ras = np.eye(4)
        ijk_to_ras[:3, 0], ijk_to_ras[:3, 1], ijk_to_ras[:3, 2] = t, s, n
        ijk_to_ras[:3, 3] = c - (t * (size[0] - 1) + s * (size[1] - 1) + n * (size[2] - 1)) / 2.0
        matrix = vtk.vtkMatrix4x4()
        for r in range(4):
            for col in range(4):
                matrix.SetElement(r, col, ijk_to_ras[r, col])

        node = self.nodes.get(device)
        if node is None:  # CreateNewMRMLNodeForDevice
            class_name = "vtkMRMLVectorVolumeNode" if components > 1 else "vtkMRMLScalarVolumeNode"
            node = self.scene.GetFirstNode(device, class_name)
            if node is None:
                node = self.scene.CreateNodeByClass(class_name)
                node.UnRegister(None)
                node.SetIJKToRASMatrix(matrix)
                node.SetAndObserveImageData(image)
                node.SetName(device)
                node.SetDescription("Received by OpenIGTLink")
                self.scene.AddNode(node)
                display_class = (
                    "vtkMRMLVectorVolumeDisplayNode" if components > 1 else "vtkMRMLScalarVolumeDisplayNode"
                )
                display = self.scene.AddNewNodeByClass(display_class)
                if components == 1:
                    display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeGrey")
                node.SetAndObserveDisplayNodeID(display.GetID())
            self.nodes[device] = node
        # ProcessIncomingDeviceModifiedEvent
        was_modifying = node.StartModify()
        node.SetIJKToRASMatrix(matrix)
        node.SetAndObserveImageData(image)
        node.GetImageData().SetSpacing(1, 1, 1)
        node.GetImageData().SetOrigin(0, 0, 0)
        node.Modified()
        node.EndModify(was_modifying)
        return node

    def _string(self, device, body):
        encoding, length = struct.unpack("> H H", body[:4])
        text = body[4 : 4 + length].decode("utf-8")
        node = self.nodes.get(device)
        if node is None:
            node = self.scene.GetFirstNode(device, "vtkMRMLTextNode")
            if node is None:
                node = self.scene.CreateNodeByClass("vtkMRMLTextNode")
                node.UnRegister(None)
                node.SetEncoding(encoding)
                node.SetText(text)
                node.SetName(device)
                node.SetDescription("Received by OpenIGTLink")
                self.scene.AddNode(node)
            self.nodes[device] = node
        was_modifying = node.StartModify()
        node.SetEncoding(encoding)
        node.SetText(text)
        node.Modified()
        node.EndModify(was_modifying)
        return node


class FakeClock:
    def __init__(self, now=100.0):
        self.now = now

    def __call__(self):
        return self.now


class LesionModel:
    """A stand-in Predictor: a fixed lesion probability (ellipse) on every frame."""

    model_version = "test-1"
    backbone_info = {"untrained": True}
    model_card = None

    def __init__(self, rows=ROWS, cols=COLS):
        y, x = np.mgrid[:rows, :cols]
        self.probability = ((y - rows * 0.45) / (rows * 0.22)) ** 2 + (
            (x - cols * 0.5) / (cols * 0.3)
        ) ** 2 <= 1
        self.probability = self.probability.astype(np.float32) * 0.9

    def segment(self, image, organ, frame=0):
        return types.SimpleNamespace(probability=self.probability)


class Stream:
    """PLUS's image (``sonovlm.live.geometry.image_message``) and ``sonovlm live``'s answer to it
    (a real :class:`LiveSegmenter`), as OpenIGTLinkIF receives them."""

    def __init__(self, scene, rows=ROWS, cols=COLS, organ=ORGAN):
        self.connector = OpenIGTLinkIF(scene)
        self.segmenter = LiveSegmenter(LesionModel(rows, cols), organ, self._published)
        self.sent = []
        self.rng = np.random.default_rng(3)
        self.rows, self.cols = rows, cols

    def _published(self, messages, kind):
        self.sent.extend(messages)

    def image(self, origin=(10.0, -4.0, 2.5), pixels=None, spacing=SPACING, timestamp=1.7e9):
        pixels = (
            self.rng.integers(0, 255, (self.rows, self.cols), dtype=np.uint8) if pixels is None else pixels
        )
        message = image_message(pixels, spacing, origin=origin, timestamp=timestamp)
        self.connector.receive(message)
        return message, pixels

    def label(self, message):
        """``sonovlm live`` segments ``message``: the labelmap and the status in one batch."""
        self.sent = []
        result = self.segmenter.process(frame_from_message(message, received_monotonic=0.0))
        self.connector.receive(*self.sent)
        return result

    def frame(self, **kwargs):
        message, pixels = self.image(**kwargs)
        return message, pixels, self.label(message)


@pytest.fixture
def scene_logic(slicer_scene):
    return UltrasoundSceneLogic(slicer_scene)


@pytest.fixture
def live_logic(scene_logic):
    return live.LiveLogic(scene_logic)


def matrix_of(node):
    return volume_ijk_to_ras(node)


# ---------------------------------------------------------------- how the nodes arrive


def test_the_stand_in_connector_places_images_as_pyigtl_reads_them(slicer_scene):
    """The IJK-to-RAS OpenIGTLinkIF gives a node is the matrix sonovlm live sent (the frame's),
    to the float32 precision of the wire; one ModifiedEvent per node and batch."""
    stream = Stream(slicer_scene)
    message, pixels = stream.image(origin=(3.0, 5.0, -7.0))
    node = slicer_scene.GetFirstNode(live.IMAGE_DEVICE, "vtkMRMLScalarVolumeNode")
    assert node.GetClassName() == "vtkMRMLScalarVolumeNode" and node.GetName() == "Image_Reference"
    expected = np.diag([SPACING[1], SPACING[0], 1.0, 1.0])
    expected[:3, 3] = (3.0, 5.0, -7.0)
    np.testing.assert_allclose(matrix_of(node), expected, atol=1e-5)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node)[0], pixels)
    events = []
    node.AddObserver(vtk.vtkCommand.ModifiedEvent, lambda caller, event: events.append(event))
    stream.label(message)
    stream.image()
    assert events == ["ModifiedEvent"]
    label = slicer_scene.GetFirstNode(live.LABEL_DEVICE, "vtkMRMLScalarVolumeNode")
    # Without a node made beforehand the label is a plain (grey) scalar volume, not a labelmap.
    assert label.GetClassName() == "vtkMRMLScalarVolumeNode"
    np.testing.assert_allclose(matrix_of(label), expected, atol=1e-5)


def test_a_labelmap_node_made_first_is_the_one_the_label_arrives_in(slicer_scene, live_logic):
    node = live_logic.ensure_label_node()
    assert node.IsA("vtkMRMLLabelMapVolumeNode") and node.GetName() == live.LABEL_DEVICE
    table = node.GetDisplayNode().GetColorNode()
    assert table.GetName() == live.COLOUR_TABLE_NAME
    for organ, value in ORGAN_LABELS.items():
        colour = [0.0] * 4
        table.GetColor(value, colour)
        assert colour[:3] == pytest.approx(segment_colour(organ), abs=1 / 255)  # 8 bits a channel
        assert table.GetColorName(value) == segment_name(organ)
    assert live_logic.ensure_label_node() is node and live_logic.organ_colour_table() is table
    stream = Stream(slicer_scene)
    stream.frame()
    assert slicer_scene.GetFirstNode(live.LABEL_DEVICE, "vtkMRMLScalarVolumeNode") is node
    assert set(np.unique(slicer.util.arrayFromVolume(node))) == {0, ORGAN_LABELS[ORGAN]}
    assert slicer_scene.GetNumberOfNodesByClass("vtkMRMLLabelMapVolumeNode") == 1


# ---------------------------------------------------------------- monitoring


def test_fps_over_a_sliding_window_of_label_updates(slicer_scene):
    clock = FakeClock(100.0)
    monitor = live.LiveMonitor(slicer_scene, clock=clock, window_s=2.0, stall_s=2.0)
    monitor.start()  # before the stream: the nodes are picked up as OpenIGTLinkIF adds them
    assert monitor.reading().missing and "Waiting for" in monitor.reading().message_text()
    stream = Stream(slicer_scene)
    for index in range(20):  # 10 frames per second for 1.9 s
        clock.now = 100.0 + index * 0.1
        stream.frame()
    assert (
        monitor.image_node.GetName() == "Image_Reference" and monitor.label_node.GetName() == "SonoVLMLabel"
    )
    assert monitor.frames == 20
    assert monitor.fps(now=101.95) == pytest.approx(10.0)
    # The image alone (PLUS keeps streaming while the model works) is not a segmented frame.
    stream.image()
    assert monitor.frames == 20
    # 20 per second from here: after one window only the new rate is left.
    for index in range(1, 41):
        clock.now = 101.9 + index * 0.05
        stream.frame()
    assert monitor.fps(now=clock.now) == pytest.approx(20.0)
    assert monitor.fps(now=clock.now + 0.5) == pytest.approx(20.0)  # 1.5 s of 20 fps still in the window
    reading = monitor.reading(now=clock.now + 2.5)
    assert reading.fps is None and reading.stalled and reading.since_last_s == pytest.approx(2.5)
    assert reading.fps_text().startswith("stopped (no labelmap for 2.5 s")
    # A rename modifies the node, not its pixels: not a frame.
    monitor.label_node.SetName(live.LABEL_DEVICE)
    monitor.label_node.Modified()
    assert monitor.frames == 60
    monitor.stop()


def test_latency_and_measurements_are_read_from_the_status(slicer_scene):
    clock = FakeClock()
    monitor = live.LiveMonitor(slicer_scene, clock=clock)
    monitor.start()
    stream = Stream(slicer_scene)
    for _ in range(3):
        clock.now += 0.1
        _, _, result = stream.frame()
    status = monitor.status
    assert status is not None and status.latency_ms == pytest.approx(result.status["latency_ms"])
    assert status.organ == ORGAN and status.lesion and status.calibrated and status.untrained
    assert status.long_axis_mm == pytest.approx(result.status["long_axis_mm"])
    assert status.short_axis_mm == pytest.approx(result.status["short_axis_mm"])
    assert status.confidence == pytest.approx(0.9)
    assert status.frame_timestamp == pytest.approx(1.7e9)
    reading = monitor.reading()
    assert reading.latency_text().startswith(f"{result.status['latency_ms']:.0f} ms")
    assert reading.message_text().startswith(
        f"Thyroid nodule: long {result.status['long_axis_mm']:.1f} mm, "
        f"short {result.status['short_axis_mm']:.1f} mm"
    )
    assert "untrained model" in reading.message_text()
    assert reading.fps_text() == f"10.0 fps (server {result.status['fps']:.1f} fps)"
    monitor.stop()


def test_a_status_with_a_known_latency(slicer_scene):
    payload = {"event": "frame", "organ": "lymph_node", "lesion": False, "latency_ms": 41.5, "fps": 12.0}
    OpenIGTLinkIF(slicer_scene).receive(string_message(payload, live.STATUS_DEVICE))
    monitor = live.LiveMonitor(slicer_scene)
    monitor.start()  # the node's current text is read at start
    assert monitor.status.latency_ms == 41.5 and monitor.status.server_fps == 12.0
    assert monitor.reading().latency_text() == "42 ms (frame arrival to label sent, server side)"
    assert monitor.status.measurement_text() == "no lesion"
    monitor.stop()


@pytest.mark.parametrize(
    "text, needle",
    [
        ("{not json", "SonoVLMStatus: not JSON (Expecting property name enclosed in double quotes"),
        ("", "SonoVLMStatus: the text is empty"),
        ("[1, 2]", "SonoVLMStatus: expected a JSON object, got list"),
        ('{"event": "stream_stopped", "message": "x"}', "expected a frame status"),
        ('{"event": "frame", "latency_ms": "fast"}', "'latency_ms' must be a finite number or null"),
        ('{"event": "frame", "organ": 3}', "'organ' must be a string"),
    ],
)
def test_malformed_status_gives_a_clear_error_and_keeps_the_last_status(slicer_scene, text, needle):
    connector = OpenIGTLinkIF(slicer_scene)
    good = {"event": "frame", "organ": ORGAN, "lesion": False, "latency_ms": 30.0}
    connector.receive(string_message(good, live.STATUS_DEVICE))
    monitor = live.LiveMonitor(slicer_scene)
    monitor.start()
    connector.receive(pyigtl.StringMessage(text, device_name=live.STATUS_DEVICE))
    reading = monitor.reading()
    assert needle in reading.error and reading.message_text() == reading.error
    assert reading.status.latency_ms == 30.0
    with pytest.raises(live.LiveMessageError, match="SonoVLMStatus"):
        live.parse_status(text)
    connector.receive(string_message(good, live.STATUS_DEVICE))
    assert monitor.reading().error is None
    monitor.stop()


def test_stream_stopped_and_geometry_changed_events_are_shown(slicer_scene):
    """The events sonovlm live sends (LiveSegmenter.run / _check_geometry), through the events
    device's text node."""
    clock = FakeClock()
    monitor = live.LiveMonitor(slicer_scene, clock=clock)
    monitor.start()
    stream = Stream(slicer_scene)
    stream.frame()

    def send_events():
        stream.connector.receive(*[m for m in stream.sent if m.device_name == live.EVENT_DEVICE])

    # The frame size changes (another depth setting on the scanner): geometry_changed.
    stream.rows, stream.cols = ROWS + 8, COLS
    stream.segmenter.predictor = LesionModel(ROWS + 8, COLS)
    message, _ = stream.image()
    stream.sent = []
    stream.segmenter._check_geometry(frame_from_message(message).geometry)
    send_events()
    event = monitor.reading().event
    assert event.name == "geometry_changed" and event.warning
    text = monitor.reading().message_text()
    assert text.startswith("Geometry changed: the stream's frames changed from 40x56")
    # No frame for stall_s: stream_stopped, then stream_resumed.
    stream.sent = []
    stream.segmenter.event("stream_stopped", message="no ultrasound frame for 2.3 s: the stream stopped")
    send_events()
    assert monitor.reading().message_text() == (
        "Stream stopped: no ultrasound frame for 2.3 s: the stream stopped"
    )
    stream.sent = []
    stream.segmenter.event("stream_resumed", message="ultrasound frames arrive again")
    send_events()
    assert not monitor.reading().event.warning
    assert [e.name for e in monitor.events] == ["geometry_changed", "stream_stopped", "stream_resumed"]
    stream.connector.receive(pyigtl.StringMessage("oops", device_name=live.EVENT_DEVICE))
    assert monitor.reading().error.startswith("SonoVLMEvent: not JSON")
    monitor.stop()


def test_picked_nodes_win_over_device_names(slicer_scene):
    stream = Stream(slicer_scene)
    stream.frame()
    other = slicer_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "My probe")
    slicer.util.updateVolumeFromArray(other, np.zeros((1, ROWS, COLS), np.uint8))
    monitor = live.LiveMonitor(slicer_scene, image_node=other)
    monitor.start()
    assert monitor.image_node is other and monitor.label_node.GetName() == live.LABEL_DEVICE
    slicer_scene.RemoveNode(other)
    assert monitor.image_node is None and monitor.reading().missing == ("the ultrasound image",)
    monitor.stop()


def test_stop_removes_every_observer(slicer_scene):
    clock = FakeClock()
    stream = Stream(slicer_scene)
    stream.frame()
    nodes = [
        slicer_scene.GetFirstNode(live.IMAGE_DEVICE, "vtkMRMLScalarVolumeNode"),
        slicer_scene.GetFirstNode(live.LABEL_DEVICE, "vtkMRMLScalarVolumeNode"),
        slicer_scene.GetFirstNode(live.STATUS_DEVICE, "vtkMRMLTextNode"),
    ]
    before = [node.HasObserver(vtk.vtkCommand.ModifiedEvent) for node in nodes]
    scene_before = slicer_scene.HasObserver(slicer.vtkMRMLScene.NodeAddedEvent)
    updates = []
    monitor = live.LiveMonitor(slicer_scene, clock=clock, on_update=lambda: updates.append(1))
    monitor.start()
    assert all(node.HasObserver(vtk.vtkCommand.ModifiedEvent) for node in nodes)
    clock.now += 0.1
    stream.frame()
    assert monitor.frames == 1 and updates
    monitor.stop()
    assert [node.HasObserver(vtk.vtkCommand.ModifiedEvent) for node in nodes] == before
    assert slicer_scene.HasObserver(slicer.vtkMRMLScene.NodeAddedEvent) == scene_before
    count = len(updates)
    stream.frame()
    slicer_scene.AddNewNodeByClass("vtkMRMLTextNode", live.EVENT_DEVICE)
    assert monitor.frames == 1 and len(updates) == count and not monitor.running


# ---------------------------------------------------------------- freezing


def test_freeze_copies_the_frame_and_its_label_into_a_case(slicer_scene, scene_logic, live_logic):
    live_logic.ensure_label_node()
    stream = Stream(slicer_scene)
    monitor = live_logic.monitor(clock=FakeClock())
    monitor.start()
    message, pixels, result = stream.frame(origin=(12.0, -30.0, 4.0))
    received_label = np.array(slicer.util.arrayFromVolume(monitor.label_node))[0]
    np.testing.assert_array_equal(received_label, result.mask)
    image_matrix = matrix_of(monitor.image_node)

    frozen = live_logic.freeze(monitor.image_node, monitor.label_node, monitor.status)

    case = frozen.case
    volume = case.volume
    assert volume.GetName() == "Image_Reference frozen" and volume.IsA("vtkMRMLScalarVolumeNode")
    assert not volume.IsA("vtkMRMLLabelMapVolumeNode")
    np.testing.assert_allclose(matrix_of(volume), image_matrix, atol=1e-9)
    assert volume.GetSpacing() == pytest.approx((SPACING[1], SPACING[0], 1.0), abs=1e-6)
    assert volume.GetOrigin() == pytest.approx((12.0, -30.0, 4.0), abs=1e-4)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume)[0], pixels)
    assert (case.rows, case.cols, case.frames) == (ROWS, COLS, 1)
    assert case.spacing_mm == pytest.approx(SPACING, abs=1e-6) and case.image_id is None
    assert volume.GetAttribute(live.LIVE_SOURCE_ATTRIBUTE) == "Image_Reference"
    assert float(volume.GetAttribute(live.LIVE_TIMESTAMP_ATTRIBUTE)) == pytest.approx(1.7e9)

    assert frozen.organ == ORGAN and frozen.label_values == (ORGAN_LABELS[ORGAN],)
    assert frozen.geometry_matches
    segment = case.segmentation.GetSegmentation().GetSegment(frozen.segment_id)
    assert segment.GetName() == segment_name(ORGAN)
    assert tuple(segment.GetColor()) == pytest.approx(segment_colour(ORGAN))
    assert scene_logic.segment_organ(case, frozen.segment_id) == ORGAN
    assert segment.GetTag(ORGAN_TAG, vtk.mutable(""))
    np.testing.assert_array_equal(scene_logic.segment_mask(case, frozen.segment_id), received_label != 0)
    assert frozen.measurement is not None
    assert frozen.measurement.physical.long_axis == pytest.approx(result.status["long_axis_mm"], rel=1e-6)
    lines = slicer_scene.GetNodesByClass("vtkMRMLMarkupsLineNode")
    assert lines.GetNumberOfItems() == 2

    # The stream goes on: the frozen copy does not move with it.
    stream.frame(origin=(0.0, 0.0, 0.0))
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume)[0], pixels)
    np.testing.assert_allclose(matrix_of(volume), image_matrix, atol=1e-9)
    np.testing.assert_array_equal(scene_logic.segment_mask(case, frozen.segment_id), received_label != 0)
    monitor.stop()


class RecordingClient:
    """The server's side of upload and submit, recorded (the HTTP itself is test_client's)."""

    def __init__(self):
        self.uploaded = None
        self.labels = []

    def upload_image(self, path, image_id=None, replace=False):
        from SonoVLMLib.scene import _read_label_voxels

        self.uploaded = (image_id, replace, _read_label_voxels(path))
        return image_id

    def save_label(self, image_id, label_path, organ, pathology=None, unannotated_frames=None):
        self.labels.append((image_id, organ, pathology, read_mask(label_path)))
        return {"image": image_id}


def test_a_frozen_frame_goes_through_upload_correct_and_submit(
    slicer_scene, scene_logic, live_logic, tmp_path
):
    stream = Stream(slicer_scene)
    _, pixels, result = stream.frame()
    image = slicer_scene.GetFirstNode(live.IMAGE_DEVICE, "vtkMRMLScalarVolumeNode")
    label = slicer_scene.GetFirstNode(live.LABEL_DEVICE, "vtkMRMLScalarVolumeNode")
    frozen = live_logic.freeze(image, label)  # no status: the organ from the label's value
    assert frozen.organ == ORGAN and frozen.status is None
    session = AnnotationSession(RecordingClient(), scene_logic, str(tmp_path))
    case = run_steps(live.upload_case_steps(session, frozen.case))
    assert case is frozen.case and case.image_id.startswith("slicer-")
    image_id, replace, uploaded = session.client.uploaded
    assert image_id == case.image_id and not replace
    np.testing.assert_array_equal(uploaded[0], pixels)
    # The sonographer corrects the contour (as a Segment Editor stroke would), then submits.
    corrected = result.mask != 0
    corrected[:5, :5] = True
    scene_logic.apply_mask(case, corrected.astype(np.uint8), ORGAN)
    reply = session.submit(case, frozen.segment_id, "benign")
    assert reply == {"image": case.image_id}
    sent_id, organ, pathology, mask = session.client.labels[0]
    assert (sent_id, organ, pathology) == (case.image_id, ORGAN, "benign")
    np.testing.assert_array_equal(mask != 0, corrected)


def test_freeze_of_a_colour_frame_is_grey_with_its_geometry(slicer_scene, live_logic):
    connector = OpenIGTLinkIF(slicer_scene)
    rgb = np.random.default_rng(1).integers(0, 255, (ROWS, COLS, 3), dtype=np.uint8)
    message = image_message(rgb, SPACING, origin=(1.0, 2.0, 3.0))
    connector.receive(message)
    image = slicer_scene.GetFirstNode(live.IMAGE_DEVICE, "vtkMRMLVectorVolumeNode")
    assert image.GetClassName() == "vtkMRMLVectorVolumeNode"
    segmenter = LiveSegmenter(
        LesionModel(), "lymph_node", lambda messages, kind: connector.receive(*messages)
    )
    segmenter.process(frame_from_message(message))
    label = slicer_scene.GetFirstNode(live.LABEL_DEVICE, "vtkMRMLScalarVolumeNode")
    frozen = live_logic.freeze(image, label, organ="lymph_node")
    grey = slicer.util.arrayFromVolume(frozen.case.volume)[0]
    luma = np.clip(np.rint(rgb.astype(np.float32) @ np.float32([0.299, 0.587, 0.114])), 0, 255)
    np.testing.assert_array_equal(grey, luma.astype(np.uint8))
    np.testing.assert_allclose(matrix_of(frozen.case.volume), matrix_of(image), atol=1e-9)
    assert frozen.organ == "lymph_node" and frozen.label_values == (1,)


def test_freeze_refuses_what_does_not_fit(slicer_scene, live_logic):
    stream = Stream(slicer_scene)
    image = slicer_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", live.IMAGE_DEVICE)
    label = live_logic.ensure_label_node()
    with pytest.raises(ValueError, match=r"the incoming image \(Image_Reference\) has no frame yet"):
        live_logic.freeze(image, label)
    slicer_scene.RemoveNode(image)
    message, _ = stream.image()
    image = slicer_scene.GetFirstNode(live.IMAGE_DEVICE, "vtkMRMLScalarVolumeNode")
    with pytest.raises(ValueError, match="no labelmap has arrived in SonoVLMLabel yet"):
        live_logic.freeze(image, label)
    stream.label(message)
    with pytest.raises(ValueError, match="unknown organ 'liver'"):
        live_logic.freeze(image, label, organ="liver")
    # The scanner's depth changes: a frame of another size before its label arrives.
    stream.rows = ROWS + 8
    stream.image()
    with pytest.raises(
        ValueError,
        match=r"the labelmap SonoVLMLabel is 56 x 40 pixels but the frame Image_Reference is 56 x 48",
    ):
        live_logic.freeze(image, label)
    volumes = slicer_scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    assert slicer_scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0 and volumes == 2


def test_an_empty_label_without_status_needs_the_organ(slicer_scene, live_logic):
    connector = OpenIGTLinkIF(slicer_scene)
    pixels = np.zeros((ROWS, COLS), np.uint8)
    message = image_message(pixels, SPACING)
    connector.receive(message)
    empty = pyigtl.ImageMessage(
        image=pixels[np.newaxis],
        ijk_to_world_matrix=message.ijk_to_world_matrix,
        device_name=live.LABEL_DEVICE,
    )
    connector.receive(empty)
    image = slicer_scene.GetFirstNode(live.IMAGE_DEVICE, "vtkMRMLScalarVolumeNode")
    label = slicer_scene.GetFirstNode(live.LABEL_DEVICE, "vtkMRMLScalarVolumeNode")
    with pytest.raises(ValueError, match="cannot tell the organ of the labelmap SonoVLMLabel"):
        live_logic.freeze(image, label)
    with pytest.raises(ValueError, match="cannot tell the organ"):
        live_logic.freeze(image, label, fallback_organ="auto")
    frozen = live_logic.freeze(image, label, fallback_organ="breast_lesion")
    assert frozen.measurement is None and frozen.label_values == ()
    segment = frozen.case.segmentation.GetSegmentation().GetSegment(frozen.segment_id)
    assert segment.GetName() == "Breast lesion"  # an empty segment to paint in


def test_a_label_from_another_probe_position_is_flagged(slicer_scene, live_logic):
    stream = Stream(slicer_scene)
    message, _ = stream.image(origin=(0.0, 0.0, 0.0))
    stream.image(origin=(0.0, 0.0, 5.0))  # the probe moved before the label came back
    stream.label(message)
    image = slicer_scene.GetFirstNode(live.IMAGE_DEVICE, "vtkMRMLScalarVolumeNode")
    label = slicer_scene.GetFirstNode(live.LABEL_DEVICE, "vtkMRMLScalarVolumeNode")
    frozen = live_logic.freeze(
        image,
        label,
        live.parse_status(slicer_scene.GetFirstNode(live.STATUS_DEVICE, "vtkMRMLTextNode").GetText()),
    )
    assert not frozen.geometry_matches


def test_parse_status_reads_every_field_sonovlm_live_sends():
    payload = {
        "event": "frame",
        "device": "Image_Reference",
        "frame_timestamp": 1.5,
        "organ": "breast_lesion",
        "lesion": True,
        "calibrated": False,
        "long_axis_mm": None,
        "short_axis_mm": None,
        "area_mm2": None,
        "long_axis_px": 30.0,
        "short_axis_px": 12.0,
        "confidence": 0.8,
        "latency_ms": 55.0,
        "fps": None,
        "model_version": "v3",
        "untrained": False,
    }
    status = live.parse_status(json.dumps(payload))
    assert status.measurement_text() == "long 30 px, short 12 px (not calibrated)"
    assert status.server_fps is None and status.model_version == "v3" and status.device == "Image_Reference"
    reading = live.LiveReading(None, 1, 0.1, False, status, None, None, ())
    assert reading.fps_text() == "- fps" and reading.message_text().startswith("Breast lesion: long 30 px")


# ---------------------------------------------------------------- the module's self-test


@pytest.fixture
def sonovlm_module(monkeypatch, slicer_scene, tmp_path):
    """SonoVLM.py as Slicer loads it (Slicer's base-class behaviour, ``slicer.mrmlScene`` a real
    scene), as test_module_in_slicer.py loads it."""
    import importlib.util
    import sys

    from test_module_in_slicer import MODULE_FILE, slicer_base_classes

    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", slicer_base_classes())
    monkeypatch.setitem(sys.modules, "qt", types.ModuleType("qt"))
    monkeypatch.setattr(slicer, "mrmlScene", slicer_scene, raising=False)
    spec = importlib.util.spec_from_file_location("SonoVLM_live_under_test", MODULE_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_modules_self_test_has_a_live_panel_step(sonovlm_module):
    """Reload and Test runs it first, without a server."""
    test = sonovlm_module.SonoVLMTest()
    test.test_live_panel()
    assert test.messages[-1] == "Live panel test passed"
    assert "test_live_panel" in sonovlm_module.SonoVLMTest.runTest.__code__.co_names
