"""``sonovlm.server_launcher`` without a real server: command line, bad input, process-group stop.

The real server is started through it by every end-to-end test (``tests/server_fixture.py``).
"""

from __future__ import annotations

import os
import stat
import time

import pytest
from sonovlm.errors import SonoInputError
from sonovlm.server_launcher import server_command, start_server


def _gone(pid: int, wait_s: float = 5.0) -> bool:
    """The process ended (a zombie waiting for an init that does not reap counts as ended)."""
    import psutil

    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def _app(tmp_path):
    app = tmp_path / "app_src"
    app.mkdir()
    (app / "main.py").write_text("# a MONAI Label app\n")
    (app / "notes.txt").write_text("copied too\n")
    (app / "logs").mkdir()  # what a server wrote beside the app: not copied
    return app


def test_server_command_is_loopback_with_one_conf_per_item():
    cmd = server_command("app", "studies", {"backbone": "tiny", "threads": 2}, 8123, python="py")
    assert cmd[:4] == ["py", "-m", "monailabel.main", "start_server"]
    assert cmd[cmd.index("--app") + 1] == "app" and cmd[cmd.index("--studies") + 1] == "studies"
    assert cmd[-4:] == ["--host", "127.0.0.1", "--port", "8123"]
    joined = " ".join(cmd)
    assert "--conf backbone tiny" in joined and "--conf threads 2" in joined


def test_bad_app_or_studies_folder_is_named(tmp_path):
    with pytest.raises(SonoInputError, match="no main.py") as error:
        start_server(tmp_path / "nowhere", tmp_path)
    assert "nowhere" in str(error.value)
    with pytest.raises(SonoInputError, match="studies folder not found") as error:
        start_server(_app(tmp_path), tmp_path / "no-studies")
    assert "no-studies" in str(error.value)


def test_stop_ends_the_whole_process_group(tmp_path):
    """A fake interpreter that starts a child (as the server starts trainers) and sleeps: after
    ``stop()`` neither is left, and the app's top-level files were copied into the work folder."""
    child_pid_file = tmp_path / "child.pid"
    fake = tmp_path / "fake-python"
    fake.write_text(f"#!/bin/sh\nsleep 300 &\necho $! > {child_pid_file}\nexec sleep 300\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    studies = tmp_path / "studies"
    studies.mkdir()
    server = start_server(_app(tmp_path), studies, {"backbone": "tiny"}, work_dir=tmp_path / "work",
                          python=str(fake), wait=False)
    deadline = time.monotonic() + 10
    while not child_pid_file.exists() or not child_pid_file.read_text().strip():
        assert time.monotonic() < deadline, "the fake server did not start its child"
        time.sleep(0.05)
    child = int(child_pid_file.read_text())
    assert server.alive() and os.getpgid(child) == server.pid
    assert sorted(p.name for p in (tmp_path / "work" / "app").iterdir()) == ["main.py", "notes.txt"]
    assert server.conf["model_dir"] == str(tmp_path / "work" / "model")
    assert server.url.startswith("http://127.0.0.1:")
    server.stop(timeout=5)
    assert not server.alive()
    assert _gone(child), "the server's child outlived stop()"
    server.stop()  # twice is fine
