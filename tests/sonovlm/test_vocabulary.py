"""One source per vocabulary (issue 16 item 4): adapter kinds and the default adapter, the yes/no
reader, and ``sonovlm.app.config`` free of torch."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sonovlm.errors import SonoInputError
from sonovlm.vocabulary import ADAPTER_KINDS, DEFAULT_ADAPTER, check_adapter, env_flag, parse_bool


@pytest.mark.parametrize(
    ("text", "expected"), [("1", True), (" Yes ", True), ("ON", True), ("0", False), ("off", False)]
)
def test_parse_bool_reads_the_shared_words(text, expected):
    assert parse_bool(text, "--conf warmup") is expected
    assert parse_bool(expected, "x") is expected


def test_parse_bool_refuses_other_words_naming_the_input():
    with pytest.raises(SonoInputError, match="--conf warmup.*expected true or false, got 'maybe'"):
        parse_bool("maybe", "--conf warmup")
    with pytest.raises(SonoInputError, match="measure"):
        parse_bool("", "measure")
    assert parse_bool("", "measure", default=True) is True
    assert parse_bool(None, "measure", default=False) is False


def test_env_flag_takes_the_first_variable_set(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    assert env_flag("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not env_flag("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def test_check_adapter():
    assert check_adapter("mona") == "mona" and check_adapter(None) is None
    with pytest.raises(SonoInputError, match="--conf adapter.*lora, mona, hybrid, none"):
        check_adapter("prefix", "--conf adapter")


def test_every_entry_point_uses_the_one_list_and_default():
    from sonovlm.app import config as app_config
    from sonovlm.app import model_access
    from sonovlm.cli.main import build_parser
    from sonovlm.model import adapters

    from training.cli import build_parser as training_parser

    assert adapters.ADAPTER_KINDS is ADAPTER_KINDS and app_config.ADAPTER_KINDS is ADAPTER_KINDS
    assert model_access.DEFAULT_ADAPTER == DEFAULT_ADAPTER == "mona"
    for parser, argv in ((build_parser(), ["model-info"]), (training_parser(), ["segmentation"])):
        sub = next(a for a in parser._actions if a.dest == "command").choices[argv[0]]
        adapter = next(a for a in sub._actions if a.dest == "adapter")
        assert tuple(adapter.choices) == ADAPTER_KINDS
        assert DEFAULT_ADAPTER in adapter.help


def test_a_fresh_model_without_adapter_gets_the_default():
    from sonovlm.model import load_model

    assert load_model(backbone="tiny").config.adapter.kind == DEFAULT_ADAPTER


def test_app_config_imports_no_torch():
    code = (
        "import sys, sonovlm.app.config; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
