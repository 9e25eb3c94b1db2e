"""``scripts/demo.sh`` (what ``make demo`` runs): serves the packaged demo model, refuses bad usage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from sonovlm.demo_model import DEMO_CARD

from tests.server_fixture import free_port, make_studies

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "demo.sh"


def _run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


def test_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


def test_neither_weights_nor_backbone_is_a_usage_error(tmp_path):
    result = _run(sys.executable, str(tmp_path), "127.0.0.1", "1", "", "")
    assert result.returncode == 2 and "give WEIGHTS" in result.stderr


def test_missing_studies_folder_names_it(tmp_path):
    result = _run(sys.executable, str(tmp_path / "absent"), "127.0.0.1", "1", "demo", "")
    assert result.returncode == 2 and "absent" in result.stderr and "make sample-data" in result.stderr


def test_make_demo_serves_the_demo_model_on_loopback(tmp_path):
    studies = make_studies(tmp_path / "studies", count=3)
    port = free_port()
    log = open(tmp_path / "demo.log", "wb")  # noqa: SIM115 - closed below
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SONOVLM_CONF": f"model_dir {tmp_path / 'model'}"}
    proc = subprocess.Popen(
        ["bash", str(SCRIPT), sys.executable, str(studies), "127.0.0.1", str(port), "demo", ""],
        stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO), env=env, start_new_session=True,
    )
    try:
        info = None
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/info/", timeout=5) as reply:
                    info = json.loads(reply.read())
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        output = (tmp_path / "demo.log").read_text(errors="replace")
        assert info is not None, output[-3000:]
        assert "Not for clinical use" in output
        segmentation = info["models"]["segmentation"]
        assert segmentation["model_card"] == DEMO_CARD and segmentation["backbone"] == "small (untrained)"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the script execs the server: its PID is the server's
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()
