"""``SonoVLM.py`` as 3D Slicer loads it: with Slicer's base classes' behaviour.

Slicer's Base/Python/slicer/ScriptedLoadableModule.py (5.8 to 5.13) defines
``ScriptedLoadableModuleLogic.__init__(self, parent=None)`` calling ``super().__init__()`` with
no arguments, and the application constructs module logics without arguments. slicer-core has no
``ScriptedLoadableModule`` (it needs Qt), so the stand-ins below behave like Slicer's (written
from reading that file, not copied), and the module is loaded from its file.
"""

from __future__ import annotations

import importlib.util
import sys
import types
import unittest
from pathlib import Path

import pytest

pytest.importorskip("slicer", reason="the slicer-core test extra is not installed")

import slicer  # noqa: E402
import slicer.util  # noqa: E402

MODULE_FILE = Path(__file__).resolve().parents[2] / "slicer_extension" / "SonoVLM" / "SonoVLM.py"


def slicer_base_classes() -> types.ModuleType:
    """Stand-ins with the constructor chain of Slicer's ScriptedLoadableModule.py."""
    module = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            super().__init__()
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            super().__init__()
            self.parent = parent

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            super().__init__()  # exactly as Slicer: no arguments reach the next class in the MRO
            self.moduleName = type(self).__name__.removesuffix("Logic")
            self.isSingletonParameterNode = True

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.messages = []

        def delayDisplay(self, message, requestedDelay=None, msec=None):
            self.messages.append(message)

    for cls in (
        ScriptedLoadableModule,
        ScriptedLoadableModuleWidget,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
    ):
        setattr(module, cls.__name__, cls)
    return module


@pytest.fixture
def sonovlm_module(monkeypatch, slicer_scene, tmp_path):
    """SonoVLM.py loaded with Slicer's base-class behaviour, ``slicer.mrmlScene`` = a real scene."""
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", slicer_base_classes())
    monkeypatch.setitem(sys.modules, "qt", types.ModuleType("qt"))  # used by the widget only
    monkeypatch.setattr(slicer, "mrmlScene", slicer_scene, raising=False)
    temp = tmp_path / "slicer-temp"
    monkeypatch.setattr(slicer.util, "tempDirectory", lambda key="__SlicerTemp__", **kw: str(temp / key))
    spec = importlib.util.spec_from_file_location("SonoVLM_under_test", MODULE_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_logic_is_constructed_as_slicer_constructs_it(sonovlm_module, slicer_scene):
    """Item 1: ``SonoVLMLogic()`` raised TypeError (AnnotationSession.__init__ missing client and
    scene_logic) because it was a second base class."""
    logic = sonovlm_module.SonoVLMLogic()
    assert logic.moduleName == "SonoVLM" and logic.session is None
    assert logic.scene_logic.scene is slicer_scene
    session = logic.open_session("http://127.0.0.1:9", client_id="pytest")
    assert session.client.server_url == "http://127.0.0.1:9" and session.scene_logic is logic.scene_logic
    logic.close_scene()  # clears the session's state


@pytest.mark.slow
def test_the_modules_self_test_runs_connect_segment_edit_submit(sonovlm_module, sonovlm_server, monkeypatch):
    """Reload and Test: SonoVLMTest against a real server (submitting a label)."""
    monkeypatch.setenv("SONOVLM_SERVER_URL", sonovlm_server.url)
    monkeypatch.setenv("SONOVLM_SELFTEST_SUBMIT", "1")
    test = sonovlm_module.SonoVLMTest()
    test.runTest()
    assert test.messages[-1] == "SonoVLM workflow test passed"
    assert "Submit" in test.messages and not any("SKIPPED" in m for m in test.messages)
