"""Publishing, history, pruning and rollback of server models (kill-safe writes)."""

from __future__ import annotations

import json

import pytest
from sonovlm.app.model_store import ModelStore
from sonovlm.errors import SonoInputError


def fake_save(version: str, payload: bytes = b"weights"):
    def save(path):
        path.write_bytes(payload + version.encode())
        return version

    return save


def test_publish_makes_current_and_keeps_history(tmp_path):
    store = ModelStore(tmp_path / "model")
    assert store.current() is None and store.history() == []
    first = store.publish(fake_save("v1"), source="train:segmentation", metrics={"val_mean_dice": 0.5})
    second = store.publish(fake_save("v2"), source="train:segmentation")
    assert store.current().version == "v2"
    assert [m.version for m in store.history()] == ["v1", "v2"]
    assert [m.current for m in store.history()] == [False, True]
    assert first.path.read_bytes() == b"weightsv1" and second.path.read_bytes() == b"weightsv2"
    assert store.history()[0].metrics == {"val_mean_dice": 0.5}
    index = json.loads((tmp_path / "model" / "published.json").read_text())
    assert index["current"] == "v2"
    assert [e["event"] for e in index["events"]] == ["publish", "publish"]


def test_rollback_and_unknown_version(tmp_path):
    store = ModelStore(tmp_path)
    store.publish(fake_save("v1"), source="a")
    store.publish(fake_save("v2"), source="b")
    signature = store.signature()
    assert store.rollback("v1").version == "v1"
    assert store.current().version == "v1"
    assert store.signature() != signature  # the server notices the change
    with pytest.raises(SonoInputError, match="no published model 'v9'"):
        store.rollback("v9")
    assert store.current().version == "v1"


def test_failed_save_leaves_the_served_model(tmp_path):
    store = ModelStore(tmp_path)
    store.publish(fake_save("v1"), source="a")
    before = (tmp_path / "published.json").read_bytes()

    def dying_save(path):
        path.write_bytes(b"half a checkp")
        raise KeyboardInterrupt("killed mid-write")

    with pytest.raises(KeyboardInterrupt):
        store.publish(dying_save, source="b")
    assert (tmp_path / "published.json").read_bytes() == before
    assert store.current().version == "v1"
    assert sorted(p.name for p in (tmp_path / "versions").iterdir()) == ["v1.safetensors"]


def test_stale_incoming_files_are_removed(tmp_path):
    store = ModelStore(tmp_path)
    (tmp_path / "versions").mkdir()
    stale = tmp_path / "versions" / ".incoming-123-456.safetensors"
    stale.write_bytes(b"partial")
    store.remove_stale_incoming()
    assert not stale.exists()


def test_pruning_keeps_newest_and_current(tmp_path):
    store = ModelStore(tmp_path, keep=2)
    for n in range(1, 4):
        store.publish(fake_save(f"v{n}"), source="t")
    store.rollback("v2")
    store.publish(fake_save("v4"), source="t")  # keep v4, v3 (newest two); v1 pruned
    present = {m.version: m.exists for m in store.history()}
    assert present == {"v1": False, "v2": False, "v3": True, "v4": True}
    with pytest.raises(SonoInputError, match="pruned"):
        store.rollback("v1")
    store.rollback("v3")
    store.publish(fake_save("v5"), source="t")
    assert store.history()[-1].version == "v5" and store.current().version == "v5"
    assert {m.version for m in store.history() if m.exists} == {"v4", "v5"}
