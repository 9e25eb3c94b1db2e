"""The segmenting loop: newest frame in, labelmap and measurements out.

:class:`LiveSegmenter` takes frames from a :class:`~.buffer.LatestFrameBuffer` (so frames that
arrive while the model works are dropped, never queued) and for each one:

1. runs :meth:`sonovlm.model.Predictor.segment` for the organ (the predictor should be built with
   ``feature_cache_bytes=0``: live frames never repeat);
2. optionally smooths the lesion probability over frames (:class:`~.smoothing.ProbabilitySmoother`);
3. thresholds it and keeps the one lesion :func:`sonovlm.measure.measure_lesion` measures
   (:func:`sonovlm.measure.lesion_mask`, as the server's single-lesion post-processing);
4. publishes two messages: the labelmap IMAGE (the frame's geometry and timestamp, device
   :attr:`LiveSegmenter.label_device`) and a STRING of JSON (device :attr:`status_device`) with the
   long and short axis in mm, area, confidence, latency, frames per second and drop counts; with
   ``forward_image``, first the frame itself (its device name, pixels, matrix and timestamp), so a
   viewer shows the very frame each labelmap was computed from, in step.

Events go to the log and as a STRING of JSON on :attr:`LiveSegmenter.event_device`: the stream
stopped (no frame for ``stall_s``), resumed, its frame size or spacing changed (smoothing
restarts), a frame could not be used, and the input connection's own events.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import SonoInputError
from ..organs import organ_label
from .buffer import LatestFrameBuffer
from .geometry import (
    LiveFrame,
    StreamGeometry,
    check_device_name,
    frame_message,
    label_message,
    string_message,
)
from .smoothing import ProbabilitySmoother

logger = logging.getLogger(__name__)

#: Lesion probability at and above which a pixel is lesion (as :class:`~sonovlm.model.Predictor`).
MASK_THRESHOLD = 0.5
#: Frames the fps and latency figures are computed over.
STATS_WINDOW = 120

#: ``publish(messages, kind)``: :meth:`~.transport.IgtlServer.publish` (``kind`` ``"frame"`` or ``"event"``).
Publish = Callable[..., None]


@dataclass(frozen=True)
class LiveResult:
    """What one frame produced.

    Attributes:
        mask: ``(rows, cols)`` uint8, the organ's label value on the lesion.
        status: the JSON payload sent on the status device.
        latency_ms: from the frame's arrival to its messages being handed to the server.
    """

    mask: np.ndarray
    status: dict[str, Any]
    latency_ms: float


class LiveSegmenter:
    """Segments the newest frame of a stream, again and again.

    Args:
        predictor: a :class:`sonovlm.model.Predictor`.
        organ: ``lymph_node``, ``breast_lesion`` or ``thyroid_nodule``.
        publish: sends a bundle of pyigtl messages, ``publish(messages, kind)`` with ``kind``
            ``"frame"`` or ``"event"`` (:meth:`~.transport.IgtlServer.publish`).
        smoothing: EMA weight of the newest frame in ``(0, 1]``, or ``None`` (off, the default).
        stall_s: seconds without a frame after which the stream counts as stopped.
        label_device, status_device, event_device: OpenIGTLink device names of what is sent.
        single_lesion: keep only the measured lesion (largest component, holes filled).
        forward_image: send the segmented frame too, before its labelmap.
    """

    def __init__(
        self,
        predictor: Any,
        organ: str,
        publish: Publish,
        *,
        smoothing: float | None = None,
        stall_s: float = 2.0,
        label_device: str = "SonoVLMLabel",
        status_device: str = "SonoVLMStatus",
        event_device: str = "SonoVLMEvent",
        single_lesion: bool = True,
        forward_image: bool = False,
    ) -> None:
        self.predictor = predictor
        self.organ = organ
        self.label = organ_label(organ)
        self.publish = publish
        self.smoother = ProbabilitySmoother(smoothing) if smoothing is not None else None
        if not stall_s > 0:
            raise SonoInputError("--stall-s", f"must be positive, got {stall_s}")
        self.stall_s = float(stall_s)
        self.label_device = check_device_name(label_device, "--label-device")
        self.status_device = check_device_name(status_device, "--status-device")
        self.event_device = check_device_name(event_device, "--event-device")
        self.single_lesion = bool(single_lesion)
        self.forward_image = bool(forward_image)
        self.geometry: StreamGeometry | None = None
        self.processed = 0
        self.rejected = 0
        self.geometry_changes = 0
        self.stalls = 0
        self.events: deque[dict[str, Any]] = deque(maxlen=100)
        self._latencies: deque[float] = deque(maxlen=STATS_WINDOW)
        self._done_at: deque[float] = deque(maxlen=STATS_WINDOW)
        self._all_latencies: deque[float] = deque(maxlen=100_000)
        self._stalled = False
        self._last_frame_at: float | None = None
        self._lock = threading.Lock()
        self.buffer: LatestFrameBuffer | None = None

    # ------------------------------------------------------------------ events
    def event(self, name: str, level: int = logging.INFO, **details: Any) -> None:
        """Log an event and send it as JSON on :attr:`event_device`."""
        payload = {"event": name, "time": time.time(), **details}
        if "message" in details:
            logger.log(level, "live: %s: %s", name, details["message"])
        else:
            logger.log(level, "live: %s %s", name, details or "")
        with self._lock:
            self.events.append(payload)
        try:
            self.publish([string_message(payload, self.event_device)], "event")
        except Exception:  # noqa: BLE001 - an event must never stop the loop
            logger.exception("live: could not send the %s event", name)

    def connection_event(self, name: str, details: dict[str, Any]) -> None:
        """``on_event`` of the input client and the output server: logged and sent."""
        where = f"{details.get('host')}:{details.get('port')}"
        reason = details.get("reason")
        messages = {
            "connected": f"connected to the ultrasound stream at {where}",
            "disconnected": f"the ultrasound stream's connection ({where}) dropped: {reason}; reconnecting",
            "waiting": f"waiting for the ultrasound stream's server at {where} ({reason})",
            "client_connected": f"a viewer connected from {details.get('client')}",
            "client_disconnected": f"a viewer ({details.get('client')}) disconnected: {reason}",
        }
        level = logging.WARNING if name in ("disconnected", "waiting") else logging.INFO
        self.event(name, level, message=messages.get(name, name), **details)

    def warm_up(self) -> float:
        """Import the post-processing and run the model once on a blank frame, so the first real
        frame is not slowed by one-off work; returns the seconds it took."""
        from skimage import measure  # noqa: F401  (lesion_mask's first call would import it)

        from ..io import UltrasoundImage, UltrasoundRegion
        from ..measure import lesion_mask, measure_lesion  # noqa: F401

        started = time.monotonic()
        blank = UltrasoundImage(
            frames=np.zeros((1, 64, 64), dtype=np.uint8),
            source="igtl:warm-up",
            regions=[UltrasoundRegion(bbox=(0, 0, 64, 64), spacing_mm=None, data_type=1)],
        )
        self.predictor.segment(blank, self.organ, frame=0)
        return time.monotonic() - started

    # ------------------------------------------------------------------ one frame
    def process(self, frame: LiveFrame) -> LiveResult:
        """Segment, smooth, measure and publish one frame."""
        from ..measure import lesion_mask, measure_lesion

        self._check_geometry(frame.geometry)
        result = self.predictor.segment(frame.image, self.organ, frame=0)
        probability = result.probability
        if self.smoother is not None:
            probability = self.smoother.update(probability)
        foreground = probability >= MASK_THRESHOLD
        mask = foreground.astype(np.uint8) * np.uint8(self.label)
        if self.single_lesion and foreground.any():
            mask = lesion_mask(mask, self.label)
        lesion = mask != 0
        confidence = float(probability[lesion].mean()) if lesion.any() else 0.0
        measurement = measure_lesion(mask, frame.geometry.spacing_mm).to_dict() if lesion.any() else None
        done = time.monotonic()
        latency_ms = (done - frame.received_monotonic) * 1000.0 if frame.received_monotonic else 0.0
        with self._lock:
            self.processed += 1
            self._latencies.append(latency_ms)
            self._all_latencies.append(latency_ms)
            self._done_at.append(done)
        status = self._status(frame, measurement, confidence, latency_ms)
        messages = [
            label_message(mask, frame, self.label_device),
            string_message(status, self.status_device, timestamp=frame.timestamp),
        ]
        if self.forward_image:
            messages.insert(0, frame_message(frame))
        self.publish(messages, "frame")
        return LiveResult(mask=mask, status=status, latency_ms=latency_ms)

    def _status(
        self, frame: LiveFrame, measurement: dict | None, confidence: float, latency_ms: float
    ) -> dict:
        info = getattr(self.predictor, "backbone_info", {}) or {}
        card = getattr(self.predictor, "model_card", None)

        def value(key: str) -> Any:
            return None if measurement is None else measurement.get(key)

        return {
            "event": "frame",
            "device": frame.device_name,
            "frame_timestamp": frame.timestamp,
            "organ": self.organ,
            "label": self.label,
            "lesion": measurement is not None,
            "calibrated": frame.geometry.spacing_mm is not None,
            "long_axis_mm": value("long_axis_mm"),
            "short_axis_mm": value("short_axis_mm"),
            "area_mm2": value("area_mm2"),
            "long_axis_px": value("long_axis_px"),
            "short_axis_px": value("short_axis_px"),
            "long_axis_endpoints": value("long_axis_endpoints"),
            "short_axis_endpoints": value("short_axis_endpoints"),
            "confidence": round(confidence, 6),
            "latency_ms": round(latency_ms, 3),
            **{k: v for k, v in self.stats().items() if k in ("fps", "processed", "dropped", "rejected")},
            "geometry_changes": self.geometry_changes,
            "smoothing": self.smoother.alpha if self.smoother is not None else None,
            "model_version": getattr(self.predictor, "model_version", None),
            "untrained": bool(info.get("untrained", False)),
            "model_card": card.get("name") if isinstance(card, dict) else None,
            "research_use_only": True,
        }

    def _check_geometry(self, geometry: StreamGeometry) -> None:
        previous = self.geometry
        if previous is not None and not geometry.same_as(previous):
            self.geometry_changes += 1
            if self.smoother is not None:
                self.smoother.reset()
            self.event(
                "geometry_changed",
                logging.WARNING,
                message=(
                    f"the stream's frames changed from {previous.rows}x{previous.cols} "
                    f"({_spacing_text(previous)}) to {geometry.rows}x{geometry.cols} "
                    f"({_spacing_text(geometry)})"
                ),
                previous=previous.to_dict(),
                current=geometry.to_dict(),
            )
        self.geometry = geometry

    # ------------------------------------------------------------------ the loop
    def run(
        self,
        buffer: LatestFrameBuffer,
        stop: threading.Event,
        max_frames: int | None = None,
        poll_s: float = 0.1,
    ) -> None:
        """Process frames from ``buffer`` until ``stop`` is set, the buffer is closed and empty, or
        ``max_frames`` were processed. Reports the stream stopping (after ``stall_s`` without a
        frame) and resuming."""
        self.buffer = buffer
        while not stop.is_set():
            if max_frames is not None and self.processed >= max_frames:
                return
            frame = buffer.take(timeout=poll_s)
            now = time.monotonic()
            if frame is None:
                if buffer.closed:
                    return
                if (
                    not self._stalled
                    and self._last_frame_at is not None
                    and now - self._last_frame_at >= self.stall_s
                ):
                    self._stalled = True
                    self.stalls += 1
                    if self.smoother is not None:
                        self.smoother.reset()
                    self.event(
                        "stream_stopped",
                        logging.WARNING,
                        message=f"no ultrasound frame for {now - self._last_frame_at:.1f} s: "
                        "the stream stopped",
                        seconds=round(now - self._last_frame_at, 3),
                    )
                continue
            if self._stalled:
                self._stalled = False
                self.event("stream_resumed", message="ultrasound frames arrive again")
            self._last_frame_at = now
            try:
                self.process(frame)
            except SonoInputError as exc:
                self.rejected += 1
                self.event("frame_rejected", logging.WARNING, message=str(exc), device=frame.device_name)

    def reject(self, problem: str) -> None:
        """Count and report a message that could not become a frame (called by the receiver)."""
        self.rejected += 1
        self.event("frame_rejected", logging.WARNING, message=problem)

    def latencies(self) -> list[float]:
        """Arrival-to-publish latency of each frame processed, in ms, oldest first (the last 100,000)."""
        with self._lock:
            return list(self._all_latencies)

    def stats(self) -> dict[str, Any]:
        """``processed``, ``dropped`` (frames replaced before the model took them), ``rejected``,
        ``fps`` over the last :data:`STATS_WINDOW` frames, ``latency_ms_p50`` / ``_p95`` (arrival to
        publish, over the run)."""
        with self._lock:
            done = list(self._done_at)
            latencies = sorted(self._all_latencies)
        fps = (len(done) - 1) / (done[-1] - done[0]) if len(done) >= 2 and done[-1] > done[0] else None
        counts = self.buffer.counts() if self.buffer is not None else {"received": 0, "dropped": 0}
        return {
            "received": counts["received"],
            "processed": self.processed,
            "dropped": counts["dropped"],
            "rejected": self.rejected,
            "fps": round(fps, 3) if fps is not None else None,
            "latency_ms_p50": round(statistics.median(latencies), 3) if latencies else None,
            "latency_ms_p95": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 3)
            if latencies
            else None,
            "geometry_changes": self.geometry_changes,
            "stalls": self.stalls,
        }


def _spacing_text(geometry: StreamGeometry) -> str:
    if geometry.spacing_mm is None:
        return "uncalibrated"
    return f"{geometry.spacing_mm[0]:.4g} x {geometry.spacing_mm[1]:.4g} mm"
