"""A real Orthanc PACS with its DICOMweb plugin, started for the tests on 127.0.0.1.

Orthanc comes from the Debian packages ``orthanc`` and ``orthanc-dicomweb``
(``scripts/install_orthanc.sh``). Each start gets a free port, a temporary storage folder and a
configuration of its own: HTTP only on a free port, the DICOM (C-STORE) port off, remote access and
authentication off (nothing but this machine can reach it), DICOMweb at ``/dicom-web/``. It is
stopped by its PID. Without the packages the fixture skips, saying how to install them.

Use from a test folder's ``conftest.py``::

    from tests.orthanc_fixture import orthanc  # noqa: F401  (the session fixture)

or call :func:`start_orthanc` directly (a test that stops the PACS on purpose).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

#: Where the Debian packages put the DICOMweb plugin.
PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")

INSTALL_HINT = "install it with: sudo scripts/install_orthanc.sh (Debian packages orthanc, orthanc-dicomweb)"


def find_orthanc() -> tuple[str, str] | None:
    """``(Orthanc executable, DICOMweb plugin)`` when both are installed, else ``None``."""
    binary = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if os.path.exists("/usr/sbin/Orthanc") else None)
    if binary is None:
        return None
    for folder in PLUGIN_DIRS:
        for name in sorted(Path(folder).glob("libOrthancDicomWeb.so*")) if os.path.isdir(folder) else []:
            return binary, str(name)
    return None


def free_port() -> int:
    """A TCP port nothing listens on right now (on 127.0.0.1)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class OrthancServer:
    """A running Orthanc. ``url`` is its REST root, ``dicomweb_url`` the DICOMweb root."""

    process: subprocess.Popen
    root: Path
    port: int
    config_path: Path
    log_path: Path
    binary: str
    plugin: str
    _log: object = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop it by PID (SIGTERM, then SIGKILL)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout_s)
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self, timeout_s: float = 30.0) -> None:
        """Start it again on the same port and storage (a PACS that went away and came back)."""
        self.stop()
        fresh = _launch(self.binary, self.config_path, self.log_path)
        self.process, self._log = fresh
        _wait_ready(self, timeout_s)

    def reset(self) -> None:
        """Delete everything stored (between tests sharing one server)."""
        for patient in requests.get(f"{self.url}/patients", timeout=10).json():
            requests.delete(f"{self.url}/patients/{patient}", timeout=10).raise_for_status()

    def instance_count(self) -> int:
        return int(requests.get(f"{self.url}/statistics", timeout=10).json()["CountInstances"])


def _launch(binary: str, config_path: Path, log_path: Path):
    log = open(log_path, "ab")  # noqa: SIM115 - closed by OrthancServer.stop
    process = subprocess.Popen(
        [binary, str(config_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=str(config_path.parent),
    )
    return process, log


def _wait_ready(server: OrthancServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not server.alive():
            tail = server.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"Orthanc exited with {server.process.returncode}:\n{tail}")
        try:
            if requests.get(f"{server.dicomweb_url}/studies", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"Orthanc did not answer within {timeout_s} s; log: {server.log_path}")


def start_orthanc(root: str | os.PathLike, timeout_s: float = 30.0, attempts: int = 3) -> OrthancServer:
    """Start Orthanc with its own configuration and storage under ``root``.

    Raises ``RuntimeError`` when it does not come up (after ``attempts`` ports), and
    ``FileNotFoundError`` when it is not installed.
    """
    found = find_orthanc()
    if found is None:
        raise FileNotFoundError(f"Orthanc with its DICOMweb plugin is not installed; {INSTALL_HINT}")
    binary, plugin = found
    root = Path(root)
    storage = root / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    last_error: Exception | None = None
    for _ in range(attempts):
        port = free_port()
        config = {
            "Name": "SonoVLM test PACS",
            "HttpPort": port,
            "DicomServerEnabled": False,
            "DicomPort": 0,
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpCompressionEnabled": False,
            "StableAge": 1,
            "Plugins": [plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Host": "127.0.0.1"},
        }
        config_path = root / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2))
        log_path = root / "orthanc.log"
        process, log = _launch(binary, config_path, log_path)
        server = OrthancServer(process, root, port, config_path, log_path, binary, plugin, log)
        try:
            _wait_ready(server, timeout_s)
            return server
        except RuntimeError as exc:  # most likely the port was taken in between: try another
            server.stop()
            last_error = exc
    raise RuntimeError(f"Orthanc did not start: {last_error}")


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """One Orthanc for the session (call ``reset()`` for an empty PACS); skips when not installed."""
    if find_orthanc() is None:
        pytest.skip(f"Orthanc with its DICOMweb plugin is not installed; {INSTALL_HINT}")
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        yield server
    finally:
        server.stop()
