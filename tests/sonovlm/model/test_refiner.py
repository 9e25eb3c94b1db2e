"""LLM refiner: validation and fallback (stub generators), and the transformers wiring (tiny LM)."""

from __future__ import annotations

import json
import logging

import pytest
from sonovlm.errors import ModelLoadError, SonoInputError
from sonovlm.model.prompts import TARGET, PromptBank, load_prompt_bank
from sonovlm.model.refiner import (
    RefineInput,
    TransformersGenerator,
    clean_generated,
    default_inputs,
    instruction,
    read_inputs,
    refine_prompt_bank,
    validation_problem,
)
from sonovlm.model.tokenizer import load_clip_tokenizer
from sonovlm.organs import ORGAN_LABELS

TOO_LONG = "thyroid nodule " + "with many words " * 30


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def base() -> PromptBank:
    return load_prompt_bank()


def _caption(messages) -> str:
    return messages[-1]["content"].split('"')[1]


def _valid_stub(messages) -> str:
    return f'Description: "An ultrasound image of a {_caption(messages)}."\nextra line'


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


@pytest.mark.parametrize(("text", "organ", "problem"), [
    ("", "lymph_node", "empty output"),
    ("   ", "lymph_node", "empty output"),
    (TOO_LONG, "thyroid_nodule", "CLIP tokens, more than 77"),
    ("an irregular hypoechoic area with shadowing", "breast_lesion", "does not mention the breast lesion"),
    ("a thyroid nodule, taller than wide", "lymph_node", "does not mention the lymph node"),
    ("A round NODE  without hilum.", "lymph_node", "duplicates another description"),
])
def test_validation_problems(text, organ, problem):
    found = validation_problem(text, organ, taken=["a round node without hilum"])
    assert found is not None and problem in found


def test_valid_text_passes():
    assert validation_problem("an oval lymph node with a fatty hilum", "lymph_node", taken=[]) is None


def test_clean_generated():
    assert clean_generated('\n  Description: "A round lymph node."\nMore text') == "A round lymph node."
    assert clean_generated("assistant: an oval breast mass") == "an oval breast mass"
    assert clean_generated("\n\n") == ""


def test_default_inputs_cover_every_slot_with_distinct_captions(base):
    items = default_inputs(base)
    assert len(items) == len(list(base.entries()))
    assert len({(i.organ, i.text) for i in items}) == len(items)
    assert {i.organ for i in items if i.role == TARGET} == set(ORGAN_LABELS)


def test_instruction_uses_chat_roles_and_names_the_organ():
    messages = instruction(RefineInput("breast_lesion", "malignant", "malignant breast lesion: margin"))
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert "BI-RADS" in user and '"malignant breast lesion: margin"' in user


@pytest.mark.parametrize("invalid", ["", TOO_LONG, "irregular hypoechoic area, not circumscribed"])
def test_invalid_generations_fall_back_to_curated_text(invalid, base, caplog):
    with caplog.at_level(logging.WARNING, logger="sonovlm.model.refiner"):
        refined = refine_prompt_bank(lambda messages: invalid, base, model_id="stub-invalid")
    assert refined.content_hash == base.content_hash  # every slot kept its curated text
    record = refined.metadata["refinement"]
    assert record["model"] == "stub-invalid"
    assert record["fell_back"] == len(record["items"]) == len(list(base.entries()))
    assert all(item["fell_back"] and item["problem"] and item["generated"] == invalid
               for item in record["items"])
    assert sum("keeping the curated text" in r.message for r in caplog.records) == len(record["items"])


def test_duplicate_generations_fall_back(base):
    # Always the same valid-looking sentence for the lymph node: only the first use may stay.
    def stub(messages):
        return "an enlarged lymph node" if "lymph node" in _caption(messages) else ""

    refined = refine_prompt_bank(stub, base, model_id="stub-dup")
    items = [i for i in refined.metadata["refinement"]["items"] if i["organ"] == "lymph_node"]
    assert [i["fell_back"] for i in items] == [False] + [True] * (len(items) - 1)
    assert all(i["problem"] == "duplicates another description" for i in items[1:])
    assert refined.target("lymph_node") == "an enlarged lymph node"


def test_generation_copying_another_curated_text_falls_back(base):
    other = base.class_prompts("thyroid_nodule")["malignant"][0]
    inputs = [RefineInput("thyroid_nodule", "benign", "benign thyroid nodule")]
    refined = refine_prompt_bank(lambda m: other, base, inputs)
    assert refined.metadata["refinement"]["items"][0]["fell_back"]
    assert refined.class_prompts("thyroid_nodule") == base.class_prompts("thyroid_nodule")


def test_valid_generations_replace_their_slots_and_reload(tmp_path, base):
    refined = refine_prompt_bank(_valid_stub, base, model_id="stub-valid", generation={"do_sample": False})
    record = refined.metadata["refinement"]
    assert record["fell_back"] == 0 and record["generation"] == {"do_sample": False}
    assert record["base_bank"] == base.ident and record["created"].endswith("+00:00")
    assert refined.target("breast_lesion") == "An ultrasound image of a breast lesion."
    malignant = refined.class_prompts("thyroid_nodule")["malignant"]
    assert malignant[0] == "An ultrasound image of a malignant thyroid nodule: composition."
    assert len(malignant) == len(base.class_prompts("thyroid_nodule")["malignant"])
    assert refined.content_hash != base.content_hash and refined.name == "clinical-refined"
    item = record["items"][1]
    assert (item["organ"], item["role"], item["index"]) == ("lymph_node", "benign", 0)
    assert item["text"] == "benign lymph node: shape and long-to-short axis ratio"
    assert item["output"] == "An ultrasound image of a benign lymph node: shape and long-to-short axis ratio."
    loaded = load_prompt_bank(refined.save(tmp_path / "refined.json"))
    assert loaded.content_hash == refined.content_hash


