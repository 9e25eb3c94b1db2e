"""``sonovlm segment``: a mask of the frame's size with the organ's value, on a real DICOM, offline."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sonovlm.cli.main import main
from sonovlm.io import load_image, load_mask
from sonovlm.model import AdapterConfig, ModelConfig, SonoVLM, save_checkpoint

SUMMARY_KEYS = {
    "image", "out", "organ", "prompt", "frame", "label", "rows", "cols", "lesion_pixels", "confidence",
    "model_version", "backbone", "adapter", "untrained", "precision",
}


def _segment(capsys, *argv) -> tuple[int, dict | None, str]:
    code = main(["segment", *map(str, argv)])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else None), captured.err


@pytest.mark.parametrize("suffix", [".png", ".nrrd", ".nii.gz"])
def test_segment_real_dicom_with_tiny(capsys, test_data, tmp_path, suffix):
    image_path = test_data / "examples_palette.dcm"
    out = tmp_path / f"mask{suffix}"
    code, summary, _ = _segment(
        capsys, image_path, "--organ", "thyroid_nodule", "--out", out, "--backbone", "tiny"
    )
    assert code == 0 and set(summary) == SUMMARY_KEYS
    assert summary["untrained"] is True and summary["backbone"] == "tiny" and summary["label"] == 3
    image = load_image(image_path)
    mask = load_mask(out, shape=(image.height, image.width))
    assert mask.shape == (350, 800) == (summary["rows"], summary["cols"])
    assert set(np.unique(mask)) <= {0, 3}
    assert int((mask != 0).sum()) == summary["lesion_pixels"]
    x0, y0, x1, y1 = image.imaging_bbox()
    outside = np.ones(mask.shape, bool)
    outside[y0:y1, x0:x1] = False
    assert not mask[outside].any()


def test_segment_with_prompt_and_weights(capsys, test_data, tmp_path):
    model = SonoVLM(ModelConfig(backbone="tiny", adapter=AdapterConfig(kind="mona")))
    weights = tmp_path / "model.safetensors"
    version = save_checkpoint(model, weights)
    prompt = "an oval lymph node with a fatty hilum"
    code, summary, _ = _segment(
        capsys, test_data / "examples_rgb_color.dcm", "--organ", "lymph_node", "--prompt", prompt,
        "--frame", "0", "--out", tmp_path / "m.png", "--weights", weights,
    )
    assert code == 0
    assert summary["model_version"] == version and summary["adapter"] == "mona"
    assert summary["backbone"] == "tiny"  # the checkpoint's backbone is the default
    assert summary["prompt"] == "an oval lymph node with a fatty hilum" and summary["frame"] == 0


@pytest.mark.parametrize(
    ("extra", "out_name", "message"),
    [
        (["--organ", "liver"], "mask.png", "unknown organ"),
        (["--organ", "lymph_node", "--frame", "4"], "mask.png", "out of range"),
        (["--organ", "lymph_node"], "mask.jpg", "unsupported mask format"),
        (["--organ", "lymph_node", "--weights", "missing.safetensors"], "mask.png", "no such checkpoint"),
    ],
)
def test_bad_input_exits_2_with_one_error_line(
    capsys, test_data, tmp_path, monkeypatch, extra, out_name, message
):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / out_name
    code, _, err = _segment(
        capsys, test_data / "ExplVR_BigEnd.dcm", *extra, "--out", out, "--backbone", "tiny"
    )
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not out.exists()


def test_missing_image_exits_2(capsys, tmp_path):
    code, _, err = _segment(
        capsys, tmp_path / "none.dcm", "--organ", "lymph_node", "--out", tmp_path / "m.png",
        "--backbone", "tiny",
    )
    assert code == 2 and err.startswith("error: ")


def test_default_backbone_offline_fails_clearly(capsys, test_data, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    code, _, err = _segment(
        capsys, test_data / "ExplVR_BigEnd.dcm", "--organ", "lymph_node", "--out", tmp_path / "m.png"
    )
    assert code == 2 and "openai/clip-vit-base-patch16" in err and "HF_HUB_OFFLINE" in err


def test_precision_is_chosen_like_the_servers_and_reported(capsys, test_data, tmp_path):
    from sonovlm.model.precision import resolve_precision

    image_path = test_data / "examples_palette.dcm"
    args = ["--organ", "thyroid_nodule", "--backbone", "tiny"]
    code, auto, _ = _segment(capsys, image_path, *args, "--out", tmp_path / "auto.png")
    assert code == 0
    assert auto["precision"]["requested"] == "auto"
    assert auto["precision"]["resolved"] == resolve_precision("auto", "cpu").resolved
    code, fp32, _ = _segment(capsys, image_path, *args, "--out", tmp_path / "fp32.png", "--precision", "fp32")
    assert code == 0 and fp32["precision"]["resolved"] == "fp32" and fp32["precision"]["backbone_layers"] == 0


def test_a_precision_the_device_cannot_run_names_the_option(capsys, test_data, tmp_path):
    code, _, err = _segment(
        capsys, test_data / "examples_palette.dcm", "--organ", "thyroid_nodule", "--backbone", "tiny",
        "--out", tmp_path / "m.png", "--precision", "int8", "--device", "cuda",
    )
    assert code != 0 and "--precision" in err and "int8" in err
