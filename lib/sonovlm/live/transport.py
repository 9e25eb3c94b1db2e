"""OpenIGTLink over TCP for a live stream: a reconnecting client and a latest-only server.

The message format is pyigtl's (:class:`pyigtl.MessageBase` parses headers and bodies and packs
messages); the sockets are handled here because pyigtl 0.3's own client never notices that the
server went away while it only receives (a closed socket reads as "no message yet", so it never
reconnects), and its server keeps up to 100 unsent messages per connection, registers process
signal handlers and serves one client at a time.

* :class:`IgtlClient` connects to ``host:port`` (a PLUS server), reads every message (checking the
  body's CRC-64), hands it to ``on_message(message, received_monotonic)`` and, when the
  connection drops or cannot be made, tries again every ``retry_s`` until :meth:`~IgtlClient.stop`.
* :class:`IgtlServer` listens on ``host:port`` (127.0.0.1 by default) for viewers (3D Slicer's
  OpenIGTLinkIF, any OpenIGTLink client) and :meth:`~IgtlServer.publish`\\ es bundles of
  messages to each. A client that is slower than the stream gets the newest frame bundle, never a
  queue: an unsent frame bundle is replaced (and counted); event bundles wait in a short bounded
  queue so that "the stream stopped" is not lost behind a frame. Whatever a client sends is read
  and ignored.

``on_event(name, details)`` callbacks report ``connected``, ``disconnected``, ``waiting`` (the
client) and ``client_connected``, ``client_disconnected`` (the server).
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import pyigtl
from pyigtl.messages import CRC64

from ..errors import SonoInputError

logger = logging.getLogger(__name__)

HEADER_SIZE = pyigtl.MessageBase.IGTL_HEADER_SIZE
#: Largest body read (a 4-channel float64 1024 x 1024 frame is 32 MiB); larger is a broken stream.
MAX_BODY_BYTES = 64 * 1024 * 1024
#: A message whose body stalls this long after its header is a broken stream.
BODY_TIMEOUT_S = 5.0

EventCallback = Callable[[str, dict[str, Any]], None]


def _no_event(name: str, details: dict[str, Any]) -> None:
    return None


def parse_address(text: str, what: str = "--igtl-in") -> tuple[str, int]:
    """``HOST:PORT`` -> ``(host, port)``; SonoInputError naming ``what`` otherwise."""
    host, sep, port_text = str(text).rpartition(":")
    if not sep or not host:
        raise SonoInputError(what, f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), check_port(port_text, what)


def check_port(value: Any, what: str) -> int:
    """A TCP port in 1..65535 (0 is allowed for a server: any free port)."""
    try:
        port = int(str(value))
    except ValueError:
        raise SonoInputError(what, f"port must be an integer, got {value!r}") from None
    if not 0 <= port <= 65535:
        raise SonoInputError(what, f"port must be in 0..65535, got {port}")
    return port


class StreamClosed(ConnectionError):
    """The peer closed the connection or the stream broke mid-message."""


class IgtlClient:
    """Reconnecting OpenIGTLink client (see the module docstring).

    Args:
        host, port: the server (PLUS).
        on_message: called on the reading thread with each message and ``time.monotonic()`` at
            its arrival; an exception it raises is logged and the message skipped.
        on_event: connection events.
        retry_s: pause between connection attempts.
        connect_timeout_s: timeout of one attempt.
    """

    def __init__(
        self,
        host: str,
        port: int,
        on_message: Callable[[Any, float], None],
        on_event: EventCallback | None = None,
        retry_s: float = 0.5,
        connect_timeout_s: float = 2.0,
    ) -> None:
        self.host = host
        self.port = int(port)
        self.on_message = on_message
        self.on_event = on_event or _no_event
        self.retry_s = float(retry_s)
        self.connect_timeout_s = float(connect_timeout_s)
        self.connections = 0
        self.messages = 0
        self.bad_messages = 0
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def reconnects(self) -> int:
        """Connections made after the first one."""
        return max(0, self.connections - 1)

    def start(self) -> IgtlClient:
        if self._thread is not None:
            return self
        self._thread = threading.Thread(
            target=self._run, name=f"igtl-client-{self.host}:{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        sock = self._socket
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ reading thread
    def _run(self) -> None:
        waiting_reported = False
        while not self._stop.is_set():
            try:
                sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout_s)
            except OSError as exc:
                if not waiting_reported:
                    self.on_event("waiting", {"host": self.host, "port": self.port, "reason": str(exc)})
                    waiting_reported = True
                self._stop.wait(self.retry_s)
                continue
            waiting_reported = False
            self._socket = sock
            sock.settimeout(0.2)
            self.connections += 1
            self._connected.set()
            self.on_event("connected", {"host": self.host, "port": self.port, "connection": self.connections})
            reason = "stopped"
            try:
                self._read_messages(sock)
            except (OSError, StreamClosed) as exc:
                reason = str(exc) or type(exc).__name__
            finally:
                self._connected.clear()
                self._socket = None
                sock.close()
            if not self._stop.is_set():
                self.on_event("disconnected", {"host": self.host, "port": self.port, "reason": reason})
                self._stop.wait(self.retry_s)

    def _recv_exact(self, sock: socket.socket, size: int, started: bool) -> bytes | None:
        """``size`` bytes, or None when stopped before a message began (``started`` False)."""
        chunks = bytearray()
        last_progress = time.monotonic()
        while len(chunks) < size:
            if self._stop.is_set() and not started and not chunks:
                return None
            try:
                chunk = sock.recv(min(size - len(chunks), 1 << 20))
            except TimeoutError:
                if self._stop.is_set():
                    return None
                if (started or chunks) and time.monotonic() - last_progress > BODY_TIMEOUT_S:
                    raise StreamClosed(f"message stalled for {BODY_TIMEOUT_S:.0f} s") from None
                continue
            if not chunk:
                raise StreamClosed("the server closed the connection")
            chunks += chunk
            last_progress = time.monotonic()
        return bytes(chunks)

    def _read_messages(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            header = self._recv_exact(sock, HEADER_SIZE, started=False)
            if header is None:
                return
            try:
                fields = pyigtl.MessageBase.parse_header(header)
            except (ValueError, UnicodeDecodeError) as exc:
                raise StreamClosed(f"unreadable OpenIGTLink header ({exc})") from None
            size = int(fields["body_size"])
            if size > MAX_BODY_BYTES:
                raise StreamClosed(f"message body of {size} bytes exceeds {MAX_BODY_BYTES}")
            body = self._recv_exact(sock, size, started=True) if size else b""
            if body is None:
                return
            arrived = time.monotonic()
            crc = int.from_bytes(header[50:58], "big")
            if CRC64(body) != crc:
                self.bad_messages += 1
                logger.warning(
                    "OpenIGTLink %s %r: CRC mismatch, message skipped",
                    fields["message_type"],
                    fields["device_name"],
                )
                continue
            message = pyigtl.MessageBase.create_message(fields["message_type"])
            if message is None:
                continue  # a type pyigtl does not know (STATUS, GET_...): not ours
            try:
                message.unpack(fields, body)
            except Exception as exc:  # noqa: BLE001 - a malformed body from the network
                self.bad_messages += 1
                logger.warning(
                    "OpenIGTLink %s %r: unreadable body (%s), message skipped",
                    fields["message_type"],
                    fields["device_name"],
                    exc,
                )
                continue
            self.messages += 1
            try:
                self.on_message(message, arrived)
            except Exception:  # noqa: BLE001 - the stream must outlive one bad frame
                logger.exception(
                    "handling OpenIGTLink %s %r failed", fields["message_type"], fields["device_name"]
                )


#: A viewer that takes nothing of a bundle for this long is disconnected (it may reconnect).
SEND_TIMEOUT_S = 10.0
#: Events (STRING bundles) kept per viewer while it is slow; older ones are dropped and counted.
MAX_PENDING_EVENTS = 32
FRAME = "frame"
EVENT = "event"


class _Peer:
    """One connected viewer: its socket, its pending bundles and its writer thread.

    A viewer holds at most one pending frame bundle (a newer one replaces it) and at most
    :data:`MAX_PENDING_EVENTS` event bundles (sent before the frame, oldest dropped first).
    """

    def __init__(self, server: IgtlServer, sock: socket.socket, address: tuple) -> None:
        self.server = server
        self.sock = sock
        self.address = f"{address[0]}:{address[1]}"
        self.pending: bytes | None = None
        self.events: deque[bytes] = deque()
        self.replaced = 0
        self.events_dropped = 0
        self.sent = 0
        self.condition = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._run, name=f"igtl-peer-{self.address}", daemon=True)

    def offer(self, payload: bytes, kind: str = FRAME) -> None:
        with self.condition:
            if kind == EVENT:
                if len(self.events) >= MAX_PENDING_EVENTS:
                    self.events.popleft()
                    self.events_dropped += 1
                self.events.append(payload)
            else:
                if self.pending is not None:
                    self.replaced += 1
                self.pending = payload
            self.condition.notify()

    def close(self) -> None:
        with self.condition:
            self.closed = True
            self.condition.notify()
        try:  # wakes a writer blocked in sendall on a viewer that stopped reading
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _drain_incoming(self) -> bool:
        """Read and ignore what the viewer sent; False when it closed the connection."""
        while True:
            readable, _, _ = select.select([self.sock], [], [], 0)
            if not readable:
                return True
            try:
                data = self.sock.recv(65536)
            except OSError:
                return False
            if not data:
                return False

    def _run(self) -> None:
        reason = "server stopped"
        try:
            while True:
                with self.condition:
                    self.condition.wait_for(
                        lambda: self.pending is not None or self.events or self.closed, 0.1
                    )
                    if self.closed:
                        break
                    payloads = list(self.events)
                    self.events.clear()
                    if self.pending is not None:
                        payloads.append(self.pending)
                        self.pending = None
                if not self._drain_incoming():
                    reason = "the client closed the connection"
                    break
                try:
                    for payload in payloads:
                        self.sock.sendall(payload)
                        self.sent += 1
                except OSError as exc:
                    reason = str(exc) or type(exc).__name__
                    break
        finally:
            try:
                self.sock.close()
            except OSError:
                pass
            self.server._forget(self, reason)


class IgtlServer:
    """OpenIGTLink server that sends each client the newest frame bundle (see the module docstring).

    Args:
        port: TCP port (0 = a free one; see :attr:`port` after :meth:`start`).
        host: interface to bind (default 127.0.0.1: this machine only).
        on_event: client events.
    """

    def __init__(self, port: int, host: str = "127.0.0.1", on_event: EventCallback | None = None) -> None:
        self.host = host
        self.port = check_port(port, "--igtl-out")
        self.on_event = on_event or _no_event
        self._listener: socket.socket | None = None
        self._peers: list[_Peer] = []
        self._lock = threading.Lock()
        self._latest: bytes | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.published = 0
        self.clients_served = 0

    def start(self) -> IgtlServer:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((self.host, self.port))
        except OSError as exc:
            listener.close()
            raise SonoInputError(
                f"--igtl-out {self.host}:{self.port}", f"cannot listen there ({exc})"
            ) from None
        listener.listen(8)
        listener.settimeout(0.2)
        self._listener = listener
        self.port = int(listener.getsockname()[1])
        self._thread = threading.Thread(target=self._accept, name=f"igtl-server-{self.port}", daemon=True)
        self._thread.start()
        return self

    @property
    def clients(self) -> int:
        with self._lock:
            return len(self._peers)

    def publish(self, messages: Sequence[Any], kind: str = FRAME) -> None:
        """Send ``messages`` (pyigtl messages, packed once, in order) to every client.

        ``kind`` ``"frame"`` (a labelmap and its status): a client that has not taken the previous
        frame bundle yet gets this one instead, and a client that connects later receives the
        newest one first. ``"event"``: queued per client (at most :data:`MAX_PENDING_EVENTS`).
        """
        if kind not in (FRAME, EVENT):
            raise ValueError(f"kind must be {FRAME!r} or {EVENT!r}, got {kind!r}")
        payload = b"".join(message.pack() for message in messages)
        with self._lock:
            if kind == FRAME:
                self._latest = payload
                self.published += 1
            peers = list(self._peers)
        for peer in peers:
            peer.offer(payload, kind)

    def replaced(self) -> int:
        """Frame bundles replaced before a (slow) client received them, over the current clients."""
        with self._lock:
            return sum(peer.replaced for peer in self._peers)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            peers = list(self._peers)
        for peer in peers:
            peer.close()
        for peer in peers:
            peer.thread.join(timeout)

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            while not self._stop.is_set():
                try:
                    sock, address = self._listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    break
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.settimeout(SEND_TIMEOUT_S)
                peer = _Peer(self, sock, address)
                with self._lock:
                    self._peers.append(peer)
                    self.clients_served += 1
                    latest = self._latest
                if latest is not None:
                    peer.offer(latest)
                peer.thread.start()
                self.on_event("client_connected", {"client": peer.address})
        finally:
            self._listener.close()

    def _forget(self, peer: _Peer, reason: str) -> None:
        with self._lock:
            if peer in self._peers:
                self._peers.remove(peer)
        if not self._stop.is_set():
            self.on_event("client_disconnected", {"client": peer.address, "reason": reason})
