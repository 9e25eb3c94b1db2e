"""End-to-end fixtures: real server processes on 127.0.0.1 (see tests/server_fixture.py)."""

from __future__ import annotations

import pytest

from tests.server_fixture import sonovlm_server  # noqa: F401  (session fixture for reuse)


@pytest.fixture(scope="module")
def server_factory(tmp_path_factory):
    """``start(studies, conf) -> RunningServer``; every server started is stopped after the module."""
    from tests.server_fixture import start_server

    started = []

    def start(studies, conf=None, **kwargs):
        work = tmp_path_factory.mktemp("server")
        server = start_server(studies, conf, work_dir=work, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
