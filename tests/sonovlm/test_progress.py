"""Progress bars on long work (issue 15 item 6): shown when forced or on a terminal, hidden in pipes."""

from __future__ import annotations

import pytest
from sonovlm.errors import SonoInputError
from sonovlm.progress import PROGRESS_ENV, bars_enabled, cache_progress, progress
from sonovlm.sample_data import write_sample_studies


def test_forced_on_the_bar_reaches_stderr_with_its_label(monkeypatch, capsys):
    monkeypatch.setenv(PROGRESS_ENV, "1")
    assert list(progress(range(3), "duplicate hashing", unit="image")) == [0, 1, 2]
    err = capsys.readouterr().err
    assert "duplicate hashing" in err and "3/3" in err


def test_off_and_auto(monkeypatch, capsys):
    monkeypatch.setenv(PROGRESS_ENV, "0")
    assert list(progress(range(2), "x")) == [0, 1] and capsys.readouterr().err == ""
    assert cache_progress() is False
    monkeypatch.delenv(PROGRESS_ENV)
    assert bars_enabled() is None  # tqdm decides: a terminal shows bars, a pipe (pytest) does not
    list(progress(range(2), "x"))
    assert capsys.readouterr().err == ""


def test_a_bad_value_names_the_variable(monkeypatch):
    monkeypatch.setenv(PROGRESS_ENV, "sometimes")
    with pytest.raises(SonoInputError, match=PROGRESS_ENV):
        bars_enabled()


def test_sample_data_generation_shows_progress(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv(PROGRESS_ENV, "true")
    write_sample_studies(tmp_path / "studies", count=2, seed=0)
    assert "sample studies" in capsys.readouterr().err
