"""Checkpoints: exact round trip, metadata, atomic writes, clear errors for wrong files."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from sonovlm.errors import ModelLoadError, SonoInputError
from sonovlm.model import (
    AdapterConfig,
    HeadConfig,
    ModelConfig,
    SonoVLM,
    load_checkpoint,
    read_checkpoint_metadata,
    save_checkpoint,
    set_checkpoint_card,
)
from sonovlm.model import checkpoint as checkpoint_module
from sonovlm.model.backbone import PRESETS, Backbone, geometry_info
from transformers import CLIPConfig, CLIPModel


def _trained(adapter: str) -> SonoVLM:
    """A tiny model whose every trainable weight moved away from its initial value."""
    model = SonoVLM(ModelConfig(backbone="tiny", adapter=AdapterConfig(kind=adapter)))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.trainable_parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
        model.cls_head.temperature.fill_(1.7)
    return model


def _outputs(model: SonoVLM) -> dict[str, torch.Tensor]:
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(pixels, organ_ids=torch.tensor([0, 2]))
        out["probabilities"] = model.cls_head.probabilities(out["cls_logits"])
        out["prompt"] = model.segment_logits(model.encode_image(pixels), model.encode_prompt("a nodule"))
    return out


@pytest.mark.parametrize("adapter", ["lora", "mona", "hybrid", "none"])
def test_round_trip_reproduces_outputs_exactly(adapter, tmp_path):
    model = _trained(adapter)
    path = tmp_path / "model.safetensors"
    version = save_checkpoint(model, path)
    loaded = load_checkpoint(path)
    assert loaded.version == version == model.version
    assert loaded.config == model.config
    assert not loaded.cls_head.is_zero_shot
    expected, actual = _outputs(model), _outputs(loaded)
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


def test_metadata_describes_the_model(tmp_path):
    model = _trained("lora")
    path = tmp_path / "model.safetensors"
    version = save_checkpoint(model, path)
    metadata = read_checkpoint_metadata(path)
    assert metadata["format"] == checkpoint_module.FORMAT == "sonovlm-checkpoint"
    assert metadata["version"] == version
    assert metadata["config"]["backbone"] == "tiny" and metadata["config"]["adapter"]["kind"] == "lora"
    assert metadata["config"]["preprocess"]["image_size"] == 64
    assert metadata["config"]["prompt_hash"] == model.prompt_bank.content_hash
    assert metadata["backbone_info"]["untrained"] is True
    assert metadata["created"].endswith("+00:00")
    # Trainable weights only: no backbone tensor is in the file.
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        keys = list(handle.keys())
    assert keys and all(k.startswith(("adapter.", "seg_head.", "cls_head.", "text.")) for k in keys)
    assert "text.organ_text" in keys and "cls_head.temperature" in keys


def test_levels_are_recorded_and_old_checkpoints_keep_theirs(tmp_path):
    model = _trained("mona")
    assert model.levels == (2, 3, 4)  # tiny: the blocks after 1/4, 1/2, 3/4 of its 4
    path = tmp_path / "model.safetensors"
    save_checkpoint(model, path)
    assert read_checkpoint_metadata(path)["config"]["heads"]["levels"] == [2, 3, 4]
    assert load_checkpoint(path).levels == (2, 3, 4)

    # A checkpoint saved before the levels were recorded (heads.levels null) was trained on the
    # old rule's blocks 1, 2, 3: it must load onto those, giving that model's outputs exactly.
    old_model = SonoVLM(
        ModelConfig(backbone="tiny", adapter=AdapterConfig(kind="mona"), heads=HeadConfig(levels=(1, 2, 3)))
    )
    old_model.load_trainable_state_dict(model.trainable_state_dict())
    save_checkpoint(old_model, tmp_path / "tmp.safetensors")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "tmp.safetensors"), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
    config = json.loads(metadata["config"])
    config["heads"]["levels"] = None
    metadata["config"] = json.dumps(config)
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata=metadata)
    old = load_checkpoint(tmp_path / "old.safetensors")
    assert old.levels == (1, 2, 3) and old.config.heads.levels == (1, 2, 3)
    expected, actual = _outputs(old_model), _outputs(old)
    assert torch.equal(expected["seg_logits"], actual["seg_logits"])
    assert not torch.equal(_outputs(model)["seg_logits"], actual["seg_logits"])  # the blocks matter
    # Re-saved, it records its blocks and reloads on them.
    save_checkpoint(old, tmp_path / "resaved.safetensors")
    assert load_checkpoint(tmp_path / "resaved.safetensors").levels == (1, 2, 3)


def test_merged_lora_saves_the_same_checkpoint(tmp_path):
    model = _trained("lora")
    save_checkpoint(model, tmp_path / "unmerged.safetensors")
    model.merge_adapter()
    save_checkpoint(model, tmp_path / "merged.safetensors")
    a = load_checkpoint(tmp_path / "unmerged.safetensors")
    b = load_checkpoint(tmp_path / "merged.safetensors")
    assert a.state_hash() == b.state_hash()
    # Weights can be swapped into a merged model (the server does that): same outputs, still merged.
    b.merge_adapter()
    b.load_trainable_state_dict(model.trainable_state_dict())
    assert b.adapter_merged
    expected, actual = _outputs(a), _outputs(b)
    torch.testing.assert_close(actual["seg_logits"], expected["seg_logits"], rtol=1e-4, atol=1e-5)


def test_writes_are_atomic(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    first = _trained("mona")
    version = save_checkpoint(first, path)
    original = path.read_bytes()

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as stream:
            stream.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(_trained("mona"), path)
    assert path.read_bytes() == original  # the reader still sees the old, whole checkpoint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]  # no temporary left
    assert load_checkpoint(path).version == version


def test_missing_and_foreign_files_are_input_errors(tmp_path):
    with pytest.raises(SonoInputError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.safetensors")
    text = tmp_path / "notes.safetensors"
    text.write_text("this is not a checkpoint")
    with pytest.raises(SonoInputError, match="not a safetensors"):
        load_checkpoint(text)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(2)}, str(foreign))
    with pytest.raises(SonoInputError, match="not a SonoVLM checkpoint"):
        load_checkpoint(foreign)


def test_tampered_config_is_an_input_error(tmp_path):
    model = _trained("lora")
    path = tmp_path / "model.safetensors"
    save_checkpoint(model, path)
    metadata = read_checkpoint_metadata(path)
    config = dict(metadata["config"], adapter={"kind": "adapter-from-the-future"})
    raw = {k: v for k, v in metadata.items() if isinstance(v, str)}
    raw.update(
        config=json.dumps(config),
        backbone_info=json.dumps(metadata["backbone_info"]),
        prompt_bank=json.dumps(metadata["prompt_bank"]),
    )
    save_file(load_file(str(path)), str(path), metadata=raw)
    with pytest.raises(SonoInputError, match="invalid checkpoint config"):
        load_checkpoint(path)


def _other_backbone() -> Backbone:
    """A tiny-like backbone with a wider vision tower: not what the checkpoint was trained on."""
    preset = copy.deepcopy(PRESETS["tiny"])
    preset["vision_config"]["hidden_size"] = 64
    clip = CLIPModel(CLIPConfig(**preset)).eval()
    info = {"name": "wide-tiny", "untrained": True, "source": "test", **geometry_info(clip)}
    return Backbone(clip=clip, info=info)


def test_backbone_with_another_geometry_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    save_checkpoint(_trained("lora"), path)
    with pytest.raises(ModelLoadError) as caught:
        load_checkpoint(path, backbone=_other_backbone())
    message = str(caught.value)
    assert "tiny" in message and "wide-tiny" in message and "vision_width 32 != 64" in message


def test_backbone_override_by_name(tmp_path):
    path = tmp_path / "model.safetensors"
    model = _trained("mona")
    save_checkpoint(model, path)
    loaded = load_checkpoint(path, backbone="tiny", device="cpu")
    assert torch.equal(_outputs(model)["seg_logits"], _outputs(loaded)["seg_logits"])
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_checkpoint(path, backbone=str(tmp_path / "no-such-backbone"))



def test_model_card_is_carried_by_the_checkpoint_and_its_retrained_successors(tmp_path):
    model = _trained("mona")
    path = tmp_path / "model.safetensors"
    save_checkpoint(model, path)
    assert read_checkpoint_metadata(path)["model_card"] is None
    assert load_checkpoint(path).describe()["model_card"] is None

    card = {"name": "phantom-demo", "trained_on": "phantoms", "clinical_use": False}
    before = load_file(str(path))
    version = read_checkpoint_metadata(path)["version"]
    set_checkpoint_card(path, card)
    after = load_file(str(path))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert read_checkpoint_metadata(path)["version"] == version  # same weights, same version
    loaded = load_checkpoint(path)
    assert loaded.model_card == card and loaded.describe()["model_card"] == card

    retrained = tmp_path / "retrained.safetensors"
    save_checkpoint(loaded, retrained)  # a model retrained from the demo still says where it came from
    assert read_checkpoint_metadata(retrained)["model_card"] == card


@pytest.mark.parametrize("card", [[], {"name": " "}, {"trained_on": "x"}])
def test_model_card_needs_a_name(tmp_path, card):
    path = tmp_path / "model.safetensors"
    save_checkpoint(_trained("lora"), path)
    with pytest.raises(SonoInputError, match="model_card"):
        set_checkpoint_card(path, card)
    assert read_checkpoint_metadata(path)["model_card"] is None


def test_model_card_that_is_not_a_json_object_is_an_input_error(tmp_path):
    path = tmp_path / "model.safetensors"
    save_checkpoint(_trained("lora"), path)
    tensors = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    save_file(tensors, str(path), metadata={**metadata, "model_card": '["a list"]'})
    with pytest.raises(SonoInputError, match="not a JSON object"):
        read_checkpoint_metadata(path)


def test_preset_drawn_by_another_version_is_refused(tmp_path, monkeypatch):
    """A checkpoint trained on a preset's random draw is never served on another draw."""
    path = tmp_path / "model.safetensors"
    save_checkpoint(_trained("mona"), path)
    assert read_checkpoint_metadata(path)["backbone_info"]["weights_fingerprint"]
    load_checkpoint(path)  # same draw: loads
    from sonovlm.model import backbone as backbone_module

    monkeypatch.setattr(backbone_module, "PRESET_SEED", 7)
    monkeypatch.setattr(backbone_module.build_preset, "__defaults__", (7,))  # another "version"
    with pytest.raises(ModelLoadError, match="random weights .* draws"):
        load_checkpoint(path)
