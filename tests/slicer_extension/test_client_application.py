"""The client against replies the SonoVLM server is being changed to give (issue 13 item 7: 409
on an existing image id; item 14: an expired token), and the requests off the GUI thread
(item 9). A scripted HTTP server on 127.0.0.1 gives exactly those replies."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest
from slicer_extension_helpers import serve_http
from SonoVLMLib.client import ImageExistsError, SonoVLMClient, SonoVLMClientError
from SonoVLMLib.tasks import BackgroundSteps, Cancelled, run_steps


class _Datastore(BaseHTTPRequestHandler):
    """PUT /datastore/image: 409 for an id it has unless params say replace; a token that
    expires after each use; a slow /info/."""

    images: set = set()
    uploads: list = []
    valid_tokens: set = set()
    logins = 0

    def _reply(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode("latin-1")
        image_id = self.path.split("image=")[1].split("&")[0]
        replace = '"replace": true' in body
        cls = type(self)
        if image_id in cls.images and not replace:
            self._reply(409, {"detail": f"image {image_id!r} is already in the datastore"})
            return
        cls.images.add(image_id)
        cls.uploads.append((image_id, replace))
        self._reply(200, {"image": image_id})

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        cls = type(self)
        if self.path == "/auth/token":
            cls.logins += 1
            token = f"token-{cls.logins}"
            cls.valid_tokens = {token}
            self._reply(200, {"access_token": token, "token_type": "bearer"})
            return
        self._reply(404, {"detail": "not here"})

    def do_GET(self):
        cls = type(self)
        if self.path.startswith("/slow"):
            time.sleep(1.0)
            self._reply(200, {"slow": True})
            return
        token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
        if token not in cls.valid_tokens:
            self._reply(401, {"detail": "token expired"})
            return
        cls.valid_tokens = set()  # expires after one use
        self._reply(200, {"name": "scripted"})

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _Datastore.images, _Datastore.uploads, _Datastore.valid_tokens, _Datastore.logins = set(), [], set(), 0
    url, stop = serve_http(_Datastore)
    yield url
    stop()


def test_an_existing_image_id_is_409_unless_replace(server, tmp_path):
    image = tmp_path / "x.nrrd"
    image.write_bytes(b"NRRD0004\n")
    client = SonoVLMClient(server, timeout=10)
    assert client.upload_image(str(image), "us-abc") == "us-abc"
    with pytest.raises(ImageExistsError) as raised:
        client.upload_image(str(image), "us-abc")
    assert raised.value.status == 409 and raised.value.image_id == "us-abc"
    assert "already" in raised.value.message
    assert client.upload_image(str(image), "us-abc", replace=True) == "us-abc"
    assert _Datastore.uploads == [("us-abc", False), ("us-abc", True)]


def test_an_expired_token_is_renewed_silently_once(server):
    client = SonoVLMClient(server, timeout=10)
    client.login("sonographer", "secret")
    assert client.info() == {"name": "scripted"}
    assert client.info() == {"name": "scripted"}  # the token had expired: logged in again, retried
    assert _Datastore.logins == 2 and client.token == "token-2"

    manual = SonoVLMClient(server, timeout=10, token="typed-in")
    with pytest.raises(SonoVLMClientError) as raised:  # no credentials to renew with: 401 shows
        manual.info()
    assert raised.value.status == 401 and _Datastore.logins == 2


def _action(client, log):
    """An action as the workflow writes them: a request, then work on the caller's thread."""
    try:
        reply = yield lambda: (
            log.append(("request", threading.current_thread().name)),
            client._json("GET", "/slow"),
        )[1]
        log.append(("scene", threading.current_thread().name))
        return reply
    finally:
        log.append(("cleanup", threading.current_thread().name))


def test_requests_run_off_the_calling_thread_and_the_scene_work_on_it(server):
    client = SonoVLMClient(server, timeout=10)
    log = []
    task = BackgroundSteps(_action(client, log))
    started = time.monotonic()
    polls = 0
    while not task.poll():
        polls += 1
        time.sleep(0.02)
    assert time.monotonic() - started >= 0.9 and polls > 10  # the caller kept running meanwhile
    assert task.error is None and task.outcome == {"slow": True}
    me = threading.current_thread().name
    assert log[0] == ("request", "SonoVLM request")
    assert log[1:] == [("scene", me), ("cleanup", me)]
    log.clear()
    assert run_steps(_action(client, log)) == {"slow": True}
    assert {name for _, name in log} == {me}


def test_cancel_stops_waiting_at_once_and_drops_the_reply(server):
    client = SonoVLMClient(server, timeout=10)
    log = []
    task = BackgroundSteps(_action(client, log))
    time.sleep(0.1)
    started = time.monotonic()
    task.cancel()
    assert time.monotonic() - started < 0.2
    assert task.done and isinstance(task.error, Cancelled)
    assert [kind for kind, _ in log] == ["request", "cleanup"]  # the action's clean-up ran
    assert task.wait(5)  # the server answered later...
    assert task.poll() and [kind for kind, _ in log] == ["request", "cleanup"]  # ...and was dropped
