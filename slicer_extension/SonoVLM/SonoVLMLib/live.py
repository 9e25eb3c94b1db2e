"""The Live panel's logic, without Qt: watch what 3D Slicer's OpenIGTLinkIF receives from
``sonovlm live``, show its frame rate and latency, and freeze a frame into a case that the usual
correct-and-submit workflow takes.

What arrives, and how it lands in the scene
-------------------------------------------

``sonovlm live`` (``lib/sonovlm/live/loop.py``) sends per segmented frame a labelmap IMAGE
(device ``SonoVLMLabel``: ``(1, rows, cols)`` uint8, the organ's label value on the lesion, the
frame's matrix and timestamp) and a STRING of JSON (device ``SonoVLMStatus``, ``"event":
"frame"``: organ, long/short axis, area, confidence, ``latency_ms``, ``fps``...), and its events
as STRINGs of JSON on ``SonoVLMEvent`` (``stream_stopped``, ``stream_resumed``,
``geometry_changed``, ``frame_rejected``, connection events; each with a ``message``). The
ultrasound image itself comes to Slicer from PLUS on another connection (device
``Image_Reference``, PLUS's usual name).

OpenIGTLinkIF (repository openigtlink/SlicerOpenIGTLink,
``OpenIGTLinkIF/MRML/vtkMRMLIGTLConnectorNode.cxx``, ``CreateNewMRMLNodeForDevice`` and
``ProcessIncomingDeviceModifiedEvent``) turns

* an IMAGE into a volume node **named after the device**, found with
  ``scene.GetFirstNode(name, "vtkMRMLScalarVolumeNode")`` (``vtkMRMLVectorVolumeNode`` for more
  than one component). The lookup matches subclasses, so a ``vtkMRMLLabelMapVolumeNode`` of that
  name made beforehand (:func:`ensure_label_node`) is reused; otherwise a plain scalar volume
  with a grey display is made. Each message sets the node's IJK-to-RAS matrix from the message
  (spacing in its columns; image data spacing 1, origin 0) and its image data, then calls
  ``Modified()``; the connector wraps this in ``StartModify``/``EndModify``, so observers see one
  ``ModifiedEvent`` per node per ``PeriodicProcess``. The pixels are written into the same
  ``vtkImageData`` while the size and type stay the same (OpenIGTLinkIO's
  ``Converter/igtlioImageConverter.cxx``): a frame must be copied to be kept;
* a STRING into a ``vtkMRMLTextNode`` named after the device: ``SetText`` then ``Modified()``,
  one ``ModifiedEvent`` per message batch.

Neither keeps the message's timestamp on the node, so the frozen image is the one shown when
Freeze is pressed and the label is the latest one: with a still probe they are the same frame;
when the probe moved in between, :attr:`FrozenFrame.geometry_matches` is ``False``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .geometry import volume_ijk_to_ras
from .measurement import LesionMeasurement
from .organs import ORGAN_COLOURS, ORGAN_LABELS, segment_name
from .scene import UltrasoundCase, UltrasoundSceneLogic, _grey_frames

#: Device names ``sonovlm live`` sends by default (``--label-device`` ...), and PLUS's image.
IMAGE_DEVICE = "Image_Reference"
LABEL_DEVICE = "SonoVLMLabel"
STATUS_DEVICE = "SonoVLMStatus"
EVENT_DEVICE = "SonoVLMEvent"

#: Seconds of label updates the frame rate is computed over.
FPS_WINDOW_S = 2.0
#: Seconds without a label update after which the panel says the stream stopped.
STALL_S = 2.0
#: Events kept by a :class:`LiveMonitor`.
EVENTS_KEPT = 50

#: Node attributes of a frozen frame's volume.
LIVE_SOURCE_ATTRIBUTE = "SonoVLM.liveSource"  # the incoming volume's name
LIVE_TIMESTAMP_ATTRIBUTE = "SonoVLM.liveFrameTimestamp"  # the status's frame_timestamp, s since 1970
#: Name of the colour table given to a labelmap node made for the live label.
COLOUR_TABLE_NAME = "SonoVLM organs"

#: Events of ``sonovlm live`` that mean something is wrong with the stream.
WARNING_EVENTS = ("stream_stopped", "geometry_changed", "frame_rejected", "disconnected", "waiting")

#: The IJK-to-RAS matrices of the frame and of its label are "the same" within this (mm).
GEOMETRY_TOLERANCE_MM = 1e-3


class LiveMessageError(ValueError):
    """A status or event text that is not what ``sonovlm live`` sends; the message names the node."""


@dataclass(frozen=True)
class LiveStatus:
    """One frame's status (``"event": "frame"`` on the status device), as ``sonovlm live`` sent it.

    Attributes:
        organ: what was segmented (``lymph_node``...), ``None`` when missing.
        lesion: a lesion was found on the frame.
        calibrated: the frame had a pixel spacing (else the ``*_mm`` values are ``None``).
        long_axis_mm, short_axis_mm: axes in mm (``None`` without a lesion or calibration).
        area_mm2: lesion area in mm².
        long_axis_px, short_axis_px: axes in pixels.
        confidence: mean lesion probability in [0, 1].
        latency_ms: the server's time from the frame's arrival to sending its label, ms.
        server_fps: frames per second the server segments (``None`` at the start).
        frame_timestamp: the frame's acquisition time, seconds since 1970.
        device: the image device the frame came from.
        model_version: the served model's version, if known.
        untrained: the model has random weights (a demo; do not trust the contour).
        raw: the whole JSON object.
    """

    organ: str | None
    lesion: bool
    calibrated: bool
    long_axis_mm: float | None
    short_axis_mm: float | None
    area_mm2: float | None
    long_axis_px: float | None
    short_axis_px: float | None
    confidence: float | None
    latency_ms: float | None
    server_fps: float | None
    frame_timestamp: float | None
    device: str | None
    model_version: str | None
    untrained: bool
    raw: dict = field(repr=False, compare=False)

    def measurement_text(self) -> str:
        """``"long 12.3 mm, short 8.1 mm"`` (pixels when uncalibrated), ``"no lesion"``."""
        if not self.lesion:
            return "no lesion"
        if self.long_axis_mm is not None and self.short_axis_mm is not None:
            return f"long {self.long_axis_mm:.1f} mm, short {self.short_axis_mm:.1f} mm"
        if self.long_axis_px is not None and self.short_axis_px is not None:
            return f"long {self.long_axis_px:.0f} px, short {self.short_axis_px:.0f} px (not calibrated)"
        return "lesion (not measured)"


@dataclass(frozen=True)
class LiveEvent:
    """One event of ``sonovlm live`` (the event device).

    Attributes:
        name: ``stream_stopped``, ``stream_resumed``, ``geometry_changed``, ``frame_rejected``,
            ``connected``, ``disconnected``, ``waiting``, ``client_connected``...
        message: the human-readable text (the name when the event has none).
        time: when the server raised it, seconds since 1970 (``None`` when missing).
        warning: the stream has a problem (:data:`WARNING_EVENTS`).
        raw: the whole JSON object.
    """

    name: str
    message: str
    time: float | None
    warning: bool
    raw: dict = field(repr=False, compare=False)

    def text(self) -> str:
        label = self.name.replace("_", " ")
        return f"{label[:1].upper()}{label[1:]}: {self.message}" if self.message != self.name else label


def _json_object(text: str | None, source: str) -> dict:
    if text is None or not str(text).strip():
        raise LiveMessageError(f"{source}: the text is empty (expected one JSON object from sonovlm live)")
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as error:
        start = str(text)[:60]
        raise LiveMessageError(
            f"{source}: not JSON ({error.msg} at character {error.pos}); the text begins {start!r}"
        ) from None
    if not isinstance(payload, dict):
        raise LiveMessageError(f"{source}: expected a JSON object, got {type(payload).__name__}")
    return payload


def _number(payload: dict, key: str, source: str) -> float | None:
    value = payload.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise LiveMessageError(f"{source}: {key!r} must be a finite number or null, got {value!r}")
    return float(value)


def parse_status(text: str | None, source: str = STATUS_DEVICE) -> LiveStatus:
    """A :class:`LiveStatus` from the status device's text.

    Raises:
        LiveMessageError: not a JSON object, not a frame status (another ``event``), or a
            measurement that is not a number. The message names ``source``.
    """
    payload = _json_object(text, source)
    event = payload.get("event")
    if event != "frame":
        raise LiveMessageError(
            f'{source}: expected a frame status ("event": "frame"), got event {event!r}; '
            "is this the events device?"
        )
    organ = payload.get("organ")
    if organ is not None and not isinstance(organ, str):
        raise LiveMessageError(f"{source}: 'organ' must be a string, got {organ!r}")
    version = payload.get("model_version")
    return LiveStatus(
        organ=organ,
        lesion=bool(payload.get("lesion", False)),
        calibrated=bool(payload.get("calibrated", False)),
        long_axis_mm=_number(payload, "long_axis_mm", source),
        short_axis_mm=_number(payload, "short_axis_mm", source),
        area_mm2=_number(payload, "area_mm2", source),
        long_axis_px=_number(payload, "long_axis_px", source),
        short_axis_px=_number(payload, "short_axis_px", source),
        confidence=_number(payload, "confidence", source),
        latency_ms=_number(payload, "latency_ms", source),
        server_fps=_number(payload, "fps", source),
        frame_timestamp=_number(payload, "frame_timestamp", source),
        device=payload.get("device") if isinstance(payload.get("device"), str) else None,
        model_version=str(version) if version is not None else None,
        untrained=bool(payload.get("untrained", False)),
        raw=payload,
    )


def parse_event(text: str | None, source: str = EVENT_DEVICE) -> LiveEvent:
    """A :class:`LiveEvent` from the event device's text.

    Raises:
        LiveMessageError: not a JSON object, or no ``event`` name. The message names ``source``.
    """
    payload = _json_object(text, source)
    name = payload.get("event")
    if not isinstance(name, str) or not name:
        raise LiveMessageError(f"{source}: the JSON object has no 'event' name: {str(text)[:60]!r}")
    message = payload.get("message")
    return LiveEvent(
        name=name,
        message=str(message) if message else name,
        time=_number(payload, "time", source),
        warning=name in WARNING_EVENTS,
        raw=payload,
    )


@dataclass(frozen=True)
class LiveReading:
    """What the panel shows at one moment.

    Attributes:
        fps: label updates per second over the last :data:`FPS_WINDOW_S` (``None``: fewer than
            two updates in the window).
        frames: label updates seen since :meth:`LiveMonitor.start`.
        since_last_s: seconds since the latest label update (``None`` before the first).
        stalled: no label update for the monitor's ``stall_s`` (after at least one).
        status: the latest frame status (``None`` before the first valid one).
        error: why the latest status or event text could not be read, else ``None``.
        event: the latest event of the server, ``None`` before any.
        missing: what the monitor waits for (``"labelmap SonoVLMLabel"``...), empty when all is there.
    """

    fps: float | None
    frames: int
    since_last_s: float | None
    stalled: bool
    status: LiveStatus | None
    error: str | None
    event: LiveEvent | None
    missing: tuple[str, ...]

    def fps_text(self) -> str:
        if self.frames == 0:
            return "waiting for the first labelmap"
        if self.stalled:
            return f"stopped (no labelmap for {self.since_last_s:.1f} s)"
        here = f"{self.fps:.1f} fps" if self.fps is not None else "- fps"
        server = self.status.server_fps if self.status is not None else None
        return f"{here} (server {server:.1f} fps)" if server is not None else here

    def latency_text(self) -> str:
        if self.status is None or self.status.latency_ms is None:
            return "-"
        return f"{self.status.latency_ms:.0f} ms (frame arrival to label sent, server side)"

    def message_text(self) -> str:
        """The line under the figures: a parse error, what is missing, a warning event, or the
        latest measurements."""
        if self.error:
            return self.error
        if self.missing:
            return "Waiting for " + ", ".join(self.missing) + " (is OpenIGTLinkIF connected?)"
        if self.event is not None and self.event.warning:
            return self.event.text()
        if self.status is not None:
            organ = segment_name(self.status.organ) if self.status.organ in ORGAN_LABELS else "Lesion"
            text = f"{organ}: {self.status.measurement_text()}"
            if self.status.confidence is not None and self.status.lesion:
                text += f", confidence {self.status.confidence:.2f}"
            if self.status.untrained:
                text += " (untrained model)"
            return text
        return self.event.text() if self.event is not None else ""


def find_node(scene: Any, name: str, class_name: str) -> Any:
    """The node OpenIGTLinkIF would update for device ``name``: the first node of that name that
    is a ``class_name`` (subclasses included), else ``None``."""
    return scene.GetFirstNode(name, class_name) if name else None


def _image_ok(node: Any) -> bool:
    return node is not None and node.GetImageData() is not None


class LiveMonitor:
    """Observes the incoming image, the label and the status/event text nodes of a live stream.

    Nodes given are used as they are; the others are looked up by device name (as OpenIGTLinkIF
    names them) when :meth:`start` runs and whenever a node is added to or removed from the
    scene, so Start may be pressed before the stream's first message.

    The frame rate counts the label node's updates (one per frame ``sonovlm live`` sends, as far
    as OpenIGTLinkIF's batching lets them through); an update is a ``ModifiedEvent`` after which
    the image data's modification time changed (a rename does not count).

    Args:
        scene: the MRML scene.
        image_node: the incoming ultrasound volume (``None``: the node named ``image_device``).
        label_node: the labelmap volume (``None``: the node named ``label_device``).
        status_node: the status text node (``None``: the node named ``status_device``).
        event_node: the events text node (``None``: the node named ``event_device``).
        image_device, label_device, status_device, event_device: device names.
        clock: seconds, monotonic (a fake one in tests).
        window_s: seconds the frame rate is computed over.
        stall_s: seconds without a label update that count as stopped.
        on_update: called with no argument after any observed change (on the thread that changed
            the scene: Slicer's GUI thread).
    """

    def __init__(
        self,
        scene: Any,
        image_node: Any = None,
        label_node: Any = None,
        status_node: Any = None,
        event_node: Any = None,
        *,
        image_device: str = IMAGE_DEVICE,
        label_device: str = LABEL_DEVICE,
        status_device: str = STATUS_DEVICE,
        event_device: str = EVENT_DEVICE,
        clock: Callable[[], float] = time.monotonic,
        window_s: float = FPS_WINDOW_S,
        stall_s: float = STALL_S,
        on_update: Callable[[], None] | None = None,
    ) -> None:
        if not window_s > 0 or not stall_s > 0:
            raise ValueError(f"window_s and stall_s must be positive, got {window_s} and {stall_s}")
        self.scene = scene
        self._picked = {"image": image_node, "label": label_node, "status": status_node, "event": event_node}
        self._devices = {
            "image": image_device,
            "label": label_device,
            "status": status_device,
            "event": event_device,
        }
        self.clock = clock
        self.window_s = float(window_s)
        self.stall_s = float(stall_s)
        self.on_update = on_update
        self.nodes: dict[str, Any] = dict.fromkeys(self._picked)
        self._tags: dict[str, tuple[Any, int]] = {}
        self._scene_tags: list[int] = []
        self._updates: deque[float] = deque()
        self._image_mtime: dict[str, int] = {}
        self._last_event_text: str | None = None
        self.frames = 0
        self.status: LiveStatus | None = None
        self.status_error: str | None = None
        self.event_error: str | None = None
        self.events: deque[LiveEvent] = deque(maxlen=EVENTS_KEPT)
        self.running = False

    # ---------------------------------------------------------------- observing

    @property
    def image_node(self) -> Any:
        return self.nodes["image"]

    @property
    def label_node(self) -> Any:
        return self.nodes["label"]

    @property
    def status_node(self) -> Any:
        return self.nodes["status"]

    @property
    def event_node(self) -> Any:
        return self.nodes["event"]

    def start(self) -> None:
        """Observe the nodes (and the scene, for nodes still to come); counts start at zero."""
        import slicer

        if self.running:
            return
        self.running = True
        self._updates.clear()
        self.frames = 0
        self.status = None
        self.status_error = self.event_error = None
        self.events.clear()
        self._last_event_text = None
        for event in (slicer.vtkMRMLScene.NodeAddedEvent, slicer.vtkMRMLScene.NodeRemovedEvent):
            self._scene_tags.append(self.scene.AddObserver(event, self._scene_changed))
        self._bind(count_new=False)
        # What the nodes already hold: the latest measurements, without counting a frame.
        if self.status_node is not None and self.status_node.GetText():
            self._read_status()

    def stop(self) -> None:
        """Remove every observer this monitor added; the readings stay as they were."""
        for node, tag in self._tags.values():
            node.RemoveObserver(tag)
        self._tags.clear()
        for tag in self._scene_tags:
            self.scene.RemoveObserver(tag)
        self._scene_tags = []
        self.running = False

    def _bind(self, count_new: bool = True) -> None:
        """Observe the picked nodes or, for those not picked, the nodes named after the devices.

        ``count_new``: a label node that appears with pixels is a frame (OpenIGTLinkIF adds the
        node when the device's first message arrives, already holding that message's pixels).
        """
        import vtk

        classes = {
            "image": "vtkMRMLVolumeNode",
            "label": "vtkMRMLScalarVolumeNode",
            "status": "vtkMRMLTextNode",
            "event": "vtkMRMLTextNode",
        }
        for role in self.nodes:
            picked = self._picked[role]
            if picked is not None and picked.GetScene() is self.scene:
                wanted = picked
            elif picked is not None:
                wanted = None  # the picked node was removed from the scene
            else:
                wanted = find_node(self.scene, self._devices[role], classes[role])
            if wanted is self.nodes[role] and (wanted is None or role in self._tags):
                continue
            if role in self._tags:
                node, tag = self._tags.pop(role)
                node.RemoveObserver(tag)
            self.nodes[role] = wanted
            if wanted is not None:
                callback = self._callbacks()[role]
                self._tags[role] = (wanted, wanted.AddObserver(vtk.vtkCommand.ModifiedEvent, callback))
                if role == "label" and wanted.GetImageData() is not None:
                    if count_new:
                        self._image_mtime.pop("label", None)
                        self._label_modified(wanted)
                    else:
                        self._image_mtime["label"] = wanted.GetImageData().GetMTime()

    def _callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "image": lambda caller, event: self._changed(),
            "label": lambda caller, event: self._label_modified(caller),
            "status": lambda caller, event: self._read_status(notify=True),
            "event": lambda caller, event: self._read_event(),
        }

    def _scene_changed(self, caller: Any = None, event: Any = None) -> None:
        if self.running:
            self._bind()
            self._changed()

    def _changed(self) -> None:
        if self.on_update is not None:
            self.on_update()

    def _label_modified(self, node: Any) -> None:
        image = node.GetImageData()
        if image is None:
            return
        mtime = image.GetMTime()
        if self._image_mtime.get("label") == mtime:
            return  # the node changed (a rename...), not its pixels
        self._image_mtime["label"] = mtime
        now = float(self.clock())
        self._updates.append(now)
        self.frames += 1
        self._trim(now)
        self._changed()

    def _read_status(self, notify: bool = False) -> None:
        node = self.status_node
        try:
            self.status = parse_status(node.GetText(), node.GetName())
            self.status_error = None
        except LiveMessageError as error:
            self.status_error = str(error)  # the previous status stays shown
        if notify:
            self._changed()

    def _read_event(self) -> None:
        node = self.event_node
        text = node.GetText()
        if text == self._last_event_text:
            return  # the same message (the node was modified otherwise)
        self._last_event_text = text
        try:
            self.events.append(parse_event(text, node.GetName()))
            self.event_error = None
        except LiveMessageError as error:
            self.event_error = str(error)
        self._changed()

    def _trim(self, now: float) -> None:
        while self._updates and self._updates[0] <= now - self.window_s:
            self._updates.popleft()

    # ---------------------------------------------------------------- readings

    def fps(self, now: float | None = None) -> float | None:
        """Label updates per second over the last ``window_s`` seconds: ``(n - 1) / (last -
        first)`` of the ``n`` updates in the window, ``None`` with fewer than two."""
        now = float(self.clock()) if now is None else float(now)
        recent = [t for t in self._updates if t > now - self.window_s]
        if len(recent) < 2 or recent[-1] <= recent[0]:
            return None
        return (len(recent) - 1) / (recent[-1] - recent[0])

    def reading(self, now: float | None = None) -> LiveReading:
        """What the panel shows now (the widget polls this on a timer)."""
        now = float(self.clock()) if now is None else float(now)
        last = self._updates[-1] if self._updates else None
        since = now - last if last is not None else None
        missing = []
        labels = {"image": "the ultrasound image", "label": "the labelmap", "status": "the status"}
        for role, what in labels.items():
            if self.nodes[role] is None:
                missing.append(f"{what} {self._devices[role]}" if self._picked[role] is None else what)
        return LiveReading(
            fps=self.fps(now),
            frames=self.frames,
            since_last_s=since,
            stalled=since is not None and since >= self.stall_s,
            status=self.status,
            error=self.status_error or self.event_error,
            event=self.events[-1] if self.events else None,
            missing=tuple(missing),
        )


# -------------------------------------------------------------------- freezing


@dataclass(frozen=True)
class FrozenFrame:
    """A frame taken out of the live stream, as a case of its own.

    Attributes:
        case: the case (a new static one-slice grey volume with the frame's geometry, and its
            segmentation); not on the server yet (``image_id`` ``None``): upload it to submit.
        segment_id: the organ's segment, holding the received labelmap (empty when it had no lesion).
        organ: the segment's organ.
        measurement: the extension's measurements of the segment, ``None`` when empty.
        status: the latest frame status when frozen (``None`` if none arrived).
        geometry_matches: the label's IJK-to-RAS equals the frame's (the label was computed on
            this frame, or the probe did not move since); ``False``: check the contour.
        label_values: the distinct non-zero values of the received labelmap.
    """

    case: UltrasoundCase
    segment_id: str
    organ: str
    measurement: LesionMeasurement | None
    status: LiveStatus | None
    geometry_matches: bool
    label_values: tuple[int, ...]


class LiveLogic:
    """The Live panel's scene work: nodes by device name, the label's labelmap node, freezing.

    Args:
        scene_logic: the extension's :class:`~.scene.UltrasoundSceneLogic` (its scene is used).
    """

    def __init__(self, scene_logic: UltrasoundSceneLogic) -> None:
        self.scene_logic = scene_logic
        self.scene = scene_logic.scene

    def monitor(
        self, image_node: Any = None, label_node: Any = None, status_node: Any = None, **options: Any
    ) -> LiveMonitor:
        """A :class:`LiveMonitor` on this scene (not started)."""
        return LiveMonitor(self.scene, image_node, label_node, status_node, **options)

    def ensure_label_node(self, name: str = LABEL_DEVICE) -> Any:
        """The volume OpenIGTLinkIF will put the label into: an existing volume named ``name``,
        else a new empty ``vtkMRMLLabelMapVolumeNode`` named ``name`` whose display uses the
        organs' colours (OpenIGTLinkIF reuses a node of the device's name, see the module's
        docstring; without it the label arrives as a grey scalar volume)."""
        existing = find_node(self.scene, name, "vtkMRMLScalarVolumeNode")
        if existing is not None:
            return existing
        node = self.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", name)
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        if display is not None:
            display.SetAndObserveColorNodeID(self.organ_colour_table().GetID())
        return node

    def organ_colour_table(self) -> Any:
        """A colour table (made once per scene) with 0 transparent and each organ's label value
        in its segment colour, named after the organ."""
        nodes = self.scene.GetNodesByClassByName("vtkMRMLColorTableNode", COLOUR_TABLE_NAME)
        if nodes.GetNumberOfItems() > 0:
            return nodes.GetItemAsObject(0)
        table = self.scene.AddNewNodeByClass("vtkMRMLColorTableNode", COLOUR_TABLE_NAME)
        table.SetTypeToUser()
        table.SetNumberOfColors(max(ORGAN_LABELS.values()) + 1)
        table.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
        for organ, value in ORGAN_LABELS.items():
            table.SetColor(value, segment_name(organ), *ORGAN_COLOURS[organ], 1.0)
        return table

    @staticmethod
    def view_layers(monitor: LiveMonitor) -> dict[str, Any] | None:
        """How the slice views show a running stream: the keyword arguments of
        ``slicer.util.setSliceViewerLayers`` (background = the incoming image, fitted, the views
        turned into the frame's plane as it is now; the label as the label layer when it is a
        ``vtkMRMLLabelMapVolumeNode``, else blended over the image as the foreground at 0.4
        opacity: OpenIGTLinkIF made a grey scalar volume of it). ``None`` while the monitor is
        stopped or the image or the label (with pixels) has not arrived."""
        image, label = monitor.image_node, monitor.label_node
        if image is None or label is None or label.GetImageData() is None or not monitor.running:
            return None
        layers: dict[str, Any] = {"background": image, "fit": True, "rotateToVolumePlane": True}
        if label.IsA("vtkMRMLLabelMapVolumeNode"):
            layers.update(foreground=None, label=label)
        else:
            layers.update(foreground=label, foregroundOpacity=0.4, label=None)
        return layers

    def freeze(
        self,
        image_node: Any,
        label_node: Any,
        status: LiveStatus | None = None,
        organ: str | None = None,
        fallback_organ: str | None = None,
    ) -> FrozenFrame:
        """Copy the frame shown in ``image_node`` into a new static volume (grey, one slice, the
        frame's IJK-to-RAS: spacing, directions, origin) and ``label_node``'s labelmap into the
        organ's segment of a new segmentation (named and coloured per organ, as auto-segment
        makes it; non-zero = lesion), measured and drawn with its axes.

        The organ: ``organ`` if given, else the status's, else the one whose label value the
        labelmap holds, else ``fallback_organ`` (the panel's choice).

        Raises:
            ValueError: a node without pixels, a frame that is not one slice, a labelmap of
                another size than the frame, or no way to tell the organ. Each names the node.
        """
        import slicer

        if not _image_ok(image_node):
            name = image_node.GetName() if image_node is not None else "none picked"
            raise ValueError(f"the incoming image ({name}) has no frame yet: nothing to freeze")
        if not _image_ok(label_node):
            name = label_node.GetName() if label_node is not None else LABEL_DEVICE
            raise ValueError(f"no labelmap has arrived in {name} yet: nothing to freeze")
        voxels = np.array(slicer.util.arrayFromVolume(image_node))
        colour = image_node.IsA("vtkMRMLVectorVolumeNode") and voxels.ndim == 4
        frame = _grey_frames(voxels, colour)
        if frame.ndim != 3 or frame.shape[0] != 1:
            raise ValueError(
                f"{image_node.GetName()}: a live ultrasound frame is one slice, this volume is {voxels.shape}"
            )
        label = np.array(slicer.util.arrayFromVolume(label_node))
        if label.ndim == 4 and label.shape[-1] == 1:
            label = label[..., 0]
        if label.shape != frame.shape:
            raise ValueError(
                f"the labelmap {label_node.GetName()} is {_size_text(label.shape)} but the frame "
                f"{image_node.GetName()} is {_size_text(frame.shape)}: it was computed on another "
                "stream or before the frame size changed; wait for the next labelmap"
            )
        values = tuple(int(v) for v in np.unique(label) if v != 0)
        organ = self._organ(organ, status, values, label_node.GetName(), fallback_organ)

        name = self.scene.GenerateUniqueName(f"{image_node.GetName()} frozen")
        volume = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        volume.CopyOrientation(image_node)  # origin, spacing, directions: the same IJK-to-RAS
        slicer.util.updateVolumeFromArray(volume, np.ascontiguousarray(frame))
        volume.CreateDefaultDisplayNodes()
        volume.SetAttribute(LIVE_SOURCE_ATTRIBUTE, image_node.GetName())
        if status is not None and status.frame_timestamp is not None:
            volume.SetAttribute(LIVE_TIMESTAMP_ATTRIBUTE, repr(status.frame_timestamp))
        try:
            case = self.scene_logic.case_from_volume(volume)
            segment_id = self.scene_logic.apply_mask(case, label[0], organ)
            measurement = self.scene_logic.measure(case, segment_id)
            self.scene_logic.show_axes(case, measurement, organ)
        except BaseException:
            self.scene_logic._remove(volume)
            raise
        matches = bool(
            np.allclose(
                volume_ijk_to_ras(label_node),
                volume_ijk_to_ras(image_node),
                atol=GEOMETRY_TOLERANCE_MM,
                rtol=0,
            )
        )
        return FrozenFrame(case, segment_id, organ, measurement, status, matches, values)

    @staticmethod
    def _organ(
        organ: str | None,
        status: LiveStatus | None,
        values: tuple[int, ...],
        source: str,
        fallback: str | None,
    ) -> str:
        if organ:
            if organ not in ORGAN_LABELS:
                raise ValueError(f"unknown organ {organ!r} (known: {', '.join(ORGAN_LABELS)})")
            return organ
        if status is not None and status.organ in ORGAN_LABELS:
            return status.organ
        by_value = {value: name for name, value in ORGAN_LABELS.items()}
        organs = {by_value[v] for v in values if v in by_value}
        if len(organs) == 1 and len(values) == 1:
            return organs.pop()
        if fallback in ORGAN_LABELS:
            return fallback
        raise ValueError(
            f"cannot tell the organ of the labelmap {source} (values {list(values) or 'none'}, "
            "no status received): choose the organ in the panel"
        )


def upload_case_steps(session: Any, case: UltrasoundCase, replace: bool = False) -> Any:
    """Upload a frozen frame's image under the session's id for its volume and give the case that
    id, keeping its segmentation (``AnnotationSession.open_volume_steps`` would build a new case):
    then Auto-segment, the interaction tools and Submit work on it. A generator of server
    requests (:mod:`.tasks`); an id the server has already is ``ImageExistsError``."""
    image_id = session.upload_id(case.volume)
    folder = os.path.join(session.work_dir, "uploads")
    os.makedirs(folder, exist_ok=True)
    path = session.scene_logic.save_volume(case, os.path.join(folder, f"{image_id}.nrrd"))
    try:
        given = yield lambda: session.client.upload_image(path, image_id, replace=replace)
    finally:
        os.remove(path)
    case.set_image_id(given)
    return case


def _size_text(shape: tuple[int, ...]) -> str:
    if len(shape) == 3:
        return f"{shape[2]} x {shape[1]} pixels" + (f" x {shape[0]} slices" if shape[0] != 1 else "")
    return " x ".join(str(n) for n in shape)
