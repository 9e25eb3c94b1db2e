"""``sonovlm measure IMAGE MASK --json``: drawn shapes of known size through every mask format."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
from PIL import Image
from sonovlm.cli.main import main
from sonovlm.sample_data import simulate_case
from sonovlm.sample_data.dicom import DicomIdentity, write_ultrasound_dicom

ROW_MM, COL_MM = 0.08, 0.12  # an anisotropic calibrated region
JSON_KEYS = {
    "area_mm2",
    "long_axis_mm",
    "short_axis_mm",
    "axis_ratio",
    "orientation_deg",
    "taller_than_wide",
    "calibrated",
    "area_px",
    "long_axis_px",
    "short_axis_px",
    "axis_ratio_px",
    "orientation_deg_px",
    "taller_than_wide_px",
}


def ellipse(shape, spacing_mm, axes_mm, angle_deg, centre_px) -> np.ndarray:
    """uint8 mask of pixel centres inside an ellipse (full axes in mm, angle ccw on screen)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    x = (xx - centre_px[0]) * spacing_mm[1]
    y = (yy - centre_px[1]) * spacing_mm[0]
    t = math.radians(angle_deg)
    u = x * math.cos(t) - y * math.sin(t)
    v = x * math.sin(t) + y * math.cos(t)
    return ((u / (axes_mm[0] / 2)) ** 2 + (v / (axes_mm[1] / 2)) ** 2 <= 1).astype(np.uint8)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory) -> dict:
    """A 480 x 640 US DICOM whose region is 0.08 mm x 0.12 mm per pixel, and a 20 x 10 mm lesion."""
    folder = tmp_path_factory.mktemp("measure")
    image, _, meta = simulate_case(np.random.default_rng(5), "thyroid_nodule", "benign")
    meta = dataclasses.replace(meta, spacing_mm=(ROW_MM, COL_MM))
    dicom = folder / "image.dcm"
    write_ultrasound_dicom(dicom, image, meta, DicomIdentity.derive("TEST", ["measure-test"]))
    x0, y0, x1, y1 = meta.region_bbox
    mask = ellipse(image.shape, (ROW_MM, COL_MM), (20.0, 10.0), 30.0, ((x0 + x1) / 2, (y0 + y1) / 2)) * 3
    return {"folder": folder, "image": dicom, "mask": mask, "region": meta.region_bbox, "frame": image}


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _measure_json(capsys, image, mask, *extra) -> dict:
    code, out, err = _run(capsys, "measure", image, mask, "--json", *extra)
    assert code == 0, err
    return json.loads(out)


def _write_png(path: Path, mask: np.ndarray) -> Path:
    Image.fromarray(mask.astype(np.uint8)).save(path)
    return path


def _write_slicer_nrrd(path: Path, mask: np.ndarray, spacing_mm) -> Path:
    """As 3D Slicer saves a 2D labelmap: one slice, x (column) fastest, LPS space, gzip."""
    header = {
        "type": "unsigned char",
        "dimension": 3,
        "space": "left-posterior-superior",
        "sizes": [mask.shape[1], mask.shape[0], 1],
        "space directions": np.diag([spacing_mm[1], spacing_mm[0], 1.0]),
        "kinds": ["domain", "domain", "domain"],
        "encoding": "gzip",
        "space origin": np.zeros(3),
    }
    nrrd.write(str(path), np.ascontiguousarray(mask.astype(np.uint8).T[:, :, None]), header, index_order="F")
    return path


def test_png_mask_on_calibrated_dicom(calibrated, capsys):
    mask_path = _write_png(calibrated["folder"] / "mask.png", calibrated["mask"])
    result = _measure_json(capsys, calibrated["image"], mask_path)
    assert JSON_KEYS <= set(result)
    assert result["calibrated"] is True
    assert result["spacing_mm"] == pytest.approx([ROW_MM, COL_MM])
    assert result["spacing_source"] == "ultrasound_region"
    assert result["long_axis_mm"] == pytest.approx(20.0, rel=0.03)
    assert result["short_axis_mm"] == pytest.approx(10.0, rel=0.03)
    assert result["area_mm2"] == pytest.approx(math.pi * 50, rel=0.03)
    assert result["axis_ratio"] == pytest.approx(2.0, rel=0.05)
    assert result["orientation_deg"] == pytest.approx(30.0, abs=2.5)
    assert result["taller_than_wide"] is False
    assert result["area_px"] == int((calibrated["mask"] > 0).sum())
    assert len(result["long_axis_endpoints"]) == 2 and len(result["long_axis_endpoints"][0]) == 2


def test_slicer_nrrd_nifti_and_numpy_masks_measure_the_same(calibrated, capsys):
    folder, mask = calibrated["folder"], calibrated["mask"]
    reference = _measure_json(capsys, calibrated["image"], _write_png(folder / "same.png", mask))
    nrrd_path = _write_slicer_nrrd(folder / "mask.seg.nrrd", mask, (ROW_MM, COL_MM))
    nifti_path = folder / "mask.nii.gz"
    nib.save(
        nib.Nifti1Image(mask.T[:, :, None].astype(np.uint8), np.diag([COL_MM, ROW_MM, 1.0, 1.0])), nifti_path
    )
    numpy_path = folder / "mask.npy"
    np.save(numpy_path, mask.astype(bool))
    for path in (nrrd_path, nifti_path, numpy_path):
        assert _measure_json(capsys, calibrated["image"], path) == reference, path.name


