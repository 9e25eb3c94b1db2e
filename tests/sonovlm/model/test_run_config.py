"""The one model loader (issue 16 item 4): load_model and python -m training build through
RunConfig / build_model."""

from __future__ import annotations

import pytest
from sonovlm.errors import SonoInputError
from sonovlm.model import load_model, save_checkpoint
from sonovlm.model.run_config import RunConfig, build_model
from sonovlm.vocabulary import DEFAULT_ADAPTER


def test_fresh_model_takes_the_default_adapter_and_options():
    model = build_model(RunConfig(backbone="tiny", adapter="lora", adapter_options={"lora_rank": 4}))
    assert model.config.adapter.kind == "lora" and model.config.adapter.lora_rank == 4
    assert build_model(RunConfig(backbone="tiny")).config.adapter.kind == DEFAULT_ADAPTER


def test_a_checkpoint_with_other_heads_keeps_its_adapter(tmp_path):
    trained = load_model(backbone="tiny", adapter="mona")
    path = tmp_path / "m.safetensors"
    save_checkpoint(trained, path)
    same = build_model(RunConfig(weights=path))
    assert same.config.heads == trained.config.heads
    decoder = "reference" if trained.config.heads.decoder != "reference" else "sonovlm"
    other = build_model(RunConfig(weights=path, heads={"decoder": decoder}))
    assert other.config.heads.decoder == decoder and other.config.adapter == trained.config.adapter
    adapter_keys = [k for k in trained.trainable_state_dict() if k.startswith("adapter.")]
    assert adapter_keys
    for key in adapter_keys:
        assert other.trainable_state_dict()[key].equal(trained.trainable_state_dict()[key])


def test_bad_adapters_are_refused(tmp_path):
    with pytest.raises(SonoInputError, match="--adapter"):
        RunConfig(adapter="prefix")
    trained = load_model(backbone="tiny", adapter="mona")
    path = tmp_path / "m.safetensors"
    save_checkpoint(trained, path)
    with pytest.raises(SonoInputError, match="does not match the checkpoint"):
        build_model(RunConfig(weights=path, adapter="lora"))
