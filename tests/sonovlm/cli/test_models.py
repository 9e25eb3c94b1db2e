"""``sonovlm models list|rollback``."""

from __future__ import annotations

import json

from sonovlm.app.model_store import ModelStore
from sonovlm.cli.main import main


def publish(store, version, metrics=None):
    def save(path):
        path.write_bytes(b"w")
        return version

    store.publish(save, source="train:segmentation", metrics=metrics or {})


def test_list_and_rollback(tmp_path, capsys):
    store = ModelStore(tmp_path)
    publish(store, "v1", {"val_mean_dice": 0.25})
    publish(store, "v2")
    assert main(["models", "list", "--model-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("  v1") and "val_mean_dice=0.2500" in lines[0] and lines[1].startswith("* v2")

    assert main(["models", "rollback", "v1", "--model-dir", str(tmp_path)]) == 0
    assert "serving v1" in capsys.readouterr().out
    assert main(["models", "list", "--json", "--model-dir", str(tmp_path)]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["current"] == "v1" and [m["current"] for m in payload["models"]] == [True, False]


def test_errors(tmp_path, capsys):
    assert main(["models", "list", "--model-dir", str(tmp_path / "missing")]) == 2
    assert "no such model directory" in capsys.readouterr().err
    ModelStore(tmp_path)
    assert main(["models", "list", "--model-dir", str(tmp_path)]) == 0
    assert "no published models" in capsys.readouterr().out
    assert main(["models", "rollback", "v7", "--model-dir", str(tmp_path)]) == 2
    assert "error: VERSION: no published model 'v7'" in capsys.readouterr().err
