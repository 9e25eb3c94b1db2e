"""One live session: PLUS (or any OpenIGTLink image server) in, the model, viewers out.

:class:`LiveService` wires the pieces: an :class:`~.transport.IgtlClient` on ``--igtl-in`` whose
IMAGE messages become :class:`~.geometry.LiveFrame`\\ s in a :class:`~.buffer.LatestFrameBuffer`,
a :class:`~.loop.LiveSegmenter` on its own thread, and an :class:`~.transport.IgtlServer` on
``--igtl-out`` (127.0.0.1 unless told otherwise) that 3D Slicer's OpenIGTLinkIF connects to.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ..errors import SonoInputError
from .buffer import LatestFrameBuffer
from .geometry import LiveFrame, frame_from_message
from .loop import LiveSegmenter
from .transport import IgtlClient, IgtlServer

logger = logging.getLogger(__name__)


class LiveService:
    """Receive, segment and send until :meth:`stop`.

    Args:
        predictor: a :class:`sonovlm.model.Predictor` (``feature_cache_bytes=0`` for live use).
        organ: what to segment.
        in_host, in_port: the image stream's server (PLUS).
        out_port: port viewers connect to (0 = any free one, see :attr:`out_port`).
        out_host: interface to bind (default 127.0.0.1).
        image_device: take only IMAGE messages of this device name (default: any IMAGE).
        retry_s: pause between connection attempts to the stream.
        **segmenter_options: :class:`~.loop.LiveSegmenter` keywords (``smoothing``, ``stall_s``,
            device names, ``single_lesion``).
    """

    def __init__(
        self,
        predictor: Any,
        organ: str,
        in_host: str,
        in_port: int,
        out_port: int,
        *,
        out_host: str = "127.0.0.1",
        image_device: str | None = None,
        retry_s: float = 0.5,
        **segmenter_options: Any,
    ) -> None:
        self.buffer: LatestFrameBuffer[LiveFrame] = LatestFrameBuffer()
        self.server = IgtlServer(out_port, host=out_host)
        self.segmenter = LiveSegmenter(predictor, organ, self.server.publish, **segmenter_options)
        self.server.on_event = self.segmenter.connection_event
        self.image_device = image_device
        self.client = IgtlClient(
            in_host, in_port, self._on_message, on_event=self.segmenter.connection_event, retry_s=retry_s
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rejected_devices: set[str] = set()
        self.warm_up_s: float | None = None

    @property
    def out_port(self) -> int:
        return self.server.port

    def _on_message(self, message: Any, arrived: float) -> None:
        if message.message_type != "IMAGE":
            return
        if self.image_device is not None and message.device_name != self.image_device:
            if message.device_name not in self._rejected_devices:
                self._rejected_devices.add(message.device_name)
                logger.info(
                    "live: ignoring IMAGE device %r (taking %r)", message.device_name, self.image_device
                )
            return
        try:
            frame = frame_from_message(message, arrived)
        except SonoInputError as exc:
            self.segmenter.reject(str(exc))
            return
        self.buffer.put(frame)

    def start(self, max_frames: int | None = None, warm_up: bool = True) -> LiveService:
        """Listen for viewers, warm the model up (:meth:`~.loop.LiveSegmenter.warm_up`, unless
        ``warm_up`` is False), connect to the stream and start segmenting in the background."""
        self.server.start()
        if warm_up:
            self.warm_up_s = round(self.segmenter.warm_up(), 3)
        self._thread = threading.Thread(
            target=self.segmenter.run,
            args=(self.buffer, self._stop, max_frames),
            name="live-segmenter",
            daemon=True,
        )
        self._thread.start()
        self.client.start()
        logger.info(
            "live: segmenting %s from %s:%d, viewers on %s:%d",
            self.segmenter.organ,
            self.client.host,
            self.client.port,
            self.server.host,
            self.server.port,
        )
        return self

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the segmenting loop ends (``max_frames`` reached, or :meth:`stop`); True if it did."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self) -> dict[str, Any]:
        """Stop everything; returns :meth:`stats`."""
        self._stop.set()
        self.client.stop()
        self.buffer.close()
        if self._thread is not None:
            self._thread.join(10.0)
        self.server.stop()
        return self.stats()

    def stats(self) -> dict[str, Any]:
        """The segmenter's figures plus the connections' counters."""
        return {
            **self.segmenter.stats(),
            "pending": self.buffer.pending,
            "input_connections": self.client.connections,
            "input_reconnects": self.client.reconnects,
            "bad_messages": self.client.bad_messages,
            "viewers": self.server.clients,
            "bundles_replaced_for_slow_viewers": self.server.replaced(),
            "warm_up_s": self.warm_up_s,
        }
