"""The packaged prompt bank: coverage, CLIP token limits, validation, hashing, round trip."""

from __future__ import annotations

import copy
import json

import pytest
from sonovlm.errors import SonoInputError
from sonovlm.model.prompts import (
    DEFAULT_PROMPT_BANK,
    TARGET,
    PromptBank,
    load_prompt_bank,
    mentions_organ,
    packaged_prompt_banks,
)
from sonovlm.model.tokenizer import load_clip_tokenizer
from sonovlm.organs import ORGAN_LABELS, PATHOLOGIES


@pytest.fixture(scope="module")
def bank() -> PromptBank:
    return load_prompt_bank()


@pytest.fixture()
def bank_data(bank) -> dict:
    return copy.deepcopy(bank.to_dict())


def test_default_bank_is_packaged(bank):
    assert DEFAULT_PROMPT_BANK in packaged_prompt_banks()
    assert (bank.name, bank.version) == ("clinical", "1")
    assert bank.ident.startswith("clinical@1#")


def test_every_text_fits_clip_context_with_the_real_tokenizer(bank):
    tokenizer = load_clip_tokenizer()
    texts = [entry.text for entry in bank.entries()]
    ids = tokenizer(texts, add_special_tokens=True)["input_ids"]
    for text, tokens in zip(texts, ids, strict=True):
        assert tokens[0] == tokenizer.bos_token_id and tokens[-1] == tokenizer.eos_token_id
        assert len(tokens) <= 77, text


def test_every_organ_has_target_and_several_descriptions_per_class(bank):
    for organ in ORGAN_LABELS:
        assert mentions_organ(bank.target(organ), organ)
        prompts = bank.class_prompts(organ)
        assert tuple(prompts) == PATHOLOGIES
        for pathology, texts in prompts.items():
            assert 4 <= len(texts) <= 6
            assert all(mentions_organ(t, organ) for t in texts), (organ, pathology)


def test_class_prompts_cover_the_clinical_criteria(bank):
    def joined(organ):
        return " ".join(t for texts in bank.class_prompts(organ).values() for t in texts).lower()

    for organ, criteria in {
        "lymph_node": ["oval", "round", "axis ratio", "hilum", "cortex", "calcification", "necrosis",
                       "vascularity"],
        "breast_lesion": ["oval", "irregular", "parallel", "circumscribed", "spiculated", "hypoechoic",
                          "posterior acoustic shadowing", "posterior acoustic enhancement"],
        "thyroid_nodule": ["cystic", "spongiform", "solid", "hypoechoic", "taller than wide", "margin",
                           "punctate echogenic foci", "comet-tail"],
    }.items():
        text = joined(organ)
        assert [c for c in criteria if c not in text] == []


def test_entries_order_and_roles(bank):
    entries = list(bank.entries())
    assert entries[0].organ == "lymph_node" and entries[0].role == TARGET
    assert {e.role for e in entries} == {TARGET, *PATHOLOGIES}
    assert len(entries) == sum(1 + sum(map(len, bank.class_prompts(o).values())) for o in ORGAN_LABELS)


def test_unknown_organ_lookup_raises(bank):
    with pytest.raises(SonoInputError, match="unknown organ"):
        bank.target("liver")


def test_content_hash_depends_on_texts_only(bank, bank_data):
    renamed = dict(bank_data, name="other", version="7", refinement={"model": "x"})
    assert PromptBank.from_dict(renamed).content_hash == bank.content_hash
    bank_data["organs"]["thyroid_nodule"]["classes"]["benign"][0] += " seen on ultrasound"
    assert PromptBank.from_dict(bank_data).content_hash != bank.content_hash
    assert len(bank.content_hash) == 64


def test_save_and_load_round_trip_keeps_metadata(tmp_path, bank, bank_data):
    bank_data["refinement"] = {"model": "tiny-lm", "items": []}
    saved = PromptBank.from_dict(bank_data).save(tmp_path / "sub" / "bank.json")
    loaded = load_prompt_bank(saved)
    assert loaded.content_hash == bank.content_hash
    assert loaded.metadata["refinement"]["model"] == "tiny-lm"
    assert loaded.source == str(saved)
    assert [p.name for p in saved.parent.iterdir()] == ["bank.json"]  # no temporary file left


def _mutations():
    def unknown_organ(d):
        d["organs"]["liver"] = d["organs"]["lymph_node"]

    def missing_organ(d):
        del d["organs"]["breast_lesion"]

    def empty_target(d):
        d["organs"]["lymph_node"]["target"] = "   "

    def empty_class(d):
        d["organs"]["thyroid_nodule"]["classes"]["malignant"] = []

    def unknown_class(d):
        d["organs"]["thyroid_nodule"]["classes"]["indeterminate"] = ["a thyroid nodule"]

    def too_long(d):
        d["organs"]["breast_lesion"]["classes"]["benign"][1] = "breast mass " + "with an oval shape " * 20

    def duplicate(d):
        texts = d["organs"]["breast_lesion"]["classes"]
        texts["malignant"].append(texts["benign"][0].upper() + ".")

    def wrong_format(d):
        d["format"] = "something-else"

    def no_name(d):
        d["name"] = ""

    return {
        "unknown_organ": (unknown_organ, "unknown organ 'liver'"),
        "missing_organ": (missing_organ, "no prompts for organ 'breast_lesion'"),
        "empty_target": (empty_target, r"lymph_node\.target: empty text"),
        "empty_class": (empty_class, r"thyroid_nodule\.malignant: no descriptions"),
        "unknown_class": (unknown_class, "unknown class 'indeterminate'"),
        "too_long": (too_long, r"breast_lesion\.benign\[1\]: \d+ CLIP tokens, more than the limit of 77"),
        "duplicate": (duplicate, r"breast_lesion\.malignant\[5\]: duplicates breast_lesion\.benign\[0\]"),
        "wrong_format": (wrong_format, "format is 'something-else'"),
        "no_name": (no_name, "missing or empty 'name'"),
    }


@pytest.mark.parametrize("case", list(_mutations()))
def test_invalid_bank_file_is_rejected_with_a_clear_message(case, tmp_path, bank_data):
    mutate, message = _mutations()[case]
    mutate(bank_data)
    path = tmp_path / "bank.json"
    path.write_text(json.dumps(bank_data))
    with pytest.raises(SonoInputError, match=message) as info:
        load_prompt_bank(path)
    assert str(path) in str(info.value)


def test_missing_file_and_bad_json(tmp_path):
    with pytest.raises(SonoInputError, match="no such prompt bank"):
        load_prompt_bank(tmp_path / "missing.json")
    with pytest.raises(SonoInputError, match="no such prompt bank"):
        load_prompt_bank("no_such_packaged_bank")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SonoInputError, match="cannot read prompt bank"):
        load_prompt_bank(bad)


def test_mentions_organ_matches_whole_words():
    assert mentions_organ("A round node without hilum", "lymph_node")
    assert mentions_organ("Breast: irregular mass", "breast_lesion")
    assert mentions_organ("taller-than-wide NODULE", "thyroid_nodule")
    assert not mentions_organ("nodular goitre", "thyroid_nodule")
    assert not mentions_organ("an irregular hypoechoic area", "breast_lesion")
    assert not mentions_organ("thyroid nodule", "lymph_node")
