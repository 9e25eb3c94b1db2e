"""A real SonoVLM MONAI Label server process for end-to-end tests (reusable by other test suites).

The launching is :mod:`sonovlm.server_launcher` (the project's one launcher, also used by the
benchmarks and ``scripts/stress.py``); this module adds the test defaults: the repository's
``monailabel_app`` (copied into a temporary folder, so the server's ``logs/``, ``model/``,
``bin/`` and ``lib/`` never land in the repository), ``backbone tiny`` and ``model_dir`` in the
temporary folder. ``server.stop()`` ends the server's process group (its training subprocesses
with it).

Use from pytest (the module-scoped ``server_factory`` of ``tests/app/conftest.py``)::

    from tests.server_fixture import make_studies, start_server

    studies = make_studies(tmp_path / "studies", count=4)
    server = start_server(studies, {"backbone": "tiny"})
    try:
        ...  # server.url
    finally:
        server.stop()
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from sonovlm.server_launcher import (
    START_TIMEOUT_S,
    RunningServer,
    free_port,
    wait_until_ready,
)
from sonovlm.server_launcher import start_server as launch

REPO = Path(__file__).resolve().parents[1]
APP_DIR = REPO / "monailabel_app"

__all__ = [
    "APP_DIR",
    "START_TIMEOUT_S",
    "RunningServer",
    "free_port",
    "make_studies",
    "sonovlm_server",
    "start_server",
    "wait_until_ready",
]


def make_studies(directory: str | os.PathLike, count: int = 4, seed: int = 0) -> Path:
    """Sample studies (``sonovlm sample-data``): DICOMs, labels for about half, ``cases.csv``."""
    from sonovlm.sample_data import write_sample_studies

    directory = Path(directory)
    write_sample_studies(directory, count=count, seed=seed)
    return directory


def start_server(
    studies_dir: str | os.PathLike,
    conf: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    **kwargs: Any,
) -> RunningServer:
    """:func:`sonovlm.server_launcher.start_server` of the repository's ``monailabel_app`` on
    ``studies_dir``; ``backbone`` defaults to ``tiny`` and ``precision`` to ``fp32``: the server
    tests compare served masks with the same model run in the test process, bit for bit, and
    ``auto`` picks bf16 or int8 on most CPUs (tests/sonovlm/app/test_precision_conf.py covers it).
    ``kwargs``: ``work_dir``, ``python``, ``timeout``, ``wait`` (see the launcher)."""
    conf = {"backbone": "tiny", "precision": "fp32", **(conf or {})}
    return launch(APP_DIR, studies_dir, conf, env, **kwargs)


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
