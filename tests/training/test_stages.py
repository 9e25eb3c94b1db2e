"""Every stage for one epoch with the tiny backbone, then export, resume and compare."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training.cli import main
from training.engine import Trainer

COMMON = ["--backbone", "tiny", "--epochs", "1", "--batch-size", "4", "--bootstrap", "50"]


def run(*argv: str) -> int:
    return main([*argv])


@pytest.fixture(scope="module")
def seg_run(tiny_layout, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "seg"
    code = run(
        "segmentation",
        "--data-root",
        str(tiny_layout),
        "--dataset",
        "BUSI,TN3K",
        "--adapter",
        "lora",
        "--out",
        str(out),
        *COMMON,
    )
    assert code == 0
    return out


@pytest.fixture(scope="module")
def contrastive_run(pairs_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "contrastive"
    code = run(
        "contrastive",
        "--pairs",
        str(pairs_file),
        "--captions",
        "refined",
        "--adapter",
        "hybrid",
        "--out",
        str(out),
        *COMMON,
    )
    assert code == 0
    return out


def test_segmentation_outputs(seg_run):
    metrics = json.loads((seg_run / "metrics.json").read_text())
    for key in ("dice", "iou", "hd95", "asd"):
        assert isinstance(metrics[key], float)
        low, high = metrics[f"{key}_ci95"]
        assert low <= metrics[key] <= high
    assert metrics["n_cases"] == 4 and len(metrics["per_case"]) == 4  # 2 BUSI + 2 TN3K test images
    assert set(metrics["per_dataset"]) == {"BUSI", "TN3K"}
    assert metrics["dice"] == pytest.approx(np.mean([c["dice"] for c in metrics["per_case"]]))
    assert metrics["n_empty_predictions"] == sum(c["empty_prediction"] for c in metrics["per_case"])
    assert metrics["distance_unit"] == "px" and "diagonal" in metrics["empty_prediction_rule"]
    assert metrics["untrained_backbone"] is True and metrics["adapter"] == "lora"
    history = json.loads((seg_run / "history.json").read_text())
    assert len(history) == 1 and history[0]["images_per_s"] > 0 and "val_dice" in history[0]
    for name in (
        "best.safetensors",
        "last_state.pt",
        "run.json",
        "results.md",
        "train.log",
        "figures/training_curves.png",
        "figures/overlays.png",
    ):
        assert (seg_run / name).is_file(), name
    assert list((seg_run / "tensorboard").glob("events.out.tfevents.*"))
    table = (seg_run / "results.md").read_text()
    assert "| BUSI | 2 |" in table and "Untrained backbone" in table


def test_classification_calibrates_and_draws_roc(tiny_layout, tmp_path):
    from sonovlm.model import load_checkpoint

    out = tmp_path / "cls"
    assert (
        run(
            "classification",
            "--data-root",
            str(tiny_layout),
            "--dataset",
            "BUSI",
            "--adapter",
            "mona",
            "--out",
            str(out),
            *COMMON,
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "precision", "recall", "f1", "auc"):
        assert key in metrics and f"{key}_ci95" in metrics
    assert len(metrics["per_case"]) == 2 and {c["label"] for c in metrics["per_case"]} == {0, 1}
    assert (out / "figures" / "roc_curve.png").is_file()
    model = load_checkpoint(out / "best.safetensors")
    assert float(model.cls_head.temperature) == pytest.approx(metrics["temperature"])


def test_contrastive_then_classification_from_it(contrastive_run, tiny_layout, tmp_path):
    from safetensors.torch import load_file

    metrics = json.loads((contrastive_run / "metrics.json").read_text())
    assert metrics["n_pairs"] == 2 and 0 <= metrics["image_to_text_r1"] <= 1
    run_info = json.loads((contrastive_run / "run.json").read_text())
    assert run_info["settings"]["captions"] == "refined" and run_info["counts"]["train"] == 8
    out = tmp_path / "cls_from_contrastive"
    assert (
        run(
            "classification",
            "--data-root",
            str(tiny_layout),
            "--dataset",
            "TN3K",
            "--init-from",
            str(contrastive_run),
            "--freeze-adapter",
            "--out",
            str(out),
            *COMMON,
        )
        == 0
    )
    before = load_file(contrastive_run / "best.safetensors")
    after = load_file(out / "best.safetensors")
    adapter_keys = [k for k in before if k.startswith("adapter.")]
    assert adapter_keys and all(torch.equal(before[k], after[k]) for k in adapter_keys)
    assert json.loads((out / "metrics.json").read_text())["adapter"] == "hybrid"


def test_zero_shot_trains_nothing(tiny_layout, tmp_path):
    from sonovlm.model import load_checkpoint

    out = tmp_path / "zs"
    assert (
        run(
            "zero-shot", "--data-root", str(tiny_layout), "--dataset", "BUSI,TN3K", "--out", str(out), *COMMON
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stage"] == "zero-shot" and metrics["adapter"] == "none" and len(metrics["per_case"]) == 4
    assert not (out / "history.json").exists()
    assert load_checkpoint(out / "best.safetensors").cls_head.is_zero_shot


def test_export_loads_in_sonovlm_and_the_app(seg_run, tmp_path, tiny_layout):
    from sonovlm.app.config import AppConfig
    from sonovlm.app.model_access import load_predictor
    from sonovlm.io import load_image
    from sonovlm.model import load_checkpoint

    target = tmp_path / "served" / "model.safetensors"
    assert run("export", str(seg_run), str(target)) == 0
    card = target.with_suffix(".md").read_text()
    assert "--conf weights model.safetensors" in card and "Intended use" in card and "DICE" in card
    assert target.read_bytes() == (seg_run / "best.safetensors").read_bytes()
    model = load_checkpoint(target)
    assert model.config.adapter.kind == "lora"
    config = AppConfig.from_conf({"backbone": "tiny", "weights": str(target)}, tmp_path)
    predictor = load_predictor(config.weights, config, "cpu")
    image = load_image(tiny_layout / "all" / "images" / "busi_008.png")
    result = predictor.segment(image, "breast_lesion")
    assert result.mask.shape == (80, 100)
    assert predictor.model_version == json.loads((seg_run / "metrics.json").read_text())["model_version"]


def test_resume_continues_and_a_used_folder_is_refused(tiny_layout, tmp_path, capsys):
    out = tmp_path / "resumable"
    args = [
        "segmentation",
        "--data-root",
        str(tiny_layout),
        "--dataset",
        "BUSI",
        "--adapter",
        "mona",
        "--out",
        str(out),
        "--backbone",
        "tiny",
        "--batch-size",
        "4",
        "--bootstrap",
        "20",
    ]
    assert run(*args, "--epochs", "1") == 0
    assert run(*args, "--epochs", "1") == 2
    assert "--resume" in capsys.readouterr().err
    assert run(*args, "--epochs", "2", "--resume") == 0
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[1]["lr"] > 0  # the schedule follows the new --epochs


def test_compare_table(seg_run, tmp_path):
    table_file = tmp_path / "table.md"
    assert run("compare", str(seg_run), "--out", str(table_file)) == 0
    text = table_file.read_text()
    assert "| tiny + lora (pooled) |" in text and "BUSI" in text and "TN3K" in text
    rows = table_file.with_suffix(".csv").read_text().splitlines()
    assert rows[0].startswith("task,metric,row,dataset,value") and len(rows) == 3
    assert run("compare", str(seg_run), str(seg_run)) == 2  # one cell, two runs


def test_bad_input_exits_2(tiny_layout, tmp_path, capsys):
    assert (
        run(
            "segmentation",
            "--data-root",
            str(tiny_layout),
            "--dataset",
            "DDTI",
            "--out",
            str(tmp_path / "x"),
            *COMMON,
        )
        == 2
    )
    assert "no train list" in capsys.readouterr().err
    assert (
        run(
            "segmentation",
            "--data-root",
            str(tiny_layout),
            "--dataset",
            "BUSI",
            "--out",
            str(tmp_path / "y"),
            "--backbone",
            str(tmp_path / "no-such-backbone"),
            "--epochs",
            "1",
        )
        == 2
    )
    assert capsys.readouterr().err.startswith("error:")


def test_resume_draws_what_the_uninterrupted_run_draws(tiny_layout, tmp_path, monkeypatch):
    """Resumed after epoch 1, epoch 2 equals a straight 2-epoch run: same simulated clicks, same loss.

    Batch size 1 gives 8 interactive-or-not draws per epoch, so a click generator restarted from
    its seed (what resuming did before it saved the generator) changes epoch 2's loss.
    """
    common = [
        "segmentation",
        "--data-root",
        str(tiny_layout),
        "--dataset",
        "BUSI",
        "--adapter",
        "mona",
        "--backbone",
        "tiny",
        "--batch-size",
        "1",
        "--bootstrap",
        "20",
        "--interactive-fraction",
        "0.5",
    ]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run(*common, "--out", str(straight), "--epochs", "2") == 0

    class Interrupted(Exception):
        pass

    save_epoch = Trainer._save_epoch

    def save_then_stop(self, epoch, improved):  # the run is killed once epoch 1 is on disk
        save_epoch(self, epoch, improved)
        raise Interrupted

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_save_epoch", save_then_stop)
        with pytest.raises(Interrupted):
            run(*common, "--out", str(resumed), "--epochs", "2")
    state = torch.load(resumed / "last_state.pt", map_location="cpu", weights_only=False)
    assert "click_rng" in state["stage_state"]
    assert run(*common, "--out", str(resumed), "--epochs", "2", "--resume") == 0
    a, b = (json.loads((out / "history.json").read_text()) for out in (straight, resumed))
    assert a[0]["train_loss"] == b[0]["train_loss"]
    assert a[1]["train_loss"] == pytest.approx(b[1]["train_loss"], rel=1e-6)


def test_training_validation_and_evaluation_show_progress(tiny_layout, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SONOVLM_PROGRESS", "1")
    argv = ["segmentation", "--data-root", str(tiny_layout), "--dataset", "BUSI", "--backbone", "tiny"]
    out = str(tmp_path / "r")
    assert run(*argv, "--adapter", "none", "--epochs", "1", "--bootstrap", "10", "--out", out) == 0
    err = capsys.readouterr().err
    assert all(label in err for label in ("epoch 1", "validation", "evaluation")), err[-2000:]
