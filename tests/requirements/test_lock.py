"""requirements/lock.txt stays portable: exact `name==version` pins from the package index only.

A lock once pinned seven packages to wheel files in a local folder; CI passed on the machine that
had the files and every fresh clone elsewhere failed. These tests make that impossible to land.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless
from sonovlm.io import load_image

from tests.dicom_factory import bmode_frame, us_dataset, write_dataset

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements" / "lock.txt"
ACCEPTED = ROOT / "requirements" / "accepted-conflicts.txt"

# A requirement name (PEP 508 normalisable), '==', a version made of release/pre/post/dev/local parts,
# and optionally pip hash options. Nothing else: no '@ url', no path, no '-e', no VCS.
PIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.+!_-]+(\s+--hash=sha256:[0-9a-f]{64})*$")


def lock_problems(text: str) -> list[str]:
    """Every line of a lock file that is not an exact index pin, as 'line N: why'."""
    problems = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("-e", "--editable")):
            problems.append(f"line {number}: editable install: {raw}")
        elif "file:" in line or re.search(r"(^|\s)(\.{0,2}/|~)", line):
            problems.append(f"line {number}: local path or file: URL: {raw}")
        elif re.search(r"\b(git|hg|svn|bzr)\+", line) or "://" in line:
            problems.append(f"line {number}: VCS or direct URL: {raw}")
        elif " @ " in line:
            problems.append(f"line {number}: direct reference: {raw}")
        elif not PIN.match(line):
            problems.append(f"line {number}: not an exact name==version pin: {raw}")
    return problems


def test_lock_is_exact_index_pins():
    problems = lock_problems(LOCK.read_text())
    assert problems == [], "requirements/lock.txt must hold name==version pins only:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    "line",
    [
        "highdicom @ file:///tmp/wh/highdicom-0.22.0-py3-none-any.whl#sha256=" + "0" * 64,
        "file:///tmp/wh/highdicom-0.22.0-py3-none-any.whl",
        "./wheels/highdicom-0.22.0-py3-none-any.whl",
        "/tmp/wh/highdicom-0.22.0-py3-none-any.whl",
        "-e .",
        "git+https://github.com/ImagingDataCommons/highdicom@v0.22.0#egg=highdicom",
        "highdicom @ https://example.org/highdicom-0.22.0-py3-none-any.whl",
        "highdicom>=0.22",
        "highdicom",
    ],
)
def test_lock_check_rejects_non_portable_line(line):
    assert lock_problems(f"numpy==1.26.4\n{line}\n") != []


def test_lock_check_accepts_pins_with_hashes_and_comments():
    text = ("# header\nnumpy==1.26.4\nslicer-core==5.13.31053.0  # Slicer's core\n"
            "foo==1.0 --hash=sha256:" + "a" * 64)
    assert lock_problems(text) == []


def test_lock_pins_what_pyproject_needs():
    """Every runtime dependency of pyproject.toml is pinned in the lock (installed --no-deps)."""
    import tomllib

    pinned = {re.split(r"==", ln)[0].lower().replace("_", "-") for ln in LOCK.read_text().splitlines()
              if ln and not ln.startswith("#")}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"]) + list(project["optional-dependencies"]["test"])
    missing = []
    for requirement in wanted:
        name = re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        if name != "torch" and name not in pinned:
            missing.append(name)
    assert missing == [], f"pyproject.toml dependencies missing from requirements/lock.txt: {missing}"


def _accepted_conflicts() -> set[str]:
    return {ln.strip() for ln in ACCEPTED.read_text().splitlines() if ln.strip() and not ln.startswith("#")}


def test_pip_check_complains_only_about_accepted_conflicts():
    result = subprocess.run([sys.executable, "-m", "pip", "check"],
                            capture_output=True, text=True, check=False)
    complaints = {ln.strip() for ln in result.stdout.splitlines() if ln.strip()}
    accepted = _accepted_conflicts()
    assert complaints - accepted == set(), (
        f"pip check reports conflicts not listed in {ACCEPTED.name}: {sorted(complaints - accepted)}")
    assert accepted - complaints == set(), (
        f"{ACCEPTED.name} lists conflicts pip check no longer reports (remove them): "
        f"{sorted(accepted - complaints)}")


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, JPEGLSLossless, RLELossless], ids=lambda s: s.name)
def test_codecs_decode_beside_numpy_1(tmp_path, syntax):
    """The pylibjpeg plugins declare numpy >= 2; under the lock's numpy 1.26 they decode exactly."""
    assert np.__version__.startswith("1."), "documents the numpy<2 conflict: update it with the lock"
    frame = bmode_frame(64, 80, seed=11)
    path = write_dataset(us_dataset(frame, transfer_syntax=syntax), tmp_path / "codec.dcm")
    np.testing.assert_array_equal(load_image(path).frames[0], frame)
