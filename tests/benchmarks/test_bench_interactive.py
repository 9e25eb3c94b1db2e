"""``benchmarks.bench_interactive``'s server part drives the stock plugin's path (issue 17 item 0):
MONAILabelClient.infer with form params, a background click, a JPEG 2000 DICOM without regions
from the datastore, a .nrrd mask; the replies' per-stage latencies; the tiny backbone, two clicks."""

from __future__ import annotations

import pytest

from benchmarks.bench_interactive import STAGES, stock_plugin_round_trip


@pytest.mark.parametrize("adapter", ["lora", "mona"])
def test_the_stock_plugin_row_drives_the_datastore_j2k_click_path(adapter):
    result = stock_plugin_round_trip(adapter, clicks=2, threads=1, backbone="tiny")
    assert result["adapter"] == adapter
    assert result["first_click_cache"] == {"image": "miss", "features": "miss"}
    assert result["later_click_cache"] == {"image": "hit", "features": "hit"}
    for key in ("later_click_stage_p50_ms", "extension_later_click_stage_p50_ms"):
        assert set(result[key]) == {*STAGES, "outside_task"}
    assert result["later_click_stage_p50_ms"]["encode"] == 0
    assert result["extension_later_click_stage_p50_ms"]["measure"] == 0
    assert result["later_click_p50_ms"] > 0 and result["lesion_pixels_last"] >= 0
