"""End to end: faults a hospital server meets, on a real server (tiny backbone, sample studies).

Each fault must give a clear error, leave the last good model serving, lose or half-write no
label, and leave the server answering ``/info`` and ``/infer``:

* a published checkpoint truncated on disk;
* the training subprocess killed with SIGKILL mid-run;
* the label folder on a read-only file system, and the studies disk full;
* the datastore index truncated while the server runs.

The server runs as root here, so file permissions do not stop its writes: the studies folder is a
small ``tmpfs`` of its own (filled up for the full-disk case) and ``labels/final`` is bind-mounted
read-only over itself. Where mounting is not allowed those two tests skip and say so.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests
import torch
from monailabel.client import MONAILabelClient
from PIL import Image
from sonovlm.app.model_store import ModelStore
from sonovlm.model import load_model, save_checkpoint

from tests.server_fixture import make_studies, start_server

pytestmark = pytest.mark.slow

TRAIN_TIMEOUT_S = 240
TMPFS_SIZE = "48m"


def _mount(*args: str) -> bool:
    result = subprocess.run(["mount", *args], capture_output=True, text=True)
    return result.returncode == 0


def _umount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture(scope="module")
def studies_on_tmpfs(tmp_path_factory):
    """``(studies, mounted)``: the studies folder, on its own tmpfs when this machine allows it."""
    studies = tmp_path_factory.mktemp("faults") / "studies"
    studies.mkdir()
    mounted = _mount("-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(studies))
    try:
        yield make_studies(studies, count=4, seed=0), mounted
    finally:
        if mounted:
            _umount(studies)


@pytest.fixture(scope="module")
def server(studies_on_tmpfs, tmp_path_factory):
    studies, _ = studies_on_tmpfs
    running = start_server(
        studies,
        {"backbone": "tiny", "auto_scoring": "false", "train_threads": "1", "scoring_delay_s": "0"},
        work_dir=tmp_path_factory.mktemp("faults-server"),
    )
    yield running
    running.stop()  # before the studies tmpfs goes away


def info(server) -> dict:
    response = requests.get(f"{server.url}/info/", timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def served_version(server, image_id="sample_002") -> str:
    client = MONAILabelClient(server.url, tmpdir=str(server.work_dir), client_id="faults")
    return client.infer("segmentation", image_id, {"result_extension": ".png"})[1]["model_version"]


def perturbed(step: float):
    """A tiny model whose heads differ from a fresh one's (so its checkpoint has its own version)."""
    model = load_model(backbone="tiny")
    with torch.no_grad():
        for param in model.seg_head.parameters():
            param.add_(step)
    return model


def assert_still_serving(server, version: str) -> None:
    assert server.alive(), server.log(80)
    assert info(server)["name"] == "SonoVLM"
    assert served_version(server) == version


def put_label(server, image_id: str, path: Path, params: dict | None = None):
    with open(path, "rb") as fh:
        return requests.put(
            f"{server.url}/datastore/label",
            params={"image": image_id, "tag": "final"},
            data={"params": json.dumps(params or {})},
            files={"label": (path.name, fh)},
            timeout=60,
        )


def label_info(server, image_id: str) -> dict:
    response = requests.get(
        f"{server.url}/datastore/label/info", params={"label": image_id, "tag": "final"}, timeout=30
    )
    assert response.status_code == 200, response.text
    return response.json()


def new_label(studies: Path, image_id: str, tmp_path: Path) -> Path:
    """A valid label for ``image_id`` that differs from the stored one (a box moved by a few pixels)."""
    stored = np.asarray(Image.open(studies / "labels" / "final" / f"{image_id}.png"))
    mask = np.zeros(stored.shape[:2], np.uint8)
    rows, cols = np.nonzero(stored)
    mask[rows.min() + 2 : rows.max() + 3, cols.min() + 2 : cols.max() + 3] = 255
    path = tmp_path / f"{image_id}-new.png"
    Image.fromarray(mask).save(path)
    return path


def no_temp_files(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob(".*.tmp*")]


# -- a checkpoint truncated on disk ----------------------------------------------------------------


