"""LatestFrameBuffer: one slot, newest wins, drops counted, bounded whatever the rates."""

from __future__ import annotations

import threading
import time

from sonovlm.live import LatestFrameBuffer


def test_newest_wins_and_replaced_frames_are_counted():
    buffer: LatestFrameBuffer[int] = LatestFrameBuffer()
    for value in range(5):
        buffer.put(value)
    assert buffer.pending == 1
    assert buffer.take(timeout=0) == 4
    assert buffer.take(timeout=0) is None
    assert buffer.counts() == {"received": 5, "taken": 1, "dropped": 4}


def test_take_waits_for_a_frame_and_times_out():
    buffer: LatestFrameBuffer[str] = LatestFrameBuffer()
    started = time.monotonic()
    assert buffer.take(timeout=0.05) is None
    assert time.monotonic() - started >= 0.04
    threading.Timer(0.05, buffer.put, args=("frame",)).start()
    assert buffer.take(timeout=2.0) == "frame"


def test_close_wakes_a_waiting_take_and_clear_counts_a_drop():
    buffer: LatestFrameBuffer[int] = LatestFrameBuffer()
    threading.Timer(0.05, buffer.close).start()
    assert buffer.take(timeout=None) is None and buffer.closed
    buffer.put(1)
    buffer.clear()
    assert buffer.pending == 0 and buffer.dropped == 1


def test_a_fast_producer_never_makes_more_than_one_frame_wait():
    """A producer 100x faster than the consumer: at most one waits; every frame is accounted for."""
    buffer: LatestFrameBuffer[bytes] = LatestFrameBuffer()
    stop = threading.Event()
    most_pending = 0

    def produce() -> None:
        while not stop.is_set():
            buffer.put(bytes(1024))
            time.sleep(0.0001)

    producer = threading.Thread(target=produce)
    producer.start()
    taken = 0
    for _ in range(20):
        if buffer.take(timeout=1.0) is not None:
            taken += 1
        most_pending = max(most_pending, buffer.pending)
        time.sleep(0.01)
    stop.set()
    producer.join()
    counts = buffer.counts()
    assert most_pending <= 1 and taken == counts["taken"] == 20
    assert counts["received"] == counts["taken"] + counts["dropped"] + buffer.pending
    assert counts["dropped"] > counts["taken"]
