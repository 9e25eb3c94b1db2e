"""The stock plugin's click path, in process (issue 17 item 0): per-stage ``latency_ms`` in the
reply, and a second click on the same JPEG 2000 DICOM of the studies folder decodes nothing
again (image cache, feature cache, imaging-area estimate, header read). Counts, not timings."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless
from sonovlm.app import infer as infer_module
from sonovlm.app.config import AppConfig
from sonovlm.app.frames import ImageCache
from sonovlm.app.infer import SegmentationTask
from sonovlm.app.interactive import InteractiveTask
from sonovlm.app.latency import STAGES, StageClock
from sonovlm.app.model_store import ModelStore
from sonovlm.app.registry import ModelRegistry
from sonovlm.app.results import ResultLog
from sonovlm.io import load_image
from sonovlm.io import types as io_types

from tests.dicom_factory import bmode_frame, us_dataset, write_dataset

#: What the stock plugin posts as the ``params`` form field for one click (no organ: ``auto``).
STOCK_CLICK = {"foreground": [[320, 260, 0]], "background": [[300, 200, 0]], "result_extension": ".nrrd"}
REPLY_STAGES = {*STAGES, "other", "total"}


@pytest.fixture
def studies(tmp_path):
    """A studies folder with one 640 x 480 JPEG 2000 US DICOM without ultrasound regions (as many
    real ones: the imaging area is estimated from the pixels)."""
    folder = tmp_path / "studies"
    folder.mkdir()
    ds = us_dataset(bmode_frame(480, 640), transfer_syntax=JPEG2000Lossless)
    path = write_dataset(ds, folder / "node.dcm")
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert not load_image(path).regions
    return folder


@pytest.fixture
def counted(studies, tmp_path, monkeypatch):
    """An interactive and a segmentation task over an image cache whose decodes are counted."""
    decodes: list[str] = []

    def loader(path: str):
        decodes.append(path)
        return load_image(path)

    estimates: list[int] = []
    estimate = io_types.estimate_imaging_bbox
    monkeypatch.setattr(io_types, "estimate_imaging_bbox", lambda grey: estimates.append(1) or estimate(grey))
    headers: list[str] = []
    read_spacing = infer_module._dicom_pixel_spacing
    monkeypatch.setattr(infer_module, "_dicom_pixel_spacing", lambda p: headers.append(p) or read_spacing(p))
    infer_module._DICOM_SPACING.clear()

    config = AppConfig.from_conf({"backbone": "tiny", "model_dir": str(tmp_path / "model")}, tmp_path)
    cache = ImageCache(loader=loader, cache_under=studies)
    registry = ModelRegistry(config, ModelStore(config.model_dir), cache, watch_interval_s=0)
    registry.start()
    results = ResultLog(tmp_path / "results", deferred=True)
    tasks = {
        "interactive": InteractiveTask(registry, lambda image_id: None, results.record),
        "segmentation": SegmentationTask(registry, lambda image_id: None, results.record),
    }
    return tasks, registry, decodes, estimates, headers, results


def test_a_second_click_decodes_nothing_again_and_replies_with_its_stages(studies, counted):
    tasks, registry, decodes, estimates, headers, _ = counted
    image = str(studies / "node.dcm")
    request = {"image": image, "image_id": "node", **STOCK_CLICK}

    _, first = tasks["interactive"](dict(request))
    assert set(first["latency_ms"]) == REPLY_STAGES
    assert first["cache"] == {"image": "miss", "features": "miss"}
    assert first["latency_ms"]["encode"] > 0 and first["latency_ms"]["decode"] > 0
    assert len(decodes) == 1 and len(estimates) == 1 and len(headers) == 1

    _, second = tasks["interactive"]({**request, "foreground": [[330, 270, 0]]})
    assert len(decodes) == 1, "the DICOM was decoded again"
    assert len(estimates) == 1, "the imaging area was estimated again"
    assert len(headers) == 1, "the DICOM header was read again"
    assert second["cache"] == {"image": "hit", "features": "hit"}
    stages = second["latency_ms"]
    assert set(stages) == REPLY_STAGES
    assert stages["preprocess"] == 0 and stages["encode"] == 0  # features cached
    assert all(value >= 0 for value in stages.values())
    assert stages["decode_mask"] > 0 and stages["write"] > 0
    # The parts add up to the total (each rounded to 0.01 ms).
    assert sum(v for k, v in stages.items() if k != "total") == pytest.approx(stages["total"], abs=0.2)
    assert second["measurements"] is not None or second["lesion_pixels"] == 0
    assert registry.images.stats()["misses"] == 1

    # The auto-segmentation of the same image reuses all of it too.
    _, auto = tasks["segmentation"]({"image": image, "image_id": "node", "result_extension": ".nrrd"})
    assert auto["cache"] == {"image": "hit", "features": "hit"} and set(auto["latency_ms"]) == REPLY_STAGES
    assert len(decodes) == 1 and len(estimates) == 1 and len(headers) == 1


def test_measure_false_skips_the_measure_stage(studies, counted):
    tasks = counted[0]
    request = {"image": str(studies / "node.dcm"), **STOCK_CLICK, "measure": False}
    _, reply = tasks["interactive"](request)
    assert reply["measurements"] is None and reply["latency_ms"]["measure"] == 0


def test_a_replaced_file_is_decoded_and_its_header_read_again(studies, counted):
    tasks, _, decodes, _, headers, _ = counted
    path = studies / "node.dcm"
    request = {"image": str(path), **STOCK_CLICK}
    tasks["interactive"](dict(request))
    ds = us_dataset(bmode_frame(480, 640, seed=1), transfer_syntax=JPEG2000Lossless)
    write_dataset(ds, studies / "new.dcm").replace(path)
    _, reply = tasks["interactive"](dict(request))
    assert len(decodes) == 2 and len(headers) == 2 and reply["cache"]["image"] == "miss"


def test_results_are_recorded_off_the_request_and_seen_at_once(studies, counted, tmp_path):
    tasks, _, _, _, _, results = counted
    tasks["interactive"]({"image": str(studies / "node.dcm"), "image_id": "node", **STOCK_CLICK})
    assert results.latest("node")["segmentation"]["frame"] == 0  # pending or written: seen
    assert results.flush(timeout=30)
    # On disk for another process (``sonovlm report``).
    assert ResultLog(tmp_path / "results").latest("node")["segmentation"]["frame"] == 0


def test_the_clock_survives_monai_labels_deep_copy():
    import copy

    clock = StageClock()
    request = copy.deepcopy({"sono_clock": clock})
    request["sono_clock"].add("decode", 1.5)
    assert clock.reply(2.0) == {**{s: 0.0 for s in STAGES}, "decode": 1.5, "other": 0.5, "total": 2.0}
    with pytest.raises(ValueError, match="unknown stage"):
        clock.add("network", 1.0)
