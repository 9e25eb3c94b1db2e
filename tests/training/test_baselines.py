"""Baselines run by the same pipeline: ``--model unet``, ``resnet18``, ``linear-probe``."""

from __future__ import annotations

import json

import torch
from safetensors import safe_open

from training.cli import main

COMMON = ["--backbone", "tiny", "--epochs", "1", "--batch-size", "4", "--bootstrap", "20"]


def stage(task, layout, out, *extra):
    return main(
        [task, "--data-root", str(layout), "--dataset", "BUSI,TN3K", *COMMON, "--out", str(out), *extra]
    )


def test_unet_segmentation_through_the_pipeline(tiny_layout, tmp_path, capsys):
    out = tmp_path / "unet"
    assert stage("segmentation", tiny_layout, out, "--model", "unet", "--paper") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    run_info = json.loads((out / "run.json").read_text())
    assert (
        metrics["model"] == "unet"
        and metrics["n_cases"] == 4
        and set(metrics["per_dataset"]) == {"BUSI", "TN3K"}
    )
    assert 0 <= metrics["dice"] <= 1 and metrics["untrained_backbone"] is False
    # the same splits as SonoVLM; --paper's SonoVLM options (decoder, clicks) do not apply
    assert run_info["counts"] == {"train": 12, "val": 4, "test": 4}
    assert run_info["settings"]["interactive_fraction"] == 0.0 and run_info["settings"]["decoder"] is None
    assert run_info["settings"]["loss"] == "reference" and run_info["settings"]["betas"] == [0.9, 0.95]
    assert run_info["model_config"]["image_size"] == 64  # the tiny backbone's model-space size
    assert run_info["trainable_in_stage"] == run_info["parameters"]["total"]  # from scratch: all of it
    assert (out / "results.md").read_text().startswith("# segmentation: UNet (MONAI, from scratch)")
    assert (out / "figures" / "overlays.png").is_file()
    with safe_open(str(out / "best.safetensors"), "pt") as handle:
        assert handle.metadata()["format"] == "sonovlm-training-baseline"
    assert main(["export", str(out), str(tmp_path / "x.safetensors")]) == 2
    assert "baseline run" in capsys.readouterr().err


def test_linear_probe_trains_only_its_head(tiny_layout, tmp_path):
    from sonovlm.model import load_backbone

    out = tmp_path / "probe"
    assert stage("classification", tiny_layout, out, "--model", "linear-probe", "--no-figures") == 0
    run_info = json.loads((out / "run.json").read_text())
    embed = load_backbone("tiny").embed_dim
    assert run_info["trainable_in_stage"] == embed * 2 + 2  # one linear layer on the embedding
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "linear-probe" and "auc" in metrics and metrics["temperature"] > 0
    with safe_open(str(out / "best.safetensors"), "pt") as handle:
        keys = set(handle.keys())
    assert keys == {
        "seg_head.weight",
        "seg_head.bias",
        "cls_head.linear.weight",
        "cls_head.linear.bias",
        "cls_head.temperature",
    }


def test_linear_probe_segmentation_and_resnet_classification(tiny_layout, tmp_path):
    assert stage("segmentation", tiny_layout, tmp_path / "p", "--model", "linear-probe", "--no-figures") == 0
    run_info = json.loads((tmp_path / "p" / "run.json").read_text())
    assert run_info["trainable_in_stage"] == 32 * 2 + 2  # 1x1 conv over the 32-wide patch tokens
    assert stage("classification", tiny_layout, tmp_path / "r", "--model", "resnet18", "--no-figures") == 0
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["model"] == "resnet18" and len(metrics["per_case"]) == 4


def test_baseline_option_errors(tiny_layout, tmp_path, capsys):
    assert stage("classification", tiny_layout, tmp_path / "a", "--model", "unet") == 2
    assert "unet has no classification head" in capsys.readouterr().err
    assert stage("segmentation", tiny_layout, tmp_path / "b", "--model", "unet", "--adapter", "mona") == 2
    assert "--adapter: is a SonoVLM option" in capsys.readouterr().err
    assert (
        stage(
            "segmentation",
            tiny_layout,
            tmp_path / "c",
            "--model",
            "linear-probe",
            "--interactive-fraction",
            "0.5",
        )
        == 2
    )
    assert "--interactive-fraction" in capsys.readouterr().err


def test_init_seed_follows_the_seed_and_seed_zero_is_unchanged():
    from sonovlm.model import ModelConfig, SonoVLM

    from training.runner import initialisation_seed

    def built(seed=None):
        if seed is None:
            return SonoVLM(ModelConfig(backbone="tiny")).state_hash()
        with initialisation_seed(seed):
            return SonoVLM(ModelConfig(backbone="tiny")).state_hash()

    before = torch.get_rng_state()
    assert built(0) == built()  # seed 0: the model every earlier run built
    assert built(1) != built(0)
    assert torch.equal(torch.get_rng_state(), before)  # the global stream is left as it was