def test_spacing_override_and_uncalibrated_png_image(calibrated, tmp_path, capsys):
    frame = calibrated["frame"]
    image_png = _write_png(tmp_path / "screen.png", frame)  # a screenshot: no calibration
    mask = ellipse(frame.shape, (0.1, 0.1), (20.0, 10.0), 120.0, (320, 240))
    mask_png = _write_png(tmp_path / "lesion.png", mask * 255)

    uncalibrated = _measure_json(capsys, image_png, mask_png)
    assert uncalibrated["calibrated"] is False
    for key in (
        "area_mm2",
        "long_axis_mm",
        "short_axis_mm",
        "axis_ratio",
        "orientation_deg",
        "taller_than_wide",
    ):
        assert uncalibrated[key] is None
    assert uncalibrated["long_axis_px"] == pytest.approx(200.0, rel=0.03)
    assert uncalibrated["short_axis_px"] == pytest.approx(100.0, rel=0.03)
    assert uncalibrated["spacing_source"] is None

    given = _measure_json(capsys, image_png, mask_png, "--spacing-mm", "0.1", "0.1")
    assert given["calibrated"] is True and given["spacing_source"] == "argument"
    assert given["long_axis_mm"] == pytest.approx(20.0, rel=0.03)
    assert given["short_axis_mm"] == pytest.approx(10.0, rel=0.03)
    assert given["orientation_deg"] == pytest.approx(120.0, abs=2.5)

    # The override wins over the DICOM's own calibration.
    overridden = _measure_json(capsys, calibrated["image"], mask_png, "--spacing-mm", "0.2", "0.2")
    assert overridden["long_axis_mm"] == pytest.approx(40.0, rel=0.03)

    code, out, _ = _run(capsys, "measure", image_png, mask_png)
    assert code == 0 and "not calibrated" in out


def test_human_readable_output(calibrated, capsys):
    mask_path = _write_png(calibrated["folder"] / "human.png", calibrated["mask"])
    code, out, _ = _run(capsys, "measure", calibrated["image"], mask_path)
    assert code == 0
    assert "long axis" in out and "mm" in out and "from the ultrasound region" in out


def test_lesion_outside_the_calibrated_region_is_measured_in_pixels(calibrated, tmp_path, capsys):
    mask = np.zeros(calibrated["frame"].shape, np.uint8)
    mask[2:20, 2:40] = 1  # in the burned-in text margin
    code, out, err = _run(
        capsys, "measure", calibrated["image"], _write_png(tmp_path / "m.png", mask), "--json"
    )
    assert code == 0
    assert json.loads(out)["calibrated"] is False
    assert "note:" in err and "calibrated ultrasound region" in err


def test_several_parts_are_noted(calibrated, tmp_path, capsys):
    mask = calibrated["mask"].copy()
    x0, y0, x1, y1 = calibrated["region"]
    mask[y1 - 10 : y1 - 5, x0 + 5 : x0 + 10] = 1
    code, out, err = _run(
        capsys, "measure", calibrated["image"], _write_png(tmp_path / "two.png", mask), "--json"
    )
    assert code == 0
    assert json.loads(out)["components"] == 2
    assert "2 separate parts" in err


@pytest.mark.parametrize("problem", ["size", "empty", "missing_image", "missing_mask", "bad_spacing"])
def test_bad_input_exits_2_with_one_error_line(calibrated, tmp_path, capsys, problem):
    image = calibrated["image"]
    mask_path = _write_png(tmp_path / "ok.png", calibrated["mask"])
    extra = []
    if problem == "size":
        mask_path = _write_png(tmp_path / "small.png", calibrated["mask"][:200, :300])
    elif problem == "empty":
        mask_path = _write_png(tmp_path / "empty.png", np.zeros_like(calibrated["mask"]))
    elif problem == "missing_image":
        image = tmp_path / "nowhere.dcm"
    elif problem == "missing_mask":
        mask_path = tmp_path / "nowhere.png"
    else:
        extra = ["--spacing-mm", "0", "0.1"]
    code, out, err = _run(capsys, "measure", image, mask_path, "--json", *extra)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    if problem == "size":
        assert "small.png" in lines[0] and "480" in lines[0]
    elif problem == "empty":
        assert "empty.png" in lines[0] and "empty" in lines[0]
    elif problem.startswith("missing"):
        assert "nowhere" in lines[0]


def test_console_script_prints_json(calibrated):
    mask_path = _write_png(calibrated["folder"] / "script.png", calibrated["mask"])
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sonovlm.cli.main",
            "measure",
            str(calibrated["image"]),
            str(mask_path),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["long_axis_mm"] == pytest.approx(20.0, rel=0.03)
