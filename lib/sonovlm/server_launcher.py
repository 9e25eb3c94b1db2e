"""Start and stop a SonoVLM MONAI Label server process on 127.0.0.1 (tests, benchmarks, stress script).

The one launcher of the project: ``start_server(app_dir, studies_dir, conf)`` runs
``python -m monailabel.main start_server --app APP --studies STUDIES --conf K V ... --host 127.0.0.1
--port PORT`` on a free port, in its own process group, waits until ``/info/`` answers and returns a
:class:`RunningServer`; ``server.stop()`` ends the whole process group (the server and the training
subprocesses it started): SIGTERM, then SIGKILL after ``timeout`` seconds.

``app_dir`` is a MONAI Label app folder (``monailabel_app`` of a checkout). Its top-level files are
copied into ``work_dir/app`` first (``copy_app=True``, the default), so the ``logs/``, ``model/``,
``bin/`` and ``lib/`` MONAI Label writes beside the app never land in the caller's folder::

    from sonovlm.server_launcher import start_server

    server = start_server("monailabel_app", "studies", {"backbone": "tiny"})
    try:
        ...  # server.url, e.g. http://127.0.0.1:41234
    finally:
        server.stop()

Only loopback: the host is fixed to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .errors import SonoInputError

HOST = "127.0.0.1"
#: Default seconds to wait for ``/info/`` (imports and the model warm-up on a busy 2-core machine).
START_TIMEOUT_S = 180.0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def server_command(
    app: str | os.PathLike,
    studies: str | os.PathLike,
    conf: dict[str, Any],
    port: int,
    python: str | None = None,
) -> list[str]:
    """``python -m monailabel.main start_server`` of ``app`` on 127.0.0.1:``port``, one ``--conf``
    per item of ``conf`` (values as ``str``); ``python`` defaults to this interpreter."""
    cmd = [python or sys.executable, "-m", "monailabel.main", "start_server"]
    cmd += ["--app", str(app), "--studies", str(studies)]
    for key, value in conf.items():
        cmd += ["--conf", str(key), str(value)]
    return cmd + ["--host", HOST, "--port", str(port)]


@dataclass
class RunningServer:
    """A started server. ``url`` has no trailing slash; ``log_path`` holds its stdout and stderr."""

    url: str
    pid: int
    proc: subprocess.Popen
    log_path: Path
    studies: Path
    model_dir: Path
    work_dir: Path
    conf: dict[str, str] = field(default_factory=dict)
    _log_handle: IO[bytes] | None = field(default=None, repr=False)

    def log(self, tail: int = 200) -> str:
        """The last ``tail`` lines of the server log."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(lines[-tail:])

    def alive(self) -> bool:
        """Whether the server process still runs."""
        return self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        """End the server's process group (server and its training subprocesses): SIGTERM, then
        SIGKILL after ``timeout`` seconds. Safe to call twice."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)  # the group id is the server's pid (start_new_session)
            try:
                self.proc.wait(timeout)
                # Children that outlive the server (a trainer ignoring SIGTERM) go with SIGKILL.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, signal.SIGKILL)
                break
            except subprocess.TimeoutExpired:
                continue
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _copy_app(app_dir: Path, target: Path) -> None:
    """The app folder's top-level files (``main.py`` and its configuration), not what the server wrote."""
    target.mkdir(parents=True, exist_ok=True)
    for item in app_dir.iterdir():
        if item.is_file():
            shutil.copy2(item, target / item.name)


def start_server(
    app_dir: str | os.PathLike,
    studies_dir: str | os.PathLike,
    conf: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    *,
    work_dir: str | os.PathLike | None = None,
    python: str | None = None,
    timeout: float = START_TIMEOUT_S,
    wait: bool = True,
    copy_app: bool = True,
) -> RunningServer:
    """Start a server of ``app_dir`` on ``studies_dir``; see the module notes.

    Args:
        app_dir: the MONAI Label app folder (holds ``main.py``).
        studies_dir: the studies folder or DICOMweb URL (``--studies``).
        conf: ``--conf`` pairs; ``model_dir`` defaults to ``work_dir/model``.
        env: extra environment variables for the server (``HF_HUB_OFFLINE=1`` and
            ``PYTHONUNBUFFERED=1`` are set unless given).
        work_dir: where the app copy, model dir and ``server.log`` go (default: a new temporary folder).
        python: interpreter (default: this one).
        timeout: seconds to wait for ``/info/``.
        wait: wait for ``/info/`` (False: return at once, e.g. when ``/info/`` needs a token).
        copy_app: run a copy of the app's files in ``work_dir/app`` (False: run ``app_dir`` itself).

    Raises:
        SonoInputError: ``app_dir`` has no ``main.py``, or ``studies_dir`` is neither a folder nor
            an ``http(s)://`` URL.
        RuntimeError: the server exited or did not answer in time (the log tail is in the message).
    """
    app_dir = Path(app_dir)
    if not (app_dir / "main.py").is_file():
        raise SonoInputError(app_dir, "not a MONAI Label app folder (no main.py)")
    if not str(studies_dir).startswith(("http://", "https://")) and not Path(studies_dir).is_dir():
        raise SonoInputError(studies_dir, "studies folder not found (give a folder or a DICOMweb URL)")
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="sonovlm-server-"))
    work.mkdir(parents=True, exist_ok=True)
    app = app_dir
    if copy_app:
        app = work / "app"
        if not (app / "main.py").exists():
            _copy_app(app_dir, app)
    conf = {"model_dir": str(work / "model"), **(conf or {})}
    conf = {str(key): str(value) for key, value in conf.items()}
    port = free_port()
    cmd = server_command(app, studies_dir, conf, port, python)
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    log_path = work / "server.log"
    log = open(log_path, "ab")  # noqa: SIM115 - closed by RunningServer.stop
    proc = subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=full_env,
        cwd=str(work),
        start_new_session=True,  # its own process group: stop() ends the server and its trainers
    )
    server = RunningServer(
        url=f"http://{HOST}:{port}",
        pid=proc.pid,
        proc=proc,
        log_path=log_path,
        studies=Path(studies_dir),
        model_dir=Path(conf["model_dir"]),
        work_dir=work,
        conf=conf,
        _log_handle=log,
    )
    if wait:
        try:
            wait_until_ready(server, timeout)
        except BaseException:
            server.stop()
            raise
    return server


def wait_until_ready(server: RunningServer, timeout: float = START_TIMEOUT_S) -> dict:
    """Poll ``/info/`` until it answers 200; returns it. RuntimeError when the process ends first
    or ``timeout`` seconds pass."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not server.alive():
            raise RuntimeError(f"server exited with {server.proc.returncode}:\n{server.log(60)}")
        try:
            with urllib.request.urlopen(f"{server.url}/info/", timeout=5) as response:
                if response.status == 200:
                    return json.loads(response.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server did not answer /info/ within {timeout:.0f} s:\n{server.log(60)}")
