"""The training loop's rules: early stopping, precision choice, schedule; distances in mm for DICOM."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sonovlm.errors import SonoInputError

from training.distributed import DistInfo
from training.engine import BEST_CHECKPOINT, Trainer, TrainSettings, autocast_dtype, cosine_factor
from training.stages.segmentation import SegmentationStage


class ScriptedStage(SegmentationStage):
    """Segmentation loss, but validation Dice read from a script (to drive early stopping)."""

    def __init__(self, values):
        super().__init__()
        self.values = list(values)

    def validate(self, model, loader, info):
        return {"dice": self.values.pop(0), "loss": 0.0}


def _batch(size: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    return {
        "pixel_values": torch.randn(2, 3, size, size, generator=generator),
        "mask": (torch.rand(2, 1, size, size, generator=generator) > 0.5).float(),
        "organ_id": torch.tensor([0, 2]),
    }


def test_early_stopping_keeps_the_best_epoch(tmp_path):
    from sonovlm.model import AdapterConfig, ModelConfig, SonoVLM

    model = SonoVLM(ModelConfig(backbone="tiny", adapter=AdapterConfig(kind="lora")))
    stage = ScriptedStage([0.2, 0.5, 0.4, 0.45, 0.3, 0.9])
    stage.configure(model)
    info = DistInfo(0, 1, 0, torch.device("cpu"), None)
    batch = _batch(model.preprocess_config.image_size)
    settings = TrainSettings(epochs=6, batch_size=2, patience=2, lr=1e-3)
    trainer = Trainer(model, stage, settings, info, tmp_path, lambda epoch: [batch], 1, [])
    summary = trainer.fit()
    assert summary["best_epoch"] == 2 and summary["best_val_dice"] == 0.5
    assert summary["epochs_run"] == 4 and summary["stopped_early"]  # epochs 3 and 4 did not improve
    assert [h["best"] for h in trainer.history] == [True, True, False, False]
    assert (tmp_path / BEST_CHECKPOINT).is_file()
    assert json.loads((tmp_path / "history.json").read_text())[-1]["epoch"] == 4
    lrs = [h["lr"] for h in trainer.history]
    assert lrs[0] == pytest.approx(1e-3) and all(a > b for a, b in zip(lrs, lrs[1:], strict=False))


def test_frozen_parts_do_not_change(tmp_path):
    from sonovlm.model import AdapterConfig, ModelConfig, SonoVLM

    model = SonoVLM(ModelConfig(backbone="tiny", adapter=AdapterConfig(kind="mona")))
    stage = ScriptedStage([0.1])
    stage.configure(model)
    frozen = {k: v.clone() for k, v in model.clip.text_model.state_dict().items()}
    cls_head = {k: v.clone() for k, v in model.cls_head.state_dict().items()}
    seg_head = {k: v.clone() for k, v in model.seg_head.state_dict().items()}
    info = DistInfo(0, 1, 0, torch.device("cpu"), None)
    batch = _batch(model.preprocess_config.image_size)
    Trainer(model, stage, TrainSettings(epochs=1, lr=1e-2), info, tmp_path, lambda e: [batch], 1, []).fit()
    assert all(torch.equal(frozen[k], v) for k, v in model.clip.text_model.state_dict().items())
    assert all(torch.equal(cls_head[k], v) for k, v in model.cls_head.state_dict().items())
    assert any(not torch.equal(seg_head[k], v) for k, v in model.seg_head.state_dict().items())


def test_precision_and_schedule(monkeypatch):
    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("bf16", torch.device("cpu")) is None  # CPU trains in full precision
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype("auto", torch.device("cuda", 0)) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype("auto", torch.device("cuda", 0)) == torch.bfloat16
    assert autocast_dtype("fp32", torch.device("cuda", 0)) is None
    factor = cosine_factor(10)
    assert (factor(0), factor(5), factor(10), factor(12)) == (
        1.0,
        pytest.approx(0.5),
        pytest.approx(0.0),
        factor(10),
    )
    with pytest.raises(SonoInputError):
        TrainSettings(precision="int8")
    with pytest.raises(SonoInputError):
        TrainSettings(epochs=0)


def test_dicom_images_give_distances_in_mm(tmp_path: Path):
    """Calibrated DICOM images in the layout (PNG masks beside them): HD95/ASD in millimetres."""
    from tests.dicom_factory import RegionSpec, bmode_frame, us_dataset, write_dataset
    from training.cli import main
    from training.data.layout import LayoutWriter

    root = tmp_path / "data"
    writer = LayoutWriter(root)
    names = []
    for i in range(5):
        frame = bmode_frame(96, 128, seed=i, text=False)
        region = RegionSpec(bbox_inclusive=(0, 0, 127, 95), spacing_mm=(0.2, 0.2))
        name = f"dcm_{i}.dcm"
        write_dataset(us_dataset(frame, regions=[region]), root / "all" / "images" / name)
        mask = np.zeros((96, 128), np.uint8)
        mask[30:60, 40:90] = 1
        writer.write_mask(f"dcm_{i}.png", mask)
        names.append(name)
    for split, members in (("train", names[:3]), ("val", names[3:4]), ("test", names[4:])):
        writer.write_split("segmentation", "LN-INT", split, members)
    out = tmp_path / "run"
    args = ["segmentation", "--data-root", str(root), "--dataset", "LN-INT", "--backbone", "tiny"]
    assert main([*args, "--epochs", "1", "--batch-size", "2", "--bootstrap", "10", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["distance_unit"] == "mm"
    case = metrics["per_case"][0]
    assert case["hd95_mm"] == pytest.approx(case["hd95_px"] * 0.2, rel=1e-4)
    assert "(mm)" in (out / "results.md").read_text()
