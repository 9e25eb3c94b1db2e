"""``sonovlm inspect PATH [--json]``: the JSON contract, the summary, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from sonovlm.cli.main import main

from tests.dicom_factory import RegionSpec, bmode_frame, cine_us_dicom, us_dataset, write_dataset

KEYS = {"frames", "height", "width", "channels", "modality", "photometric", "regions", "spacing_mm"}


def _inspect_json(capsys, path) -> dict:
    assert main(["inspect", str(path), "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # one JSON object on one line
    return json.loads(out)


def test_json_of_real_palette_sample(capsys, test_data):
    info = _inspect_json(capsys, test_data / "examples_palette.dcm")
    assert set(info) == KEYS
    assert info == {
        "frames": 1,
        "height": 350,
        "width": 800,
        "channels": 3,
        "modality": "US",
        "photometric": "PALETTE COLOR",
        "regions": [{"bbox": [120, 60, 800, 350], "spacing_mm": None, "clipped": True}],
        "spacing_mm": None,
    }


def test_json_of_calibrated_cine(capsys, tmp_path):
    ds = us_dataset(
        np.stack([bmode_frame(40, 50, seed=s) for s in range(3)]),
        regions=[RegionSpec((0, 0, 49, 39), spacing_mm=(0.3, 0.15)), RegionSpec((0, 30, 70, 45))],
        frame_time_ms=20.0,
    )
    info = _inspect_json(capsys, write_dataset(ds, tmp_path / "cine.dcm"))
    assert (info["frames"], info["height"], info["width"], info["channels"]) == (3, 40, 50, 1)
    assert info["photometric"] == "MONOCHROME2"
    assert info["spacing_mm"] == pytest.approx([0.3, 0.15])
    assert info["regions"][0] == {"bbox": [0, 0, 50, 40], "spacing_mm": pytest.approx([0.3, 0.15]),
                                  "clipped": False}
    assert info["regions"][1] == {"bbox": [0, 30, 50, 40], "spacing_mm": None, "clipped": True}


def test_json_of_png_has_nulls(capsys, tmp_path):
    from PIL import Image

    Image.fromarray(bmode_frame(20, 30)).save(tmp_path / "x.png")
    info = _inspect_json(capsys, tmp_path / "x.png")
    assert info == {"frames": 1, "height": 20, "width": 30, "channels": 1, "modality": None,
                    "photometric": None, "regions": [], "spacing_mm": None}


def test_human_summary(capsys, tmp_path):
    path = cine_us_dicom(tmp_path / "cine.dcm", n_frames=2, frame_time_ms=40.0)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "2 frame(s) of 80 x 64 pixels" in out
    assert "frame time 40 ms" in out
    assert "0.2 x 0.2 mm" in out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)


@pytest.mark.parametrize("case", ["missing", "non-image", "truncated"])
def test_bad_input_exit_2_one_error_line(capsys, tmp_path, case):
    path = tmp_path / "input.dcm"
    if case == "non-image":
        path.write_text("not an image\n" * 40)
    elif case == "truncated":
        full = write_dataset(us_dataset(bmode_frame(30, 30)), tmp_path / "full.dcm").read_bytes()
        path.write_bytes(full[:-200])
    assert main(["inspect", str(path), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: ")


def test_console_script_prints_no_traceback_or_warnings(tmp_path):
    """A truncated compressed DICOM makes pydicom warn; the user sees one line, exit code 2."""
    from pydicom.uid import RLELossless

    full = write_dataset(us_dataset(bmode_frame(30, 30), transfer_syntax=RLELossless), tmp_path / "f.dcm")
    (tmp_path / "cut.dcm").write_bytes(full.read_bytes()[:-300])
    result = subprocess.run(
        [sys.executable, "-m", "sonovlm.cli.main", "inspect", str(tmp_path / "cut.dcm"), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: {tmp_path / 'cut.dcm'}: DICOM file is truncated: it ends inside the pixel data"
    ]
