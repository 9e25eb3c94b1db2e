"""The one served model: publish picked up in place, failed loads keep the previous model."""

from __future__ import annotations

import pytest
import torch
from sonovlm.app import model_access
from sonovlm.app.config import AppConfig
from sonovlm.app.frames import ImageCache
from sonovlm.app.model_store import ModelStore
from sonovlm.app.registry import ModelRegistry
from sonovlm.errors import ModelLoadError
from sonovlm.model import load_model, save_checkpoint


@pytest.fixture
def setup(tmp_path):
    config = AppConfig.from_conf({"backbone": "tiny", "model_dir": str(tmp_path / "model")}, tmp_path)
    store = ModelStore(config.model_dir)
    registry = ModelRegistry(config, store, ImageCache(), watch_interval_s=0)
    registry.start()
    return config, store, registry


def trained_variant(seed: int, adapter: str = "mona"):
    """A tiny model whose segmentation head differs from the fresh one (as after training)."""
    model = load_model(backbone="tiny", adapter=adapter)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.seg_head.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    return model


def test_publish_is_loaded_in_place(setup):
    _, store, registry = setup
    served_model = registry.predictor.model
    fresh_version = registry.model_version
    assert fresh_version.startswith("init-")
    changes = []
    registry.on_change(changes.append)

    entry = store.publish(lambda p: save_checkpoint(trained_variant(1), p), source="test")
    assert registry.refresh() is True
    assert registry.model_version == entry.version and changes == [entry.version]
    assert registry.predictor.model is served_model  # one backbone in memory
    assert registry.refresh() is False
    info = registry.info()
    assert info["model_version"] == entry.version and info["backbone"] == "tiny (untrained)"
    assert info["adapter"] == "mona" and "model_load_error" not in info

    second = store.publish(lambda p: save_checkpoint(trained_variant(2), p), source="test")
    registry.refresh()
    assert registry.model_version == second.version
    store.rollback(entry.version)
    registry.refresh()
    assert registry.model_version == entry.version


def test_failed_load_keeps_serving_and_is_not_retried(setup, monkeypatch):
    _, store, registry = setup
    good = store.publish(lambda p: save_checkpoint(trained_variant(3), p), source="test")
    registry.refresh()

    def broken(path):
        path.write_bytes(b"definitely not safetensors")
        return "broken-1"

    store.publish(broken, source="test")
    calls = []
    original = model_access.prepare
    monkeypatch.setattr(model_access, "prepare", lambda *a, **k: calls.append(1) or original(*a, **k))
    assert registry.refresh() is False
    assert registry.model_version == good.version
    assert "broken-1" in registry.load_error and "broken-1" in registry.info()["model_load_error"]
    registry.refresh()
    assert len(calls) == 1  # the same broken file is not tried again
    with registry.inference() as predictor:
        assert predictor.model_version == good.version

    fixed = store.publish(lambda p: save_checkpoint(trained_variant(4), p), source="test")
    assert registry.refresh() is True
    assert registry.model_version == fixed.version and registry.load_error is None


def test_checkpoint_of_another_adapter_loads_as_a_new_model(setup):
    _, store, registry = setup
    served_model = registry.predictor.model
    entry = store.publish(lambda p: save_checkpoint(trained_variant(5, adapter="lora"), p), source="test")
    assert registry.refresh() is True
    assert registry.model_version == entry.version
    assert registry.predictor.model is not served_model and registry.info()["adapter"] == "lora"


def test_start_with_a_broken_published_model_serves_the_start_up_model(tmp_path):
    config = AppConfig.from_conf({"backbone": "tiny", "model_dir": str(tmp_path / "m")}, tmp_path)
    store = ModelStore(config.model_dir)
    store.publish(lambda p: (p.write_bytes(b"junk"), "junk-1")[1], source="test")
    registry = ModelRegistry(config, store, ImageCache(), watch_interval_s=0)
    registry.start()
    assert registry.model_version.startswith("init-") and "junk-1" in registry.load_error


def test_unloadable_backbone_fails(tmp_path):
    config = AppConfig.from_conf(
        {"backbone": str(tmp_path / "no-such-model"), "model_dir": str(tmp_path)}, tmp_path
    )
    registry = ModelRegistry(config, ModelStore(config.model_dir), ImageCache(), watch_interval_s=0)
    with pytest.raises(ModelLoadError):
        registry.start()


def test_warm_up_runs(setup):
    _, _, registry = setup
    assert registry.warm_up() > 0


def test_served_model_card_follows_the_published_checkpoint(setup):
    _, store, registry = setup
    assert registry.predictor.model_card is None and registry.info()["model_card"] is None
    card = {"name": "phantom-demo", "clinical_use": False}

    def save_with_card(path):
        model = trained_variant(3)
        model.model_card = card
        return save_checkpoint(model, path)

    store.publish(save_with_card, source="test")
    assert registry.refresh() is True
    assert registry.predictor.model_card == card and registry.info()["model_card"] == card
    store.publish(lambda p: save_checkpoint(trained_variant(4), p), source="test")  # loaded in place
    registry.refresh()
    assert registry.predictor.model_card is None and registry.info()["model_card"] is None
