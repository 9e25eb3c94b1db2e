"""The packaged CLIP tokenizer and load_clip_tokenizer's sources and errors."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import pytest
from sonovlm.errors import ModelLoadError
from sonovlm.model.tokenizer import (
    CONTEXT_LENGTH,
    fits_context,
    load_clip_tokenizer,
    packaged_tokenizer_dir,
    token_count,
)

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def clip_tokenizer():
    return load_clip_tokenizer()


def test_packaged_tokenizer_has_clip_geometry(clip_tokenizer):
    assert type(clip_tokenizer).__name__ == "CLIPTokenizer"
    assert len(clip_tokenizer) == 49408
    assert clip_tokenizer.bos_token_id == 49406
    assert clip_tokenizer.eos_token_id == 49407
    # openai/clip-vit-base-patch16 pads with the end-of-text token and allows 77 tokens.
    assert clip_tokenizer.pad_token_id == 49407
    assert clip_tokenizer.model_max_length == CONTEXT_LENGTH == 77


def test_token_ids_match_open_clip_reference(clip_tokenizer):
    # Reference ids from open_clip 3.3.0's SimpleTokenizer (and OpenAI CLIP's README example).
    assert clip_tokenizer("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    ids = clip_tokenizer("An ultrasound image of a lymph node.", add_special_tokens=False)["input_ids"]
    assert ids == [550, 29717, 2867, 539, 320, 1251, 5306, 24871, 269]
    ids = clip_tokenizer("hello\tworld\n new   line   ", add_special_tokens=False)["input_ids"]
    assert ids == [3306, 1002, 686, 1148]


def test_vocab_order_follows_bytes_to_unicode():
    vocab = json.loads((packaged_tokenizer_dir() / "vocab.json").read_text(encoding="utf-8"))
    assert vocab["!"] == 0 and vocab["!</w>"] == 256
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert sorted(vocab.values()) == list(range(49408))


def test_padding_to_context_uses_end_token(clip_tokenizer):
    batch = clip_tokenizer(["a lymph node", "a thyroid nodule with calcifications"], padding="max_length",
                           max_length=CONTEXT_LENGTH, return_tensors="pt")
    assert tuple(batch["input_ids"].shape) == (2, 77)
    assert batch["input_ids"][0, -1].item() == 49407
    assert batch["attention_mask"][0].sum().item() == token_count("a lymph node") == 6  # "lymph" is 2


@pytest.mark.parametrize("name", ["clip", "tiny", "vit-b16"])
def test_preset_names_load_packaged_files(name, clip_tokenizer):
    tok = load_clip_tokenizer(name)
    assert tok("breast lesion")["input_ids"] == clip_tokenizer("breast lesion")["input_ids"]


def test_local_folder_round_trip(tmp_path, clip_tokenizer):
    clip_tokenizer.save_pretrained(tmp_path / "tok")
    tok = load_clip_tokenizer(tmp_path / "tok")
    text = "Irregular hypoechoic mass, non-parallel, with posterior acoustic shadowing."
    assert tok(text)["input_ids"] == clip_tokenizer(text)["input_ids"]
    assert load_clip_tokenizer(str(tmp_path / "tok")).eos_token_id == 49407


def test_missing_folder_is_a_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_clip_tokenizer(tmp_path / "nowhere")


def test_folder_without_tokenizer_files_is_a_load_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="no usable tokenizer"):
        load_clip_tokenizer(tmp_path)


def test_uncached_hub_id_offline_fails_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as info:
        load_clip_tokenizer("sonovlm-test/no-such-clip")
    message = str(info.value)
    assert "sonovlm-test/no-such-clip" in message and "HF_HUB_OFFLINE" in message


def test_token_count_includes_start_and_end():
    assert token_count("a photo of a cat") == 7
    # "a" is one token: 75 of them plus start and end fill the context exactly.
    assert fits_context(" ".join(["a"] * 75))
    assert not fits_context(" ".join(["a"] * 76))
    assert token_count(" ".join(["a"] * 200)) == 202  # measured, not truncated


def _load_convert_script():
    path = REPO / "scripts" / "convert_clip_bpe.py"
    spec = importlib.util.spec_from_file_location("convert_clip_bpe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_conversion_script_builds_open_clip_layout(tmp_path):
    convert = _load_convert_script()
    bpe = "\n".join(["#version: 0.2", "i n", "t h", "th e</w>", ""]).encode()
    vocab, merges = convert.convert(gzip.compress(bpe))
    assert merges == ["i n", "t h", "th e</w>"]
    assert len(vocab) == 256 * 2 + 3 + 2
    assert [vocab["in"], vocab["th"], vocab["the</w>"]] == [512, 513, 514]
    assert vocab["<|startoftext|>"] == 515 and vocab["<|endoftext|>"] == 516
    convert.write(tmp_path, vocab, merges)
    tok = load_clip_tokenizer(tmp_path)
    assert tok.convert_tokens_to_ids("the</w>") == 514
    assert tok("the", add_special_tokens=False)["input_ids"] == [514]


def test_shipped_merges_match_vocab():
    folder = packaged_tokenizer_dir()
    merges = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0].startswith("#version")
    assert len(merges) - 1 == 49152 - 256 - 2
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    assert all(vocab["".join(m.split())] == 512 + i for i, m in enumerate(merges[1:]))
