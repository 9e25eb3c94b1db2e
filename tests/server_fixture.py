"""A real SonoVLM MONAI Label server process for end-to-end tests (reusable by other test suites).

``start_server(studies_dir, conf)`` runs ``python -m monailabel.main start_server`` on 127.0.0.1
on a free port, with a copy of ``monailabel_app`` in a temporary folder (so the server's ``logs/``,
``model/``, ``bin/`` and ``lib/`` never land in the repository), waits until ``/info/`` answers,
and returns a :class:`RunningServer`; ``server.stop()`` ends it by PID (its training subprocesses
first). Defaults: ``backbone tiny``, ``model_dir`` in the temporary folder, ``warmup true``.

Use from pytest (the module-scoped ``sonovlm_server`` pattern of ``tests/app/conftest.py``)::

    from tests.server_fixture import make_studies, start_server

    studies = make_studies(tmp_path / "studies", count=4)
    server = start_server(studies, {"backbone": "tiny"})
    try:
        ...  # server.url
    finally:
        server.stop()
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sonovlm.bench_server import server_command

REPO = Path(__file__).resolve().parents[1]
APP_DIR = REPO / "monailabel_app"

#: Seconds to wait for a server to answer /info/ (imports and warm-up on 2 cores).
START_TIMEOUT_S = 180.0


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

    def log(self, tail: int = 200) -> str:
        """The last ``tail`` lines of the server log."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(lines[-tail:])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the server by PID: its children (training) first, then SIGTERM, then SIGKILL."""
        _kill_children(self.pid)
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(timeout)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    _log_handle: object | None = None


def _kill_children(pid: int) -> None:
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil comes with monailabel
        return
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(children, timeout=10)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_studies(directory: str | os.PathLike, count: int = 4, seed: int = 0) -> Path:
    """Sample studies (``sonovlm sample-data``): DICOMs, labels for about half, ``cases.csv``."""
    from sonovlm.sample_data import write_sample_studies

    directory = Path(directory)
    write_sample_studies(directory, count=count, seed=seed)
    return directory


def start_server(
    studies_dir: str | os.PathLike,
    conf: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    *,
    work_dir: str | os.PathLike | None = None,
    python: str | None = None,
    timeout: float = START_TIMEOUT_S,
    wait: bool = True,
) -> RunningServer:
    """Start a server on ``studies_dir``; see the module notes.

    Args:
        studies_dir: the studies folder (``--studies``).
        conf: ``--conf`` pairs; ``backbone`` defaults to ``tiny`` and ``model_dir`` to a folder in
            ``work_dir``.
        env: extra environment variables for the server.
        work_dir: where the app copy, model dir and log go (default: a new temporary folder).
        python: interpreter (default: this one, the project's venv under pytest).
        timeout: seconds to wait for ``/info/``.
        wait: wait for ``/info/`` (False: return at once, e.g. to test a failing start).

    Raises:
        RuntimeError: the server exited or did not answer in time (the log tail is in the message).
    """
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="sonovlm-server-"))
    work.mkdir(parents=True, exist_ok=True)
    app = work / "app"
    if not app.exists():
        app.mkdir()
        shutil.copy2(APP_DIR / "main.py", app / "main.py")
    conf = {"backbone": "tiny", "model_dir": str(work / "model"), **(conf or {})}
    port = free_port()
    cmd = server_command(app, studies_dir, conf, port, python)

    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    log_path = work / "server.log"
    log = open(log_path, "ab")  # noqa: SIM115 - closed by RunningServer.stop
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=str(work))
    server = RunningServer(
        url=f"http://127.0.0.1:{port}",
        pid=proc.pid,
        proc=proc,
        log_path=log_path,
        studies=Path(studies_dir),
        model_dir=Path(conf["model_dir"]),
        work_dir=work,
        conf=conf,
    )
    server._log_handle = log
    if wait:
        try:
            wait_until_ready(server, timeout)
        except RuntimeError:
            server.stop()
            raise
    return server


def wait_until_ready(server: RunningServer, timeout: float = START_TIMEOUT_S) -> dict:
    """Poll ``/info/`` until it answers 200; returns it. RuntimeError when the process ends first."""
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


@pytest.fixture(scope="session")
def sonovlm_server(tmp_path_factory) -> RunningServer:
    """One server for a whole test session: ``tiny`` backbone on four sample studies.

    Tests that change its state (labels, training) should start their own with
    :func:`start_server` instead. Import it into a ``conftest.py`` to use it::

        from tests.server_fixture import sonovlm_server  # noqa: F401
    """
    root = tmp_path_factory.mktemp("sonovlm-session-server")
    studies = make_studies(root / "studies", count=4)
    server = start_server(studies, {"backbone": "tiny", "scoring_delay_s": "0"}, work_dir=root / "work")
    yield server
    server.stop()
