"""Backbone loading: presets, local directories, the HF cache offline, and clear failures."""

from __future__ import annotations

import copy
import json
import shutil
import socket
import time

import pytest
import torch
from sonovlm.errors import ModelLoadError
from sonovlm.model import ModelConfig, SonoVLM
from sonovlm.model.backbone import (
    CLIP_EOS_TOKEN_ID,
    PRESETS,
    build_preset,
    image_features,
    load_backbone,
    pooled,
    text_features,
)
from sonovlm.model.tokenizer import load_clip_tokenizer, packaged_tokenizer_dir
from transformers import CLIPConfig, CLIPModel
from transformers.modeling_outputs import BaseModelOutputWithPooling


@pytest.fixture(scope="module")
def tiny():
    return build_preset("tiny")


def test_tiny_preset_is_labelled_untrained_with_the_real_vocabulary(tiny):
    assert tiny.info["name"] == "tiny"
    assert tiny.info["untrained"] is True and tiny.untrained
    text = tiny.clip.config.text_config
    assert text.vocab_size == 49408
    assert text.eos_token_id == CLIP_EOS_TOKEN_ID == 49407
    assert tiny.clip.text_model.embeddings.token_embedding.num_embeddings == 49408
    assert (tiny.image_size, tiny.patch_size, tiny.grid_size, tiny.vision_layers) == (64, 8, 8, 4)
    json.dumps(tiny.info)  # carried by every output: must be JSON


def test_presets_are_deterministic():
    first, second = build_preset("tiny"), build_preset("tiny")
    for (name, a), b in zip(first.clip.state_dict().items(), second.clip.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_vit_b16_preset_has_the_exact_vit_b16_geometry():
    config = CLIPConfig(**PRESETS["vit-b16"])
    vision, text = config.vision_config, config.text_config
    assert (vision.num_hidden_layers, vision.hidden_size) == (12, 768)
    assert (vision.patch_size, vision.image_size) == (16, 224)
    assert (vision.intermediate_size, vision.num_attention_heads) == (3072, 12)
    assert (text.num_hidden_layers, text.hidden_size, text.num_attention_heads) == (12, 512, 8)
    assert (text.vocab_size, text.max_position_embeddings, config.projection_dim) == (49408, 77, 512)


def test_end_of_text_pooling_with_real_token_ids(tiny):
    tokenizer = load_clip_tokenizer()
    short = "thyroid nodule"
    long = "a hypoechoic thyroid nodule with an irregular margin and microcalcifications"
    alone = tokenizer([short], return_tensors="pt")
    batch = tokenizer([short, long], padding=True, return_tensors="pt")
    assert alone["input_ids"][0, -1].item() == CLIP_EOS_TOKEN_ID
    with torch.no_grad():
        single = text_features(tiny.clip, alone["input_ids"], alone["attention_mask"])
        padded = text_features(tiny.clip, batch["input_ids"], batch["attention_mask"])
    # Pooling takes the end-of-text token, so padding after it changes nothing.
    torch.testing.assert_close(single[0], padded[0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(padded[0], padded[1])


def test_pooled_accepts_tensors_and_output_objects(tiny):
    tensor = torch.ones(2, 3)
    assert pooled(tensor) is tensor
    assert pooled(BaseModelOutputWithPooling(pooler_output=tensor)) is tensor
    with pytest.raises(TypeError):
        pooled(BaseModelOutputWithPooling(last_hidden_state=tensor))
    with torch.no_grad():
        features = image_features(tiny.clip, torch.zeros(1, 3, 64, 64))
    assert features.shape == (1, 32)


def test_local_directory_loads_and_is_not_labelled_untrained(tiny, tmp_path):
    tiny.clip.save_pretrained(tmp_path / "clip")
    loaded = load_backbone(tmp_path / "clip")
    assert loaded.info["source"] == "local" and loaded.info["untrained"] is False
    assert loaded.info["tokenizer"] == "clip"
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(packaged_tokenizer_dir() / name, tmp_path / "clip" / name)
    assert load_backbone(tmp_path / "clip").info["tokenizer"] == str(tmp_path / "clip")
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(image_features(loaded.clip, pixels), image_features(tiny.clip, pixels))


def test_foreign_vocabulary_without_tokenizer_is_an_error(tmp_path):
    preset = copy.deepcopy(PRESETS["tiny"])
    preset["text_config"].update(vocab_size=1000, bos_token_id=998, eos_token_id=999, pad_token_id=999)
    CLIPModel(CLIPConfig(**preset)).save_pretrained(tmp_path / "clip")
    with pytest.raises(ModelLoadError, match="no tokenizer files"):
        load_backbone(tmp_path / "clip")


def _fake_hub_cache(tiny, cache, repo_id: str) -> None:
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    tiny.clip.save_pretrained(folder / "snapshots" / commit)
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)


def test_hub_id_is_read_from_the_cache_offline(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    _fake_hub_cache(tiny, tmp_path, "someone/tiny-clip")
    loaded = load_backbone("someone/tiny-clip")
    assert loaded.info["source"] == "hub" and loaded.info["name"] == "someone/tiny-clip"
    assert loaded.info["untrained"] is False
    # from_pretrained caches no tokenizer files; CLIP's vocabulary takes the packaged CLIP BPE.
    assert loaded.info["tokenizer"] == "clip"
    model = SonoVLM(ModelConfig(backbone="someone/tiny-clip"))  # the whole model, offline, from the cache
    assert model.backbone_info["source"] == "hub" and model.organ_text.abs().sum() > 0


def test_missing_hub_weights_offline_fail_at_once_with_a_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelLoadError) as caught:
        load_backbone("nobody/no-such-clip")
    message = str(caught.value)
    assert "nobody/no-such-clip" in message
    assert str(tmp_path) in message  # where it looked
    assert "HF_HUB_OFFLINE" in message
    assert "huggingface-cli download nobody/no-such-clip" in message  # how to fix it


def test_unreachable_hub_fails_at_once_without_offline_mode(tmp_path, monkeypatch):
    offline = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    for variable in (*offline, "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))

    def no_dns(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    started = time.monotonic()
    with pytest.raises(ModelLoadError, match="cannot be reached") as caught:
        load_backbone("nobody/no-such-clip")
    assert time.monotonic() - started < 5  # not huggingface_hub's minute of retries
    assert "huggingface-cli download nobody/no-such-clip" in str(caught.value)


def test_default_backbone_offline_names_the_default_id(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelLoadError, match="openai/clip-vit-base-patch16"):
        load_backbone()


def test_missing_local_directory(tmp_path):
    missing = tmp_path / "no" / "such" / "dir"
    with pytest.raises(ModelLoadError) as caught:
        load_backbone(str(missing))
    assert str(missing) in str(caught.value) and "does not exist" in str(caught.value)


def test_local_directory_without_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_backbone(tmp_path)


def test_unknown_preset_name_is_not_taken_for_a_preset():
    with pytest.raises(ModelLoadError, match="unknown backbone preset"):
        build_preset("huge")
