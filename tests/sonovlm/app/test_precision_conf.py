"""``--conf precision`` (issue 17 item 1): checked when parsed, applied to the served model, reported
in ``/info``'s model info and in every reply, kept when a checkpoint is published in place."""

from __future__ import annotations

import pytest
import torch
from sonovlm.app.config import AppConfig
from sonovlm.app.frames import ImageCache
from sonovlm.app.infer import ClassificationTask, SegmentationTask
from sonovlm.app.model_store import ModelStore
from sonovlm.app.registry import ModelRegistry
from sonovlm.errors import SonoInputError
from sonovlm.model import load_model, save_checkpoint
from sonovlm.model import precision as precision_module
from sonovlm.model.adapters import adapter_parameters
from sonovlm.model.precision import CpuSupport

from tests.dicom_factory import RegionSpec, bmode_frame, us_dataset, write_dataset


def _registry(tmp_path, **conf):
    config = AppConfig.from_conf({"backbone": "tiny", "model_dir": str(tmp_path / "model"), **conf}, tmp_path)
    registry = ModelRegistry(config, ModelStore(config.model_dir), ImageCache(), watch_interval_s=0)
    registry.start()
    return config, registry


def _lora_variant(seed: int):
    model = load_model(backbone="tiny", adapter="lora")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in [*adapter_parameters(model.clip), *model.seg_head.parameters()]:
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model


def test_conf_values_are_checked(tmp_path):
    assert AppConfig.from_conf({}, tmp_path).precision == "auto"
    assert AppConfig.from_conf({"precision": " INT8 "}, tmp_path).precision == "int8"
    with pytest.raises(SonoInputError) as caught:
        AppConfig.from_conf({"precision": "fp16"}, tmp_path)
    assert caught.value.source == "--conf precision" and "auto, fp32, bf16, int8" in str(caught.value)


def test_auto_is_resolved_and_reported_with_its_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_support", lambda: CpuSupport((), "AVX2", "x86"))
    _, registry = _registry(tmp_path)
    info = registry.info()["precision"]
    assert (info["requested"], info["resolved"]) == ("auto", "int8") and "no amx_bf16" in info["reason"]
    assert info["backbone_layers"] == 24


@pytest.mark.parametrize("precision", ["int8", "bf16"])
def test_reduced_precision_is_served_reported_in_replies_and_kept_on_publish(tmp_path, precision):
    _, registry = _registry(tmp_path, precision=precision, adapter="lora")
    assert registry.info()["precision"]["resolved"] == precision
    served = registry.predictor.model

    # Published in place: the LoRA factors load into the quantised model, precision is kept.
    entry = registry.store.publish(lambda p: save_checkpoint(_lora_variant(3), p), source="test")
    assert registry.refresh() is True and registry.model_version == entry.version
    assert registry.predictor.model is served and registry.info()["precision"]["resolved"] == precision

    region = RegionSpec((0, 0, 127, 95), (0.2, 0.2))
    ds = us_dataset(bmode_frame(96, 128, seed=2, text=False), regions=[region])
    image = str(write_dataset(ds, tmp_path / "frame.dcm"))
    for task in (SegmentationTask(registry, lambda _: None), ClassificationTask(registry, lambda _: None)):
        data = task.run_inferer(task._load_frame({"image": image, "organ": "thyroid_nodule"}))
        _, reply = task.writer(data)
        assert reply["model_version"] == entry.version
        assert reply["precision"] == registry.info()["precision"]
        assert reply["precision"]["requested"] == precision
