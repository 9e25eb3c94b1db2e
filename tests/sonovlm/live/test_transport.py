"""IgtlClient (reconnecting reader) and IgtlServer (latest-only sender) against pyigtl and raw sockets."""

from __future__ import annotations

import json
import socket
import struct
import threading
import tracemalloc

import numpy as np
import pyigtl
import pytest
from sonovlm.errors import SonoInputError
from sonovlm.live import IgtlClient, IgtlServer, image_message, parse_address, string_message
from sonovlm.live.transport import MAX_BODY_BYTES, check_port


def test_addresses_and_ports():
    assert parse_address("localhost:18944") == ("localhost", 18944)
    assert parse_address("[::1]:18944") == ("::1", 18944)
    for bad in ("18944", ":18944", "host:", "host:x", "host:70000"):
        with pytest.raises(SonoInputError, match="--igtl-in"):
            parse_address(bad)
    assert check_port("0", "--igtl-out") == 0
    with pytest.raises(SonoInputError, match="--igtl-out.*0..65535"):
        check_port(-1, "--igtl-out")


def _listening_socket() -> socket.socket:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    return listener


def test_server_refuses_a_port_in_use():
    with _listening_socket() as taken:
        port = taken.getsockname()[1]
        with pytest.raises(SonoInputError, match=f"--igtl-out 127.0.0.1:{port}.*cannot listen"):
            IgtlServer(port).start()


def test_server_binds_loopback_by_default():
    server = IgtlServer(0).start()
    try:
        assert server.host == "127.0.0.1" and server.port > 0
    finally:
        server.stop()


def _bundle(index: int, size: int = 8):
    image = image_message(np.full((size, size), index % 256, np.uint8), (0.1, 0.1), device_name="Label")
    return [image, string_message({"index": index}, "Status")]


def test_viewers_get_frames_and_events_and_a_late_viewer_gets_the_newest_frame(viewer_factory, wait_until):
    events = []
    server = IgtlServer(0, on_event=lambda name, details: events.append(name)).start()
    try:
        first = viewer_factory(server.port)
        assert wait_until(lambda: server.clients == 1, 5)
        server.publish(_bundle(1))
        server.publish([string_message({"event": "stream_stopped"}, "Event")], "event")
        server.publish(_bundle(2))
        status = first.wait_for_message("Status", timeout=5)
        event = first.wait_for_message("Event", timeout=5)
        assert event is not None and json.loads(event.string) == {"event": "stream_stopped"}
        if json.loads(status.string)["index"] == 1:  # the writer may have sent bundle 1 already
            status = first.wait_for_message("Status", timeout=5)
        assert json.loads(status.string) == {"index": 2}

        late = viewer_factory(server.port)
        label = late.wait_for_message("Label", timeout=5)
        assert label is not None and int(label.image[0, 0, 0]) == 2
        assert json.loads(late.wait_for_message("Status", timeout=5).string) == {"index": 2}
        assert server.published == 2 and events.count("client_connected") == 2
    finally:
        server.stop()
    with pytest.raises(ValueError, match="kind"):
        server.publish(_bundle(3), "other")


def test_a_viewer_that_stops_reading_gets_the_newest_bundle_not_a_queue(wait_until):
    """200 bundles of 512 KiB to a viewer that reads nothing: replaced, and memory stays flat."""
    server = IgtlServer(0).start()
    viewer = socket.create_connection(("127.0.0.1", server.port))
    viewer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        assert wait_until(lambda: server.clients == 1, 5)
        bundle = [image_message(np.zeros((512, 1024), np.uint8), (0.1, 0.1), device_name="Label")]
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            before, _ = tracemalloc.get_traced_memory()
            for _ in range(200):
                server.publish(bundle)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert server.replaced() > 100
        assert peak - before < 16 * 512 * 1024, f"{(peak - before) / 2**20:.1f} MiB held"
    finally:
        server.stop(timeout=2.0)
        viewer.close()
    # stop() woke the writer blocked on the full socket
    assert server.clients == 0


