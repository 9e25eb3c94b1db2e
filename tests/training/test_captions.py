"""Caption refiner: a tiny local causal LM built from a config, resumable JSONL, validation,
provenance, released v1 files, and the contrastive stage trained on its ``refined_caption``."""

from __future__ import annotations

import json

import pytest
from sonovlm.errors import SonoInputError

from training.captions import BatchedCausalLM, caption_problem, read_pair_rows, refine_captions
from training.cli import main
from training.data.datasets import pair_cases


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A randomly initialised 2-layer GPT-2 with the CLIP tokenizer, saved as a local model folder."""
    import torch
    from sonovlm.model.tokenizer import load_clip_tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    tokenizer = load_clip_tokenizer()
    config = GPT2Config(
        n_layer=2,
        n_head=2,
        n_embd=16,
        n_positions=512,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    folder = tmp_path_factory.mktemp("tiny_causal_lm")
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


class Counting:
    """A stand-in generator: a valid sentence per caption, counting the prompts it answered."""

    def __init__(self) -> None:
        self.prompts = 0
        self.calls = 0

    def __call__(self, conversations):
        self.calls += 1
        self.prompts += len(conversations)
        out = []
        for messages in conversations:
            caption = messages[-1]["content"].split('"')[1]
            out.append(f'"B-mode image of the breast showing a {caption.split(", ")[-1]}."')
        return out


def test_caption_validation():
    assert caption_problem("") == "empty output"
    assert "CLIP tokens" in caption_problem("word " * 90)
    assert "breast lesion" in caption_problem("a round hypoechoic area", "breast_lesion")
    assert caption_problem("a round mass in the breast", "breast_lesion") is None
    assert caption_problem("Rewrite this ultrasound image caption: x") == "echoes the instruction"


def test_refines_in_batches_resumes_and_records_provenance(pairs_file, tmp_path):
    out = tmp_path / "refined.jsonl"
    generator = Counting()
    counts = refine_captions(pairs_file, out, generator, model_id="stub-llm", batch_size=4, progress=False)
    assert counts["rows"] == 10 and counts["generated"] == 0 and counts["taken_from_input"] == 10
    # the fixture already refines its captions: taken as they are, unless --force
    counts = refine_captions(
        pairs_file, tmp_path / "forced.jsonl", generator, "stub-llm", 4, force=True, progress=False
    )
    assert counts["generated"] == 10 and generator.calls == 3 and generator.prompts == 10
    rows = [json.loads(line) for line in (tmp_path / "forced.jsonl").read_text().splitlines()]
    assert len(rows) == 10 and all(r["refinement"]["model"] == "stub-llm" for r in rows)
    assert all(r["refinement"]["valid"] and r["refined_caption"].startswith("B-mode image") for r in rows)

    # killed mid-write: an unfinished last line is dropped and redone; finished rows are not asked again
    forced = tmp_path / "forced.jsonl"
    lines = forced.read_text().splitlines(keepends=True)
    forced.write_text("".join(lines[:6]) + lines[6][:20])
    again = Counting()
    counts = refine_captions(pairs_file, forced, again, "stub-llm", 4, force=True, progress=False)
    assert counts["resumed"] == 6 and again.prompts == 4
    assert [json.loads(x)["image"] for x in forced.read_text().splitlines()] == [r["image"] for r in rows]


def test_invalid_outputs_fall_back_to_the_raw_caption(tmp_path, pairs_file):
    rows = read_pair_rows(pairs_file)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps(
                {
                    "image": str(pairs_file.parent / r["image"]),
                    "caption": r["caption"],
                    "organ": "breast_lesion",
                }
            )
            + "\n"
            for r in rows
        )
    )
    out = tmp_path / "out.jsonl"
    counts = refine_captions(
        pairs, out, lambda c: ["a round hypoechoic area"] * len(c), "stub", 3, progress=False
    )
    assert counts["fallbacks"] == 10
    first = json.loads(out.read_text().splitlines()[0])
    assert first["refined_caption"] == first["caption"]
    assert first["refinement"] == {
        **first["refinement"],
        "valid": False,
        "fallback": "caption",
        "generated": "a round hypoechoic area",
    }
    assert "breast lesion" in first["refinement"]["problem"]


def test_tiny_causal_lm_end_to_end_then_contrastive_trains_on_it(tiny_lm, pairs_file, tmp_path):
    generator = BatchedCausalLM.from_pretrained(str(tiny_lm), max_new_tokens=8, device="cpu")
    outputs = generator(
        [[{"role": "user", "content": "a"}], [{"role": "user", "content": "a longer prompt"}]]
    )
    assert len(outputs) == 2 and all(isinstance(o, str) for o in outputs)
    out = tmp_path / "refined.jsonl"
    code = main(
        [
            "refine-captions",
            str(pairs_file),
            "--llm",
            str(tiny_lm),
            "--out",
            str(out),
            "--batch-size",
            "4",
            "--max-new-tokens",
            "8",
            "--device",
            "cpu",
            "--force",
        ]
    )
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 10 and all(r["refined_caption"].strip() for r in rows)
    assert all(r["refinement"]["model"] == str(tiny_lm) for r in rows)
    assert all(r["refinement"]["valid"] or r["refined_caption"] == r["caption"] for r in rows)
    cases = pair_cases(out, "refined")
    assert [c.caption for c in cases] == [r["refined_caption"] for r in rows]
    run = tmp_path / "contrastive"
    code = main(
        [
            "contrastive",
            "--pairs",
            str(out),
            "--captions",
            "refined",
            "--backbone",
            "tiny",
            "--adapter",
            "mona",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--bootstrap",
            "10",
            "--out",
            str(run),
        ]
    )
    assert code == 0
    assert json.loads((run / "run.json").read_text())["settings"]["captions"] == "refined"


def test_released_v1_files_are_read_as_they_are(pairs_file, tmp_path):
    v1 = tmp_path / "v1.jsonl"
    rows = read_pair_rows(pairs_file)
    v1.write_text(
        "".join(
            json.dumps(
                {
                    "image": str(pairs_file.parent / r["image"]),
                    "caption": r["caption"],
                    "refined": f"refined: {r['caption']} in the breast",
                }
            )
            + "\n"
            for r in rows
        )
    )
    assert pair_cases(v1, "refined")[0].caption.startswith("refined: ")
    out = tmp_path / "out.jsonl"
    counts = refine_captions(v1, out, Counting(), "unused", progress=False)
    assert counts["taken_from_input"] == 10 and counts["generated"] == 0
    row = json.loads(out.read_text().splitlines()[0])
    assert row["refined_caption"].startswith("refined: ") and "refined" not in row
    assert row["refinement"]["model"] == "input file (v1.jsonl)"


def test_bad_pair_files(tmp_path):
    with pytest.raises(SonoInputError, match="not found"):
        read_pair_rows(tmp_path / "missing.csv")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "a.png"}\n')
    with pytest.raises(SonoInputError, match="no caption"):
        read_pair_rows(bad)
