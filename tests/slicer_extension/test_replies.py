"""Server replies as the panel shows them, and the request params the client builds.

The reply shapes are those of the SonoVLM server (trimmed copies of real replies); the client
tests check the same functions on live replies."""

from __future__ import annotations

import time

import pytest
from SonoVLMLib.client import classification_params, label_params, segmentation_params
from SonoVLMLib.replies import classification_summary, organ_label_text, server_summary, training_progress

INFO = {
    "name": "SonoVLM",
    "models": {
        "segmentation": {
            "type": "segmentation",
            "labels": {"lymph_node": 1, "breast_lesion": 2, "thyroid_nodule": 3},
            "config": {"organ": ["auto", "lymph_node", "breast_lesion", "thyroid_nodule"], "prompt": ""},
            "backbone": "tiny (untrained)",
            "model_version": "init-cd59fd566ed8",
        },
        "classification": {"type": "classification", "labels": ["benign", "malignant"]},
    },
    "trainers": {"segmentation": {}, "classification": {}},
    "strategies": {"random": {}, "first": {}, "uncertainty": {}, "diversity": {}},
    "train_stats": {"segmentation": {}, "classification": {}},
}


def test_server_summary_lists_models_organs_and_strategies_in_panel_order():
    summary = server_summary(INFO)
    assert summary.models == ["segmentation", "classification"]
    assert summary.organs == ["auto", "lymph_node", "breast_lesion", "thyroid_nodule"]
    assert summary.strategies == ["diversity", "uncertainty", "random", "first"]
    assert summary.trainers == ["segmentation", "classification"]
    assert summary.model_version == "init-cd59fd566ed8"
    assert "tiny (untrained)" in summary.text() and "init-cd59fd566ed8" in summary.text()


def test_server_summary_of_a_stock_server_falls_back_to_labels():
    info = {
        "models": {"segmentation": {"labels": {"thyroid_nodule": 3, "lymph_node": 1}}},
        "strategies": {"x": {}},
    }
    summary = server_summary(info)
    assert summary.organs == ["lymph_node", "thyroid_nodule"]
    assert summary.strategies == ["x"] and summary.model_version is None
    assert "none loaded" in summary.text()


def test_organ_texts():
    assert organ_label_text("auto").startswith("Auto")
    assert organ_label_text("breast_lesion") == "Breast lesion"
    assert organ_label_text("liver_lesion") == "Liver lesion"


def test_classification_summary_sorts_and_keeps_the_prompts():
    reply = {
        "prediction": [{"label": "benign", "score": 0.35}, {"label": "malignant", "score": 0.65}],
        "organ": "breast_lesion",
        "prompts": {"benign": ["oval, circumscribed"], "malignant": ["irregular", "spiculated margin"]},
        "model_version": "v1",
    }
    summary = classification_summary(reply)
    assert summary.probabilities == [("malignant", 0.65), ("benign", 0.35)]
    assert ("malignant", "spiculated margin") in summary.prompts and len(summary.prompts) == 3
    text = summary.text()
    assert text.splitlines()[0] == "malignant: 65 %" and "oval, circumscribed" in text and "v1" in text
    with pytest.raises(ValueError, match="no prediction"):
        classification_summary({"organ": "x"})


def _task(status: str, started: float) -> dict:
    return {
        "id": "t1",
        "status": status,
        "request": {"model": "segmentation", "max_epochs": 4},
        "start_ts": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
    }


def _stats(started: float, epoch: int) -> dict:
    return {
        "epoch": epoch,
        "total_epochs": 4,
        "start_ts": int(started),
        "best_metric": 0.5,
        "eval": {"metrics": {"val_mean_dice": 0.81234}, "key_metric_name": "val_mean_dice"},
    }


def test_training_progress_of_a_running_task():
    now = time.time()
    progress = training_progress(_task("RUNNING", now), {"segmentation": _stats(now + 3, 1)})
    assert progress.running and progress.percent == 25 and (progress.epoch, progress.total_epochs) == (1, 4)
    assert progress.metric == "Dice 0.812"
    assert "epoch 1/4" in progress.text()


def test_training_progress_ignores_the_previous_runs_stats():
    now = time.time()
    progress = training_progress(_task("RUNNING", now), {"segmentation": _stats(now - 3600, 4)})
    assert progress.percent == 0 and progress.epoch is None and progress.metric == ""


def test_training_progress_when_idle_done_or_classification():
    assert training_progress(None, None).state == "IDLE"
    now = time.time()
    assert training_progress(_task("DONE", now), {}).percent == 100
    task = _task("STOPPED", now)
    task["request"]["model"] = "classification"
    stats = {"classification": {"epoch": 2, "total_epochs": 4, "start_ts": int(now), "best_metric": 0.7}}
    progress = training_progress(task, stats)
    assert not progress.running and progress.percent == 50 and progress.metric == "best accuracy 0.700"


def test_request_params():
    assert segmentation_params("lymph_node") == {"organ": "lymph_node", "result_extension": ".nrrd"}
    assert segmentation_params("auto", prompt="  oval node ", frame=3, result_extension=".png") == {
        "organ": "auto",
        "prompt": "oval node",
        "frame": 3,
        "result_extension": ".png",
    }
    assert "prompt" not in segmentation_params("auto", prompt="   ")
    assert classification_params("thyroid_nodule", frame=0) == {"organ": "thyroid_nodule", "frame": 0}
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="frame"):
            segmentation_params("auto", frame=bad)
    with pytest.raises(ValueError, match="organ"):
        classification_params(" ")


def test_label_params_send_pathology_only_when_known():
    assert label_params("lymph_node", "benign") == {"organ": "lymph_node", "pathology": "benign"}
    assert label_params("lymph_node", "unknown") == {"organ": "lymph_node"}
    assert label_params("lymph_node", None, frame=2) == {"organ": "lymph_node", "frame": 2}
    with pytest.raises(ValueError, match="pathology"):
        label_params("lymph_node", "suspicious")


def test_training_progress_from_the_sonovlm_apps_stats():
    """The app writes per-epoch records, ``max_epochs`` and its publish decision."""
    now = time.time()
    task = _task("DONE", now)
    task["request"]["model"] = "classification"
    stats = {
        "task": "classification",
        "start_ts": int(now + 2),
        "epoch": 3,
        "max_epochs": 3,
        "key_metric": "val_acc",
        "best_metric": 0.75,
        "epochs": [{"epoch": 1, "val_acc": 0.5}, {"epoch": 3, "val_acc": 0.75, "val_auc": 0.8125}],
        "state": "done",
        "publish": {"published": False, "reason": "val_acc 0.7500 does not beat the served model's 0.8000"},
    }
    progress = training_progress(task, {"classification": stats})
    assert (progress.epoch, progress.total_epochs, progress.percent) == (3, 3, 100)
    assert progress.metric == "accuracy 0.750, AUC 0.812"
    assert progress.note.startswith("not published: val_acc 0.7500")
    assert progress.text().splitlines()[1] == progress.note
    stats["publish"] = {"published": True, "version": "v2", "reason": "first trained model"}
    assert training_progress(task, {"classification": stats}).note == "published v2: first trained model"