class _Collector:
    def __init__(self):
        self.messages = []
        self.events = []
        self.got = threading.Event()

    def on_message(self, message, arrived):
        self.messages.append((message, arrived))
        self.got.set()

    def on_event(self, name, details):
        self.events.append((name, details))


def _pyigtl_server(port: int) -> pyigtl.OpenIGTLinkServer:
    import signal

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return pyigtl.OpenIGTLinkServer(port=port, local_server=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def test_client_reads_a_pyigtl_server_and_reconnects_after_it_restarts(free_port, wait_until):
    port = free_port()
    collector = _Collector()
    client = IgtlClient("127.0.0.1", port, collector.on_message, collector.on_event, retry_s=0.05)
    client.start()
    try:
        assert wait_until(lambda: any(name == "waiting" for name, _ in collector.events), 5)
        server = _pyigtl_server(port)
        assert client.wait_connected(5)
        server.send_message(image_message(np.ones((6, 7), np.uint8), (0.2, 0.3), timestamp=1.5), wait=False)
        assert wait_until(lambda: collector.messages, 5)
        message, arrived = collector.messages[0]
        assert message.message_type == "IMAGE" and message.image.shape == (1, 6, 7) and arrived > 0
        assert message.timestamp == pytest.approx(1.5)
        server.stop()
        assert wait_until(lambda: any(name == "disconnected" for name, _ in collector.events), 5)
        server = _pyigtl_server(port)
        try:
            assert wait_until(lambda: client.connections == 2, 10)
            server.send_message(string_message({"after": "reconnect"}, "Status"), wait=False)
            assert wait_until(lambda: len(collector.messages) == 2, 5)
            assert client.reconnects == 1
        finally:
            server.stop()
    finally:
        client.stop()
    names = [name for name, _ in collector.events]
    assert names.count("connected") == 2 and "disconnected" in names


def _raw_message(message_type: str, body: bytes, crc: int | None = None, size: int | None = None) -> bytes:
    from pyigtl.messages import CRC64

    header = struct.pack(
        "> H 12s 20s II Q Q",
        1,
        message_type.encode(),
        b"Raw",
        0,
        0,
        len(body) if size is None else size,
        CRC64(body) if crc is None else crc,
    )
    return header + body


def test_client_skips_bad_crc_and_unknown_types_and_drops_an_oversized_stream(wait_until):
    collector = _Collector()
    with _listening_socket() as listener:
        port = listener.getsockname()[1]
        client = IgtlClient("127.0.0.1", port, collector.on_message, collector.on_event, retry_s=0.05)
        client.start()
        try:
            peer, _ = listener.accept()
            good = string_message({"ok": 1}, "Status").pack()
            text = good[pyigtl.MessageBase.IGTL_HEADER_SIZE :]
            peer.sendall(_raw_message("STRING", text, crc=12345))  # bad CRC
            peer.sendall(_raw_message("STATUS", b"\x00" * 30))  # a type pyigtl does not read
            peer.sendall(good)
            assert wait_until(lambda: collector.messages, 5)
            assert [json.loads(m.string) for m, _ in collector.messages] == [{"ok": 1}]
            assert client.bad_messages == 1
            peer.sendall(_raw_message("IMAGE", b"", size=MAX_BODY_BYTES + 1))
            assert wait_until(lambda: any(name == "disconnected" for name, _ in collector.events), 5)
            reason = next(d["reason"] for name, d in collector.events if name == "disconnected")
            assert "exceeds" in reason
            peer.close()
            again, _ = listener.accept()  # it reconnects
            again.close()
        finally:
            client.stop()
    assert not client.connected


def test_a_failing_handler_does_not_stop_the_stream(wait_until):
    seen = []

    def handler(message, arrived):
        seen.append(message)
        if len(seen) == 1:
            raise RuntimeError("bad frame")

    with _listening_socket() as listener:
        client = IgtlClient("127.0.0.1", listener.getsockname()[1], handler).start()
        try:
            peer, _ = listener.accept()
            peer.sendall(string_message({"n": 1}, "S").pack() + string_message({"n": 2}, "S").pack())
            assert wait_until(lambda: len(seen) == 2, 5)
            assert client.connections == 1
            peer.close()
        finally:
            client.stop()