def test_extra_inputs_are_appended_or_dropped(base):
    benign = base.class_prompts("breast_lesion")["benign"]
    inputs = [RefineInput("breast_lesion", "benign", f"benign breast mass variant {k}")
              for k in range(len(benign) + 2)]

    def stub(messages):
        caption = _caption(messages)
        return "" if caption.endswith(str(len(benign) + 1)) else f"a {caption}"

    refined = refine_prompt_bank(stub, base, inputs)
    texts = refined.class_prompts("breast_lesion")["benign"]
    assert len(texts) == len(benign) + 1
    assert texts[-1] == f"a benign breast mass variant {len(benign)}"
    last = refined.metadata["refinement"]["items"][-1]
    assert last["fell_back"] and last["output"] is None


def test_read_inputs(tmp_path):
    path = tmp_path / "inputs.json"
    item = {"organ": "lymph_node", "role": "malignant", "text": " round node "}
    path.write_text(json.dumps({"items": [item]}))
    assert read_inputs(path) == [RefineInput("lymph_node", "malignant", "round node")]


@pytest.mark.parametrize(("content", "message"), [
    ("[]", "non-empty JSON list"),
    ("{oops", "cannot read refiner inputs"),
    ('[{"organ": "liver", "role": "benign", "text": "x"}]', "unknown organ 'liver'"),
    ('[{"organ": "lymph_node", "role": "suspicious", "text": "x"}]', "unknown role 'suspicious'"),
    ('[{"organ": "lymph_node", "role": "benign", "text": " "}]', "item 0: empty text"),
    ('[{"organ": "lymph_node", "role": "target", "text": "a"}, {"organ": "lymph_node", "role": "target", '
     '"text": "b"}]', "item 1: a second target"),
])
def test_read_inputs_rejects_bad_files(tmp_path, content, message):
    path = tmp_path / "inputs.json"
    path.write_text(content)
    with pytest.raises(SonoInputError, match=message):
        read_inputs(path)
    with pytest.raises(SonoInputError, match="no such file"):
        read_inputs(tmp_path / "missing.json")


def test_tiny_lm_wiring_is_deterministic_and_falls_back(tiny_lm_dir, base):
    generator = TransformersGenerator.from_pretrained(tiny_lm_dir, max_new_tokens=6, device="cpu")
    assert generator.generation == {"do_sample": False, "num_beams": 1, "max_new_tokens": 6,
                                    "chat_template": False}
    messages = instruction(RefineInput("thyroid_nodule", "malignant", "malignant thyroid nodule"))
    prompt = generator.tokenizer.decode(generator.encode(messages)["input_ids"][0], skip_special_tokens=True)
    assert prompt.rstrip().endswith("description :")  # plain prompt: no chat template
    first = generator(messages)
    assert first and first == generator(messages)
    assert len(generator.tokenizer(first, add_special_tokens=False)["input_ids"]) <= 6 + 2

    inputs = [RefineInput("thyroid_nodule", "malignant", "malignant thyroid nodule"),
              RefineInput("lymph_node", TARGET, "lymph node")]
    refined = refine_prompt_bank(generator, base, inputs, model_id=str(tiny_lm_dir),
                                 generation=generator.generation)
    record = refined.metadata["refinement"]
    # A random network writes random tokens: never a valid organ description.
    assert [i["fell_back"] for i in record["items"]] == [True, True]
    assert record["items"][0]["generated"] == first
    assert refined.content_hash == base.content_hash


def test_tiny_lm_with_chat_template(tiny_lm_dir, tmp_path):
    tokenizer = load_clip_tokenizer(tiny_lm_dir)
    tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                               "{% if add_generation_prompt %}assistant:{% endif %}")
    generator = TransformersGenerator.from_pretrained(tiny_lm_dir, max_new_tokens=4, device="cpu")
    generator.tokenizer = tokenizer
    messages = instruction(RefineInput("lymph_node", "benign", "benign lymph node"))
    prompt = tokenizer.decode(generator.encode(messages)["input_ids"][0])
    assert prompt.startswith("system :") and prompt.rstrip().endswith("assistant :")
    assert generator.generation["chat_template"] is True
    assert isinstance(generator(messages), str)


def test_missing_model_folder_and_offline_hub_id(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        TransformersGenerator.from_pretrained(tmp_path / "no_model")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE") as info:
        TransformersGenerator.from_pretrained("sonovlm-test/no-such-llm")
    assert "sonovlm-test/no-such-llm" in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="cannot be loaded as a causal language model"):
        TransformersGenerator.from_pretrained(tmp_path / "empty")


def test_dropped_extra_slot_does_not_leave_a_gap(base):
    count = len(base.class_prompts("lymph_node")["malignant"])
    inputs = [RefineInput("lymph_node", "malignant", f"malignant node {k}") for k in range(count + 2)]
    replies = iter([""] * count + ["", "a matted malignant lymph node"])
    refined = refine_prompt_bank(lambda m: next(replies), base, inputs)
    items = refined.metadata["refinement"]["items"]
    assert [i["index"] for i in items[-2:]] == [count, count]
    assert refined.class_prompts("lymph_node")["malignant"][count] == "a matted malignant lymph node"


def test_unknown_organ_in_api_inputs(base):
    with pytest.raises(SonoInputError, match="unknown organ or role"):
        refine_prompt_bank(_valid_stub, base, [RefineInput("liver", "benign", "liver")])