def test_a_truncated_checkpoint_keeps_the_last_good_model(server, tmp_path):
    store = ModelStore(server.model_dir)
    first = served_version(server)
    model = perturbed(0.01)
    good = store.publish(lambda path: save_checkpoint(model, path), source="test-good")
    deadline = time.monotonic() + 30
    while served_version(server) != good.version and time.monotonic() < deadline:
        time.sleep(0.5)
    assert served_version(server) == good.version != first

    # A publish whose checkpoint was cut short (disk full, copy interrupted): half the file.
    full = tmp_path / "full.safetensors"
    version = save_checkpoint(model, full)
    data = full.read_bytes()

    def truncated(path: Path) -> str:
        path.write_bytes(data[: len(data) // 2])
        return f"{version}-truncated"

    store.publish(truncated, source="test-truncated")
    deadline = time.monotonic() + 30
    while "model_load_error" not in info(server)["sonovlm"] and time.monotonic() < deadline:
        time.sleep(0.5)
    error = info(server)["sonovlm"].get("model_load_error", "")
    assert f"{version}-truncated" in error and "could not be loaded" in error, error
    assert_still_serving(server, good.version)
    assert f"{version}-truncated" in server.log(100_000) and "still serving" in server.log(100_000)

    # The served checkpoint itself truncated on disk: the model in memory keeps serving.
    store.rollback(good.version)
    good_path = store.current().path
    with open(good_path, "r+b") as fh:
        fh.truncate(good_path.stat().st_size // 3)
    time.sleep(3)  # the watcher's interval: it must not reload (or fail on) the same version
    assert_still_serving(server, good.version)


# -- the training subprocess killed ----------------------------------------------------------------


def _training_processes(server) -> list[psutil.Process]:
    found = []
    for child in psutil.Process(server.pid).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            if "train" in " ".join(child.cmdline()):
                found.append(child)
    return found


def test_a_killed_training_keeps_the_served_model_and_the_next_one_runs(server):
    store = ModelStore(server.model_dir)
    # A good, loadable model serves (the previous test may have truncated the served file).
    model = perturbed(0.02)
    base = store.publish(lambda path: save_checkpoint(model, path), source="test-base")
    deadline = time.monotonic() + 30
    while served_version(server) != base.version and time.monotonic() < deadline:
        time.sleep(0.5)
    before = served_version(server)
    assert before == base.version
    published_before = store.index_path.read_bytes()

    response = requests.post(
        f"{server.url}/train/segmentation", json={"max_epochs": 500, "train_batch_size": 1}, timeout=60
    )
    assert response.status_code == 200, response.text
    deadline = time.monotonic() + TRAIN_TIMEOUT_S
    stats: dict = {}
    while time.monotonic() < deadline:
        stats = info(server)["train_stats"].get("segmentation", {})
        if stats.get("state") == "running" and stats.get("epoch", 0) >= 1:
            break
        time.sleep(0.3)
    assert stats.get("state") == "running", stats
    trainers = _training_processes(server)
    assert trainers, [p.cmdline() for p in psutil.Process(server.pid).children(recursive=True)]
    for process in trainers:
        os.kill(process.pid, signal.SIGKILL)

    deadline = time.monotonic() + 60
    status = {}
    while time.monotonic() < deadline:
        status = requests.get(f"{server.url}/train/", params={"check_if_running": False}, timeout=30).json()
        if status.get("status") not in ("SUBMITTED", "RUNNING"):
            break
        time.sleep(0.5)
    assert status.get("status") == "ERROR", status
    assert_still_serving(server, before)
    assert store.index_path.read_bytes() == published_before

    # The next training starts, runs to its end, and no unfinished checkpoint is left behind.
    response = requests.post(
        f"{server.url}/train/segmentation",
        json={"max_epochs": 1, "train_batch_size": 2, "val_split": 0.5},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    deadline = time.monotonic() + TRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        status = requests.get(f"{server.url}/train/", params={"check_if_running": False}, timeout=30).json()
        if status.get("status") not in ("SUBMITTED", "RUNNING"):
            break
        time.sleep(0.5)
    assert status.get("status") == "DONE", status
    assert info(server)["train_stats"]["segmentation"]["state"] == "done"
    assert not list((server.model_dir / "versions").glob(".incoming-*"))
    assert server.alive()


# -- the label disk read-only or full ----------------------------------------------------------------


def _stored_state(studies: Path, image_id: str) -> tuple[bytes, bytes]:
    return (
        (studies / "labels" / "final" / f"{image_id}.png").read_bytes(),
        (studies / "datastore_v2.json").read_bytes(),
    )


def test_a_read_only_label_folder_is_a_clear_error_and_changes_nothing(server, studies_on_tmpfs, tmp_path):
    studies, mounted = studies_on_tmpfs
    final = studies / "labels" / "final"
    if not mounted or not _mount("--bind", "-o", "ro", str(final), str(final)):
        pytest.skip("cannot mount here (needs CAP_SYS_ADMIN): no read-only label folder to test with")
    version = served_version(server)
    try:
        assert not os.access(final, os.W_OK) or _write_fails(final)
        label = new_label(studies, "sample_001", tmp_path)
        before = _stored_state(studies, "sample_001")
        info_before = label_info(server, "sample_001")
        response = put_label(server, "sample_001", label, {"pathology": "malignant"})
        assert response.status_code == 503, response.text
        detail = response.json()["detail"]
        assert "sample_001" in detail and "Read-only file system" in detail and "nothing" in detail
        assert _stored_state(studies, "sample_001") == before
        assert label_info(server, "sample_001") == info_before
        assert no_temp_files(studies) == []
    finally:
        _umount(final)
    assert_still_serving(server, version)
    # Writable again: the same label saves.
    response = put_label(server, "sample_001", label, {"pathology": "malignant"})
    assert response.status_code == 200, response.text
    assert label_info(server, "sample_001")["pathology"] == "malignant"


def _write_fails(folder: Path) -> bool:
    try:
        (folder / ".probe").write_bytes(b"x")
    except OSError:
        return True
    (folder / ".probe").unlink()
    return False


def test_a_full_studies_disk_loses_no_label(server, studies_on_tmpfs, tmp_path):
    studies, mounted = studies_on_tmpfs
    if not mounted:
        pytest.skip("cannot mount a tmpfs here (needs CAP_SYS_ADMIN): no disk to fill")
    version = served_version(server)
    label = new_label(studies, "sample_003", tmp_path)
    before = _stored_state(studies, "sample_003")
    info_before = label_info(server, "sample_003")
    filler = studies / "filler.bin"
    try:
        with open(filler, "wb", buffering=0) as fh:  # fill the disk to the last byte
            for size in (1 << 20, 4096):
                with contextlib.suppress(OSError):
                    while fh.write(b"\0" * size):
                        pass
        assert shutil.disk_usage(studies).free < 8192
        response = put_label(server, "sample_003", label, {"pathology": "malignant"})
        assert response.status_code == 503, response.text
        detail = response.json()["detail"]
        assert "sample_003" in detail and "No space left" in detail, detail
        assert _stored_state(studies, "sample_003") == before
        assert label_info(server, "sample_003") == info_before
        assert no_temp_files(studies) == []
    finally:
        filler.unlink(missing_ok=True)
    assert_still_serving(server, version)
    response = put_label(server, "sample_003", label, {"pathology": "malignant"})
    assert response.status_code == 200, response.text
    saved = label_info(server, "sample_003")
    assert saved["pathology"] == "malignant" and len(saved["history"]) == 1
    assert (studies / saved["history"][0]["file"]).read_bytes() == before[0]


# -- the datastore index truncated -----------------------------------------------------------------


def test_a_truncated_index_is_set_aside_and_rewritten(server, studies_on_tmpfs, tmp_path):
    studies, _ = studies_on_tmpfs
    version = served_version(server)
    index = studies / "datastore_v2.json"
    good = json.loads(index.read_text())
    assert set(good["objects"]) >= {"sample_001", "sample_002", "sample_003", "sample_004"}
    damaged = index.read_bytes()[: index.stat().st_size // 2]
    index.write_bytes(damaged)

    stats = requests.get(f"{server.url}/datastore/", timeout=30)  # re-reads the index
    assert stats.status_code == 200, stats.text
    assert stats.json()["total"] == len(good["objects"]) and stats.json()["completed"] >= 2
    listing = requests.get(f"{server.url}/datastore/", params={"output": "all"}, timeout=30)
    assert listing.status_code == 200, listing.text
    assert set(listing.json()["objects"]) == set(good["objects"])
    assert "unreadable" in server.log(100_000)  # whole log: request lines follow it

    backups = sorted(studies.glob("datastore_v2.json.broken-*"))
    assert backups and backups[-1].read_bytes() == damaged
    rebuilt = json.loads(index.read_text())  # a whole index again, with the label info kept
    assert set(rebuilt["objects"]) == set(good["objects"])
    assert rebuilt["objects"] == good["objects"]
    assert_still_serving(server, version)

    # Labels save as before.
    label = new_label(studies, "sample_001", tmp_path)
    assert put_label(server, "sample_001", label).status_code == 200
