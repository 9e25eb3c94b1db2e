"""A one-slot buffer between the network and the model: only the latest frame waits.

The receiving thread :meth:`LatestFrameBuffer.put`\\ s every frame it reads; the segmenting loop
:meth:`LatestFrameBuffer.take`\\ s the newest one when it is free. A frame that is replaced before
it was taken is dropped and counted: a sender faster than the model costs dropped frames, never
memory (at most one frame waits, whatever the rates).
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class LatestFrameBuffer(Generic[T]):
    """Thread-safe latest-value slot with counters.

    Attributes:
        received: frames put.
        taken: frames taken.
        dropped: frames replaced (or discarded by :meth:`clear`) before anyone took them.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._item: T | None = None
        self._closed = False
        self.received = 0
        self.taken = 0
        self.dropped = 0

    def put(self, item: T) -> None:
        """Offer the newest frame; an untaken older one is dropped."""
        with self._condition:
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self.received += 1
            self._condition.notify_all()

    def take(self, timeout: float | None = None) -> T | None:
        """The newest untaken frame, waiting up to ``timeout`` s (None = until one comes or
        :meth:`close`); ``None`` when none came in time or the buffer is closed."""
        with self._condition:
            if self._item is None and not self._closed:
                self._condition.wait_for(lambda: self._item is not None or self._closed, timeout)
            item, self._item = self._item, None
            if item is not None:
                self.taken += 1
            return item

    @property
    def pending(self) -> int:
        """Frames waiting: 0 or 1."""
        with self._condition:
            return 0 if self._item is None else 1

    def clear(self) -> None:
        """Discard a waiting frame (counted as dropped)."""
        with self._condition:
            if self._item is not None:
                self.dropped += 1
                self._item = None

    def close(self) -> None:
        """Wake every :meth:`take`; later takes return what is left, then ``None`` at once."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def counts(self) -> dict[str, int]:
        with self._condition:
            return {"received": self.received, "taken": self.taken, "dropped": self.dropped}
