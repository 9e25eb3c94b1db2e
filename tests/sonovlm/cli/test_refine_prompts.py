"""``sonovlm refine-prompts`` end to end with a tiny random LM saved to disk (no network)."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from sonovlm.cli.main import main
from sonovlm.model.prompts import load_prompt_bank
from sonovlm.model.tokenizer import load_clip_tokenizer


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory):
    """A randomly initialised 2-layer GPT-2 with the CLIP tokenizer, saved like a hub model."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    tokenizer = load_clip_tokenizer()
    config = GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=256, vocab_size=len(tokenizer),
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    folder = tmp_path_factory.mktemp("tiny_lm")
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_refine_prompts_writes_a_loadable_bank_with_a_record(tiny_lm_dir, tmp_path, capsys):
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps([
        {"organ": "breast_lesion", "role": "malignant", "text": "spiculated mass"},
        {"organ": "thyroid_nodule", "role": "target", "text": "thyroid nodule"},
    ]))
    out = tmp_path / "out" / "refined.json"
    code = main(["refine-prompts", "--llm", str(tiny_lm_dir), "--out", str(out), "--input", str(inputs),
                 "--max-new-tokens", "5", "--device", "cpu"])
    assert code == 0
    stdout = capsys.readouterr().out
    assert "refined 0 of 2 descriptions" in stdout and "2 kept the curated text" in stdout

    bank = load_prompt_bank(out)
    curated = load_prompt_bank()
    assert bank.content_hash == curated.content_hash  # random LM: everything fell back
    record = json.loads(out.read_text())["refinement"]
    assert record["model"] == str(tiny_lm_dir)
    assert datetime.fromisoformat(record["created"]).tzinfo is not None
    assert record["generation"]["do_sample"] is False and record["generation"]["max_new_tokens"] == 5
    assert [(i["organ"], i["role"], i["text"]) for i in record["items"]] == [
        ("breast_lesion", "malignant", "spiculated mass"), ("thyroid_nodule", "target", "thyroid nodule")]
    assert all(i["fell_back"] and i["problem"] and isinstance(i["generated"], str) for i in record["items"])
    assert record["items"][1]["output"] == curated.target("thyroid_nodule")


def test_refine_prompts_default_inputs_cover_the_whole_bank(tiny_lm_dir, tmp_path):
    out = tmp_path / "refined.json"
    assert main(["refine-prompts", "--llm", str(tiny_lm_dir), "--out", str(out), "--max-new-tokens", "2",
                 "--device", "cpu"]) == 0
    bank = load_prompt_bank(out)
    assert len(bank.metadata["refinement"]["items"]) == len(list(load_prompt_bank().entries()))


@pytest.mark.parametrize(("extra", "message"), [
    (["--llm", "{tmp}/no_model"], "does not exist"),
    (["--llm", "sonovlm-test/no-such-llm"], "HF_HUB_OFFLINE"),
    (["--llm", "{lm}", "--input", "{tmp}/missing.json"], "no such file"),
    (["--llm", "{lm}", "--base", "{tmp}/missing_bank.json"], "no such prompt bank"),
    (["--llm", "{lm}", "--max-new-tokens", "0"], "--max-new-tokens: must be at least 1"),
])
def test_refine_prompts_errors_exit_2(extra, message, tiny_lm_dir, tmp_path, capsys):
    args = [a.format(tmp=tmp_path, lm=tiny_lm_dir) for a in extra]
    out = tmp_path / "refined.json"
    assert main(["refine-prompts", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]
    assert not out.exists()
