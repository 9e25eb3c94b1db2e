"""Watching the studies folder (MONAI Label's auto reload) without reacting to the server's own
bookkeeping: a real watchdog observer on a temporary folder."""

from __future__ import annotations

import os
import shutil
import threading
import time

import pytest
from sonovlm.app import studies_watch
from sonovlm.app.datastore import SonoDatastore
from sonovlm.app.results import ResultLog
from sonovlm.app.studies_watch import StudiesWatcher

from tests.dicom_factory import bmode_frame, us_dataset, write_dataset

PATTERNS = ["*.dcm", "*.png", "*.nii.gz", "*.nrrd"]


def _wait(predicate, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture
def folder(tmp_path):
    studies = tmp_path / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    return studies


@pytest.fixture(params=[False, True], ids=["inotify", "polling"])
def watched(request, folder):
    calls: list[float] = []
    changed = threading.Event()

    def on_change():
        calls.append(time.monotonic())
        changed.set()

    watcher = StudiesWatcher(str(folder), str(folder / "labels"), PATTERNS, on_change, polling=request.param)
    watcher.start()
    time.sleep(0.3)  # the polling observer's first snapshot
    yield watcher, calls, changed
    watcher.stop()


def test_concerns_images_and_labels_only(folder):
    watcher = StudiesWatcher(str(folder), str(folder / "labels"), PATTERNS, lambda: None, polling=False)
    assert watcher.concerns(str(folder / "case.dcm"))
    assert watcher.concerns(str(folder / "CASE.DCM"))
    assert watcher.concerns(str(folder / "labels" / "final" / "case.nii.gz"))
    assert watcher.concerns(str(folder / "labels" / "reviewed"))  # a new label tag
    assert not watcher.concerns(str(folder / ".lock"))
    assert not watcher.concerns(str(folder / "datastore_v2.json"))
    assert not watcher.concerns(str(folder / "notes.txt"))
    assert not watcher.concerns(str(folder / ".sonovlm" / "results" / "case.dcm"))
    assert not watcher.concerns(str(folder / "sub" / "case.dcm"))  # MONAI Label lists the top only


def test_an_image_copied_in_and_removed_is_seen(watched, folder):
    _, calls, changed = watched
    write_dataset(us_dataset(bmode_frame(32, 40)), folder / "new.dcm")
    assert changed.wait(10), "no refresh after an image was added"
    changed.clear()
    (folder / "new.dcm").unlink()
    assert changed.wait(10), "no refresh after an image was removed"


def test_a_label_saved_by_hand_is_seen(watched, folder):
    _, calls, changed = watched
    (folder / "labels" / "final" / "case.png").write_bytes(b"not read here")
    assert changed.wait(10)


@pytest.fixture
def dispatched(monkeypatch):
    """The paths of every event that reaches Python code (the handler), whatever it concerns."""
    seen: list[str] = []
    on_any_event = studies_watch._Handler.on_any_event

    def counting(self, event):
        seen.append(os.fsdecode(event.src_path))
        return on_any_event(self, event)

    monkeypatch.setattr(studies_watch._Handler, "on_any_event", counting)
    return seen


def test_the_servers_bookkeeping_is_not_watched(dispatched, watched, folder):
    """What a click does in the studies folder (the index lock opened, the result JSON written
    atomically under .sonovlm/, the index re-read) reaches no Python code: MONAI Label's watcher
    matched each of these events against every pattern, on a thread holding the GIL."""
    _, calls, changed = watched
    (folder / ".lock").touch()
    (folder / "datastore_v2.json").write_text("{}")
    (folder / ".sonovlm" / "results").mkdir(parents=True)
    time.sleep(1.5)  # their creation is an event; what follows is what each click does
    dispatched.clear()
    results = ResultLog(folder / ".sonovlm" / "results")
    for n in range(20):
        with open(folder / ".lock", "a"):
            pass
        results.record("case", "segmentation", {"n": n})
        results.latest("case")
        (folder / "datastore_v2.json").read_text()
    (folder / "notes.txt").write_text("x")
    time.sleep(1.5)  # longer than the polling observer's interval
    assert calls == []
    bookkeeping = [p for p in dispatched if ".sonovlm" in p or p.endswith((".lock", "datastore_v2.json"))]
    assert bookkeeping == []


def test_the_datastore_picks_up_a_copied_image(tmp_path):
    studies = tmp_path / "studies"
    studies.mkdir()
    write_dataset(us_dataset(bmode_frame(32, 40, seed=1)), studies / "first.dcm")
    store = SonoDatastore(str(studies), auto_reload=True)
    try:
        assert store.watcher is not None
        assert store.list_images() == ["first"]
        shutil.copy2(studies / "first.dcm", studies / "second.dcm")
        assert _wait(lambda: sorted(store.list_images()) == ["first", "second"])
        (studies / "first.dcm").unlink()
        assert _wait(lambda: store.list_images() == ["second"])
    finally:
        store.watcher.stop()


def test_no_watcher_without_auto_reload(tmp_path):
    studies = tmp_path / "studies"
    studies.mkdir()
    store = SonoDatastore(str(studies), auto_reload=False)
    assert store.watcher is None
