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
