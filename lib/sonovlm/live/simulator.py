"""A simulated PLUS server: streams B-mode frames as OpenIGTLink IMAGE messages, with pyigtl.

For trying ``sonovlm live`` without a scanner, for its tests and for its benchmark. Frames come
from a studies folder written by ``sonovlm sample-data`` (each case's imaging area, cut out of
the scanner screen as PLUS's clip rectangle would, with its calibrated spacing), or from any
``(pixels, spacing_mm)`` list. The server is :class:`pyigtl.OpenIGTLinkServer` on 127.0.0.1,
one client at a time, as PLUS's OpenIGTLink server serves Slicer.

Run it on its own::

    sonovlm sample-data studies --count 6
    python -m sonovlm.live.simulator studies --port 18944 --fps 15

Each IMAGE message is device ``Image_Reference`` (PLUS's usual name), timestamped with the time
it is sent (seconds since 1970), axis-aligned with ``spacing_mm`` in its matrix; the origin moves
by ``step_mm`` per frame along the probe (the patient's left) so the pose changes as it would
with a tracked probe.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyigtl

from ..errors import SonoInputError
from .geometry import image_message

#: PLUS's usual device name of the tracked ultrasound image.
PLUS_IMAGE_DEVICE = "Image_Reference"

Frame = tuple[np.ndarray, tuple[float, float]]


def frames_from_studies(
    directory: str | os.PathLike,
    count: int | None = None,
    rgb: bool = False,
    organ: str | None = None,
) -> list[Frame]:
    """``(pixels, spacing_mm)`` of the cases of a ``sonovlm sample-data`` folder, in id order.

    ``pixels`` is the imaging area, ``(rows, cols)`` uint8 grey, or ``(rows, cols, 3)`` when
    ``rgb`` (the grey repeated, as a frame grabber in colour mode sends it); ``spacing_mm`` is
    ``(row_mm, col_mm)``. ``organ`` keeps that organ's cases only; ``count`` limits the cases read.

    Raises:
        SonoInputError: the folder holds no studies (of ``organ``), or a case has no calibrated
            region.
    """
    from ..io import load_image
    from ..organs import organ_label
    from ..sample_data import read_cases

    cases = read_cases(directory)
    if organ is not None:
        organ_label(organ)
        cases = [case for case in cases if case.organ == organ]
        if not cases:
            raise SonoInputError(directory, f"holds no {organ} case")
    if count is not None:
        cases = cases[: max(1, int(count))]
    frames: list[Frame] = []
    for case in cases:
        image = load_image(case.image_path)
        spacing = image.spacing_mm
        if spacing is None:
            raise SonoInputError(case.image_path, "has no calibrated ultrasound region to stream")
        x0, y0, x1, y1 = image.imaging_bbox()
        grey = image.grey(0)[y0:y1, x0:x1]
        pixels = np.ascontiguousarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8))
        if rgb:
            pixels = np.repeat(pixels[..., np.newaxis], 3, axis=2)
        frames.append((pixels, (float(spacing[0]), float(spacing[1]))))
    return frames


class SimulatedPlusServer:
    """pyigtl server streaming ``frames`` in a loop until :meth:`stop`.

    Args:
        frames: ``(pixels, spacing_mm)`` pairs (see :func:`frames_from_studies`).
        port: TCP port on 127.0.0.1 (0 = a free one, see :attr:`port`).
        fps: frames per second; ``None`` sends as fast as the connection takes them.
        device_name: the IMAGE messages' device name.
        step_mm: origin shift per frame along the image columns (a moving probe).
        hold: messages sent of each frame before the next (1 = a new frame every message; a
            frame of another size or spacing than the last is a geometry change).

    Attributes:
        sent: frames sent.
        sent_timestamps: timestamps of the last 10,000 frames sent.
    """

    def __init__(
        self,
        frames: Sequence[Frame],
        port: int = 0,
        fps: float | None = 15.0,
        device_name: str = PLUS_IMAGE_DEVICE,
        step_mm: float = 0.1,
        hold: int = 1,
    ) -> None:
        if not frames:
            raise SonoInputError("frames", "a simulated PLUS server needs at least one frame")
        if fps is not None and not fps > 0:
            raise SonoInputError("--fps", f"must be positive, got {fps}")
        self.frames = list(frames)
        self.fps = fps
        self.device_name = device_name
        self.step_mm = float(step_mm)
        if int(hold) < 1:
            raise SonoInputError("--hold", f"must be at least 1, got {hold}")
        self.hold = int(hold)
        self.sent = 0
        self.sent_timestamps: deque[float] = deque(maxlen=10_000)
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._thread: threading.Thread | None = None
        # pyigtl installs SIGINT/SIGTERM handlers that close the server and re-raise the
        # signal; keep the process's own handlers (construction happens on the main thread).
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.server = pyigtl.OpenIGTLinkServer(port=int(port), local_server=True, start_now=False)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.port = int(self.server.server_address[1])

    def start(self) -> SimulatedPlusServer:
        self.server.start()
        self._thread = threading.Thread(target=self._run, name=f"plus-sim-{self.port}", daemon=True)
        self._thread.start()
        return self

    @property
    def connected(self) -> bool:
        return bool(self.server.is_connected())

    def pause(self) -> None:
        """Stop sending (the connection stays open): the stream "freezes"."""
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()

    def replace_frames(self, frames: Sequence[Frame]) -> None:
        """Stream other frames from now on (another frame size or spacing, say)."""
        if not frames:
            raise SonoInputError("frames", "a simulated PLUS server needs at least one frame")
        self.frames = list(frames)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop sending and close the server and its connection (the client sees the drop)."""
        self._stop.set()
        if self._thread is None:
            self.server.server_close()  # never served: pyigtl's stop() would wait for serve_forever
            return
        self._thread.join(timeout)
        self.server.stop()

    def wait_connected(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.connected:
                return True
            time.sleep(0.01)
        return False

    def _backlog(self) -> int:
        with self.server.lock_outgoing_messages:
            return len(self.server.outgoing_messages)

    def _run(self) -> None:
        index = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            if self._paused.is_set() or not self.connected:
                self._stop.wait(0.02)
                next_at = time.monotonic()
                continue
            if self.fps is None:
                # As fast as the connection takes them, but never more than one frame queued.
                if self._backlog() > 0:
                    time.sleep(0.0005)
                    continue
            else:
                delay = next_at - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                    continue
                next_at = max(next_at + 1.0 / self.fps, time.monotonic() - 1.0 / self.fps)
                if self._backlog() > 1:
                    continue  # the connection is slower than fps: skip, as a frame grabber does
            frames = self.frames
            pixels, spacing = frames[(index // self.hold) % len(frames)]
            timestamp = time.time()
            message = image_message(
                pixels,
                spacing,
                origin=(self.step_mm * (index % 100), 0.0, 0.0),
                timestamp=timestamp,
                device_name=self.device_name,
            )
            self.server.send_message(message, wait=False)
            self.sent += 1
            self.sent_timestamps.append(timestamp)
            index += 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sonovlm.live.simulator",
        description="Stream the cases of a sonovlm sample-data folder over OpenIGTLink, as PLUS would.",
    )
    parser.add_argument("studies", type=Path, help="folder written by sonovlm sample-data")
    parser.add_argument("--port", type=int, default=18944, help="port on 127.0.0.1 (default 18944)")
    parser.add_argument("--fps", type=float, default=15.0, help="frames per second (default 15)")
    parser.add_argument("--count", type=int, help="stream only the first N cases")
    parser.add_argument("--organ", help="stream only this organ's cases")
    parser.add_argument(
        "--hold", type=int, default=30, help="messages of each case before the next (default 30)"
    )
    parser.add_argument("--rgb", action="store_true", help="send RGB frames instead of grey")
    parser.add_argument("--duration", type=float, help="stop after S seconds (default: Ctrl+C)")
    args = parser.parse_args(argv)
    try:
        frames = frames_from_studies(args.studies, args.count, args.rgb, args.organ)
        simulator = SimulatedPlusServer(frames, port=args.port, fps=args.fps, hold=args.hold)
    except (SonoInputError, OSError) as exc:
        print(f"error: {exc}", flush=True)
        return 2
    simulator.start()
    print(f"streaming {len(frames)} frame(s) at {args.fps:g} fps on 127.0.0.1:{simulator.port}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.set())
    stop.wait(args.duration)
    simulator.stop()
    print(f"sent {simulator.sent} frame(s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
