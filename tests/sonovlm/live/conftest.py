"""Fixtures of the live-scanning tests: studies to stream, a tiny predictor, free ports, viewers.

Everything talks over real sockets on 127.0.0.1: the simulated PLUS server is pyigtl's
``OpenIGTLinkServer`` (:class:`sonovlm.live.simulator.SimulatedPlusServer`) and the viewers are
pyigtl's ``OpenIGTLinkClient``, as 3D Slicer's OpenIGTLinkIF would be.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyigtl
import pytest
from sonovlm.live.simulator import frames_from_studies
from sonovlm.sample_data import write_sample_studies


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return bool(condition())


@pytest.fixture(name="free_port")
def free_port_fixture() -> Callable[[], int]:
    return free_port


@pytest.fixture(name="wait_until")
def wait_until_fixture() -> Callable[..., bool]:
    """``wait_until(condition, timeout)``: poll until true; the last check's value."""
    return wait_until


@pytest.fixture(scope="session")
def studies(tmp_path_factory) -> Path:
    """Six simulated cases written by ``sonovlm sample-data``'s writer (seed 0)."""
    root = tmp_path_factory.mktemp("live-studies")
    write_sample_studies(root, count=6, seed=0, label_every_case=True)
    return root


@pytest.fixture(scope="session")
def node_frames(studies) -> list[tuple[np.ndarray, tuple[float, float]]]:
    """The lymph node cases' imaging areas with their spacing: what the PLUS simulator streams."""
    return frames_from_studies(studies, organ="lymph_node")


@pytest.fixture(scope="session")
def tiny_predictor():
    from sonovlm.model import Predictor, load_model

    return Predictor(load_model(backbone="tiny"), feature_cache_bytes=0)


@pytest.fixture
def viewer_factory() -> Iterator[Callable[[int], pyigtl.OpenIGTLinkClient]]:
    """``viewer(port)``: a pyigtl client connected to 127.0.0.1:port, stopped after the test."""
    clients: list[pyigtl.OpenIGTLinkClient] = []

    def make(port: int) -> pyigtl.OpenIGTLinkClient:
        client = pyigtl.OpenIGTLinkClient(host="127.0.0.1", port=port)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.stop()
