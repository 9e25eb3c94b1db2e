"""``python -m benchmarks.bench`` runs end to end (on ``tiny``; timings are never asserted)."""

from __future__ import annotations

import json

from benchmarks.bench import main

CASES = {"bare", "seg[none]", "seg[lora]", "seg[lora merged]", "seg[mona]", "seg[hybrid]"}


def test_bench_reports_every_forward(capsys):
    assert main(["--backbone", "tiny", "--repeats", "1", "--warmup", "0", "--threads", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["ms"]) == set(result["ratio"]) == set(result["flop_ratio"]) == CASES
    assert result["ratio"]["bare"] == 1.0 and result["untrained"] is True
    # Each segmentation forward does the bare tower's work and more; merging LoRA removes its matmuls.
    assert all(result["flop_ratio"][name] > 1.0 for name in CASES - {"bare"})
    assert result["flop_ratio"]["seg[lora merged]"] == result["flop_ratio"]["seg[none]"]
    assert result["flop_ratio"]["seg[lora]"] > result["flop_ratio"]["seg[lora merged]"]
