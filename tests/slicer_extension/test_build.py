"""The extension's CMake build configures (with a stand-in for Slicer's SDK, which is not
installed here) and hands Slicer's macros the module's files and real metadata.

The stand-in SlicerConfig.cmake defines what the extension uses from Slicer's SDK (Slicer_USE_FILE,
slicerMacroBuildScriptedModule, slicer_add_python_unittest, Slicer_EXTENSION_GENERATE_CONFIG,
Slicer_EXTENSION_CPACK) and checks each script and resource the module lists exists; it builds
nothing. A real package needs Slicer's build tree (see slicer_extension/README.md).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

EXTENSION = Path(__file__).resolve().parents[2] / "slicer_extension"

STAND_IN = r"""
set(Slicer_FOUND TRUE)
set(Slicer_USE_FILE "${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake")
set(Slicer_EXTENSION_GENERATE_CONFIG "${CMAKE_CURRENT_LIST_DIR}/GenerateConfig.cmake")
set(Slicer_EXTENSION_CPACK "${CMAKE_CURRENT_LIST_DIR}/CPack.cmake")
function(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(M "WITH_GENERIC_TESTS" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  foreach(f ${M_SCRIPTS} ${M_RESOURCES})
    if(NOT EXISTS "${CMAKE_CURRENT_SOURCE_DIR}/${f}")
      message(FATAL_ERROR "missing module file: ${f}")
    endif()
    message(STATUS "MODULE_FILE ${f}")
  endforeach()
  message(STATUS "MODULE_NAME ${M_NAME}")
endfunction()
function(slicer_add_python_unittest)
  message(STATUS "PYTHON_UNITTEST ${ARGN}")
endfunction()
"""
REPORT = r"""
foreach(key HOMEPAGE CATEGORY ICONURL SCREENSHOTURLS STATUS DEPENDS)
  message(STATUS "EXTENSION_${key}=${EXTENSION_${key}}")
endforeach()
"""


@pytest.fixture
def slicer_sdk(tmp_path):
    sdk = tmp_path / "Slicer-build"
    sdk.mkdir()
    (sdk / "SlicerConfig.cmake").write_text(STAND_IN)
    (sdk / "UseSlicer.cmake").write_text("")
    (sdk / "GenerateConfig.cmake").write_text(REPORT)
    (sdk / "CPack.cmake").write_text("")
    return sdk


def configure(sdk: Path, build: Path, *options: str) -> str:
    run = subprocess.run(
        [
            "cmake",
            "-S",
            str(EXTENSION),
            "-B",
            str(build),
            f"-DSlicer_DIR={sdk}",
            "-DBUILD_TESTING=ON",
            *options,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_the_build_configures_with_every_module_file_and_real_urls(slicer_sdk, tmp_path):
    out = configure(slicer_sdk, tmp_path / "build")
    listed = set(re.findall(r"MODULE_FILE (\S+)", out))
    on_disk = {f"SonoVLMLib/{p.name}" for p in (EXTENSION / "SonoVLM" / "SonoVLMLib").glob("*.py")}
    assert on_disk | {"SonoVLM.py"} <= listed
    assert "MODULE_NAME SonoVLM" in out and "PYTHON_UNITTEST SCRIPT;SonoVLM.py" in out
    meta = dict(re.findall(r"EXTENSION_(\w+)=(.*)", out))
    assert meta["CATEGORY"] == "Ultrasound"
    assert meta["ICONURL"].endswith("/main/SonoVLM/Resources/Icons/SonoVLM.png")
    assert (EXTENSION / "SonoVLM" / "Resources" / "Icons" / "SonoVLM.png").is_file()

    real = "https://github.com/example-hospital/SlicerSonoVLM"
    out = configure(slicer_sdk, tmp_path / "published", f"-DSONOVLM_REPOSITORY_URL={real}")
    meta = dict(re.findall(r"EXTENSION_(\w+)=(.*)", out))
    assert meta["HOMEPAGE"] == f"{real}#readme"
    assert meta["ICONURL"] == (
        "https://raw.githubusercontent.com/example-hospital/SlicerSonoVLM/main/SonoVLM/Resources/Icons/SonoVLM.png"
    )
