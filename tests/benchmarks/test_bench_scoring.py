"""``python -m benchmarks.bench_scoring`` runs end to end on ``tiny`` (timings are never asserted)."""

from __future__ import annotations

import json

import pytest

from benchmarks.bench_scoring import main

pytestmark = pytest.mark.slow


def test_bench_scoring_reports_both_parts(capsys):
    argv = ["--backbone", "tiny", "--count", "6", "--images", "4", "--batch", "2", "--repeats", "1"]
    argv += ["--clicks", "2", "--server-delay", "4", "--server-batches", "2", "--threads", "1", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    part = result["in_process"]
    assert part["images"] == 4 and part["batch"] == 2
    assert all(part["images_per_s"][name] > 0 for name in ("one_at_a_time", "batched"))
    [run] = result["server"]
    assert run["scoring_batch"] == 2 and run["pass_images"] == 6 and run["last_error"] is None
    assert run["click_idle"]["n"] == 4 and run["click_idle"]["p50_ms"] > 0
    assert run["click_during_scoring"]["n"] >= 0
