"""Fixtures for the Slicer extension's tests: the module folder (``SonoVLMLib``) and this folder's
helpers on sys.path, and MRML scenes from 3D Slicer's own Qt-free core (``slicer-core``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
MODULE_DIR = HERE.parents[1] / "slicer_extension" / "SonoVLM"
for folder in (MODULE_DIR, HERE):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


@pytest.fixture
def slicer_scene():
    """A fresh MRML scene (``vtkMRMLScene``) ready for sequences, markups and segmentations."""
    pytest.importorskip("slicer", reason="the slicer-core test extra is not installed")
    from slicer_extension_helpers import SlicerScene

    holder = SlicerScene()
    yield holder.scene
    holder.scene.Clear(1)


def _server_fixture_module():
    """tests/server_fixture.py, loaded by path (pytest runs with --import-mode=importlib)."""
    import importlib.util

    name = "sonovlm_tests_server_fixture"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE.parent / "server_fixture.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def sonovlm_server(tmp_path_factory):
    """A real SonoVLM server (``monailabel start_server``, tiny backbone) on 6 sample studies,
    shared by the extension's client and workflow tests."""
    fixture = _server_fixture_module()
    studies = fixture.make_studies(tmp_path_factory.mktemp("slicer-ext") / "studies", count=6)
    server = fixture.start_server(
        studies,
        {"backbone": "tiny", "auto_scoring": "false"},
        work_dir=tmp_path_factory.mktemp("slicer-ext-server"),
    )
    yield server
    server.stop()
