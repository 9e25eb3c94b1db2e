"""End to end: training in MONAI Label's subprocess while the server keeps answering, publishing,
a stop mid-training, rollback, a broken publish, and a backbone that cannot load."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import requests
import torch
from monailabel.client import MONAILabelClient
from sonovlm.app.model_store import ModelStore
from sonovlm.model import load_model, save_checkpoint

from tests.server_fixture import make_studies, start_server

pytestmark = pytest.mark.slow

TRAIN_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    return make_studies(tmp_path_factory.mktemp("training") / "studies", count=6, seed=1)


@pytest.fixture(scope="module")
def server(server_factory, studies):
    return server_factory(studies, {"backbone": "tiny", "auto_scoring": "false", "train_threads": "1"})


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    return MONAILabelClient(server.url, tmpdir=str(tmp_path_factory.mktemp("client")), client_id="trainer")


def served_version(client, image_id="sample_002") -> str:
    return client.infer("segmentation", image_id, {"result_extension": ".png"})[1]["model_version"]


def wait_for_version(client, version, timeout=30.0) -> str:
    deadline = time.monotonic() + timeout
    current = served_version(client)
    while current != version and time.monotonic() < deadline:
        time.sleep(0.5)
        current = served_version(client)
    return current


def train_stats(client, task):
    return client.info()["train_stats"].get(task, {})


def tensorboard_tags(events_dir) -> tuple[dict[str, list[float]], list[str]]:
    """Scalars (tag -> values in step order) and image tags of the event files in ``events_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert list(events_dir.glob("events.out.tfevents.*")), f"no event file in {events_dir}"
    accumulator = EventAccumulator(str(events_dir), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    scalars = {tag: [event.value for event in accumulator.Scalars(tag)] for tag in tags["scalars"]}
    return scalars, list(tags["images"])


def assert_pngs(folder, names) -> None:
    from PIL import Image

    for name in names:
        with Image.open(folder / name) as image:
            assert image.format == "PNG" and image.width > 100 and image.height > 100


def models_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sonovlm.cli.main", "models", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_training_runs_aside_and_publishes(client, server):
    start_version = served_version(client)
    assert start_version.startswith("init-")
    task = client.train_start("segmentation", {"max_epochs": 2, "train_batch_size": 2, "val_split": 0.3})
    assert task["status"] in ("SUBMITTED", "RUNNING")

    answered_while_running = 0
    deadline = time.monotonic() + TRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        status = client.train_status()["status"]
        if status not in ("SUBMITTED", "RUNNING"):
            break
        started = time.perf_counter()
        assert served_version(client, "sample_004")  # infers answer while training runs
        if status == "RUNNING":
            answered_while_running += 1
            assert time.perf_counter() - started < 10
        time.sleep(0.2)
    assert status == "DONE", client.train_status()
    assert answered_while_running >= 1

    stats = train_stats(client, "segmentation")
    assert stats["state"] == "done" and [e["epoch"] for e in stats["epochs"]] == [1, 2]
    assert all(0.0 <= e["val_mean_dice"] <= 1.0 and e["train_loss"] > 0 for e in stats["epochs"])
    decision = stats["publish"]
    assert decision["published"] is True and "first trained model" in decision["reason"]
    assert "val_mean_dice" in decision["candidate"] and "val_mean_dice" in decision["served"]
    assert wait_for_version(client, decision["version"]) == decision["version"]

    listing = json.loads(models_cli("list", "--json", "--model-dir", str(server.model_dir)).stdout)
    assert listing["current"] == decision["version"]

    # TensorBoard events where MONAI Label puts them, and the figures python -m training draws.
    assert all(e["lr"] > 0 for e in stats["epochs"])
    assert stats["epochs"][1]["lr"] < stats["epochs"][0]["lr"]  # cosine schedule
    events = server.model_dir / stats["events_dir"]
    assert events.parent == server.model_dir / "runs" / "segmentation" / "train_01"
    assert events.name == f"events_{stats['run_id']}"
    scalars, images = tensorboard_tags(events)
    assert {"train_loss", "train_loss_epoch", "train_mean_dice", "val_mean_dice", "learning_rate"} <= set(
        scalars
    )
    assert len(scalars["val_mean_dice"]) == 2 and len(scalars["learning_rate"]) == 2
    assert [round(v, 6) for v in scalars["val_mean_dice"]] == [
        round(e["val_mean_dice"], 6) for e in stats["epochs"]
    ]
    assert {"input_0_HW_0", "input_1_HW_0", "output_HW_0"} <= set(images)  # image, label, prediction
    assert stats["figures"] == ["overlays.png", "training_curves.png"]
    assert_pngs(server.model_dir / stats["figures_dir"], stats["figures"])


def test_classification_training_reports_accuracy_and_auc(client, server):
    before = served_version(client)
    client.train_start("classification", {"max_epochs": 1, "train_batch_size": 4, "val_split": 0.5})
    deadline = time.monotonic() + TRAIN_TIMEOUT_S
    while client.train_status()["status"] in ("SUBMITTED", "RUNNING") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert client.train_status()["status"] == "DONE"
    stats = train_stats(client, "classification")
    [epoch] = stats["epochs"]
    assert 0.0 <= epoch["val_acc"] <= 1.0 and "val_auc" in epoch
    decision = stats["publish"]
    scalars, _ = tensorboard_tags(server.model_dir / stats["events_dir"])
    assert {"train_loss", "train_acc", "val_acc", "learning_rate"} <= set(scalars)
    # ROC only when the validation images hold both pathologies (else AUC is undefined too).
    expected = ["training_curves.png"]
    if decision["candidate"]["val_auc"] is not None:
        expected.insert(0, "roc_curve.png")
    assert stats["figures"] == expected
    assert_pngs(server.model_dir / stats["figures_dir"], expected)
    candidate, served = decision["candidate"]["val_acc"], decision["served"]["val_acc"]
    # The served model is a trained one now: publish only if better on the same images.
    if decision["published"]:
        assert candidate >= served and "beats" in decision["reason"]
        assert wait_for_version(client, decision["version"]) == decision["version"]
    else:
        assert candidate <= served and "does not beat" in decision["reason"]
        assert served_version(client) == before


def test_run_sync_is_refused(server):
    response = requests.post(
        f"{server.url}/train/segmentation", params={"run_sync": "true"}, json={}, timeout=60
    )
    assert response.status_code == 400 and "blocks every request" in response.json()["detail"]


def test_stop_mid_training_keeps_the_served_model(client, server):
    before = served_version(client)
    published_before = (server.model_dir / "published.json").read_bytes()
    client.train_start("segmentation", {"max_epochs": 500, "train_batch_size": 1})
    deadline = time.monotonic() + TRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        stats = train_stats(client, "segmentation")
        if stats.get("state") == "running" and stats.get("epoch", 0) >= 1:
            break
        time.sleep(0.3)
    assert stats.get("state") == "running"
    assert client.train_stop()["status"] == "STOPPED"
    assert client.train_status()["status"] == "STOPPED"
    assert served_version(client) == before
    assert (server.model_dir / "published.json").read_bytes() == published_before
    assert train_stats(client, "segmentation")["state"] == "stopped"
    assert not list((server.model_dir / "versions").glob(".incoming-*"))


def test_rollback_and_broken_publish(client, server):
    store = ModelStore(server.model_dir)
    first = store.current()
    model = load_model(backbone="tiny", weights=first.path)
    with torch.no_grad():
        for param in model.seg_head.parameters():
            param.add_(0.01)
    second = store.publish(lambda path: save_checkpoint(model, path), source="test")
    assert wait_for_version(client, second.version) == second.version

    result = models_cli("rollback", first.version, "--model-dir", str(server.model_dir))
    assert result.returncode == 0 and first.version in result.stdout
    assert wait_for_version(client, first.version) == first.version

    def broken(path):
        path.write_bytes(b"\x00" * 64)
        return "broken-checkpoint"

    store.publish(broken, source="test")
    deadline = time.monotonic() + 30
    while "model_load_error" not in client.info()["sonovlm"] and time.monotonic() < deadline:
        time.sleep(0.5)
    info = client.info()["sonovlm"]
    assert "broken-checkpoint" in info["model_load_error"]
    assert served_version(client) == first.version  # still the previous model
    assert "could not be loaded" in server.log(400)
    unknown = models_cli("rollback", "v-none", "--model-dir", str(server.model_dir))
    assert unknown.returncode == 2 and "no published model" in unknown.stderr


def test_a_backbone_that_cannot_load_stops_the_server(studies, tmp_path):
    server = start_server(
        studies, {"backbone": str(tmp_path / "no-such-model")}, work_dir=tmp_path, wait=False
    )
    try:
        server.proc.wait(timeout=180)
        assert server.proc.returncode != 0
        assert "Cannot serve backbone" in server.log(400)
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{server.url}/info/", timeout=5)
    finally:
        server.stop()
