"""``sonovlm classify``: MONAI Label's classification JSON on a real DICOM, offline with ``tiny``."""

from __future__ import annotations

import json

import pytest
from sonovlm.cli.main import main
from sonovlm.model.prompts import load_prompt_bank


def _classify(capsys, *argv) -> tuple[int, str, str]:
    code = main(["classify", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("organ", ["lymph_node", "breast_lesion", "thyroid_nodule"])
def test_json_prediction_for_each_organ(capsys, test_data, organ):
    code, out, _ = _classify(
        capsys, test_data / "examples_rgb_color.dcm", "--organ", organ, "--backbone", "tiny", "--json"
    )
    assert code == 0 and out.count("\n") == 1
    info = json.loads(out)
    assert [item["label"] for item in info["prediction"]] == ["benign", "malignant"]
    scores = [item["score"] for item in info["prediction"]]
    assert all(0.0 <= s <= 1.0 for s in scores) and sum(scores) == pytest.approx(1.0, abs=1e-12)
    assert info["organ"] == organ and info["frame"] == 0
    assert info["prompts"] == load_prompt_bank().class_prompts(organ)
    assert info["untrained"] is True and info["zero_shot_only"] is True
    assert info["backbone"] == "tiny" and info["model_version"].startswith("init-")


def test_text_output_warns_about_an_untrained_backbone(capsys, test_data):
    code, out, _ = _classify(
        capsys, test_data / "ExplVR_BigEnd.dcm", "--organ", "thyroid_nodule", "--backbone", "tiny"
    )
    assert code == 0 and "benign" in out and "malignant" in out and "UNTRAINED" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--organ", "liver"], "unknown organ"), (["--organ", "lymph_node", "--frame", "1"], "out of range")],
)
def test_bad_input_exits_2(capsys, test_data, extra, message):
    code, out, err = _classify(
        capsys, test_data / "ExplVR_BigEnd.dcm", *extra, "--backbone", "tiny", "--json"
    )
    assert code == 2 and out == "" and err.startswith("error: ") and message in err


def test_not_an_image_exits_2(capsys, tmp_path):
    bogus = tmp_path / "bogus.dcm"
    bogus.write_bytes(b"not an image at all")
    code, _, err = _classify(capsys, bogus, "--organ", "lymph_node", "--backbone", "tiny", "--json")
    assert code == 2 and str(bogus) in err
