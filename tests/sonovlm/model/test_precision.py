"""Reduced-precision inference (issue 17 item 1): choosing, applying, float32 results, adapters kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sonovlm.errors import SonoInputError
from sonovlm.model import Predictor, load_model
from sonovlm.model import precision as precision_module
from sonovlm.model.adapters import adapter_parameters
from sonovlm.model.precision import (
    CpuSupport,
    Precision,
    apply_precision,
    autocast,
    backbone_linears,
    bf16_linears,
    parse_precision,
    quantized_linears,
    resolve_precision,
)


def _image():
    from sonovlm.io import UltrasoundImage

    rng = np.random.default_rng(0)
    frame = rng.rayleigh(60.0, size=(96, 128)).clip(0, 255).astype(np.uint8)
    rows, cols = np.ogrid[:96, :128]
    frame[(rows - 48) ** 2 / 300 + (cols - 60) ** 2 / 500 < 1] //= 4
    return UltrasoundImage(frames=frame[None], source="<precision-test>")


def _perturbed(adapter: str, seed: int = 0):
    """A tiny model whose adapter is not the identity (as after training)."""
    model = load_model(backbone="tiny", adapter=adapter)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in adapter_parameters(model.clip):
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model


@pytest.mark.parametrize(
    "value, expected",
    [
        ("auto", "auto"),
        (" FP32 ", "fp32"),
        ("bf16", "bf16"),
        ("bfloat16", "bf16"),
        ("int8", "int8"),
        ("", "auto"),
    ],
)
def test_parse(value, expected):
    assert parse_precision(value) == expected


def test_a_bad_value_names_the_conf_key():
    with pytest.raises(SonoInputError) as caught:
        parse_precision("fp16")
    assert caught.value.source == "--conf precision" and "auto, fp32, bf16, int8" in caught.value.problem
    with pytest.raises(SonoInputError, match="--conf precision"):
        Predictor(load_model(backbone="tiny", adapter="none"), precision="half")


@pytest.mark.parametrize(
    "flags, engine, expected",
    [
        (("amx_bf16",), "x86", "bf16"),
        (("avx512_bf16",), None, "bf16"),
        ((), "x86", "int8"),
        ((), None, "fp32"),
    ],
)
def test_auto_on_cpu(monkeypatch, flags, engine, expected):
    monkeypatch.setattr(precision_module, "cpu_support", lambda: CpuSupport(flags, "AVX512", engine))
    choice = resolve_precision("auto", "cpu")
    assert (choice.requested, choice.resolved) == ("auto", expected)
    assert (flags[0] if flags else "no amx_bf16") in choice.reason


def test_explicit_choices_and_their_limits(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_support", lambda: CpuSupport((), "AVX2", None))
    assert "emulated" in resolve_precision("bf16", "cpu").reason  # honoured, with a warning in words
    with pytest.raises(SonoInputError, match="quantised CPU engine"):
        resolve_precision("int8", "cpu")
    with pytest.raises(SonoInputError, match="CPU only"):
        resolve_precision("int8", "cuda")
    assert resolve_precision("fp32", "cpu").resolved == "fp32"


def test_cpuinfo_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile\n")
    assert {"avx512_bf16", "avx512f"} <= precision_module._cpuinfo_flags(info)
    assert precision_module._cpuinfo_flags(tmp_path / "absent") == set()
    support = precision_module.cpu_support()  # this machine: whatever it has, the fields are there
    assert isinstance(support.capability, str) and set(support.flags) <= {"amx_bf16", "avx512_bf16"}


@pytest.mark.parametrize("precision", ["bf16", "int8"])
@pytest.mark.parametrize("adapter", ["mona", "lora"])
def test_results_stay_float32_and_close_to_fp32(precision, adapter):
    image = _image()
    reference = Predictor(_perturbed(adapter), precision="fp32")
    reduced = Predictor(_perturbed(adapter), precision=precision)
    assert reduced.precision_info()["resolved"] == precision
    expected, got = reference.segment(image, "lymph_node"), reduced.segment(image, "lymph_node")
    assert got.probability.dtype == np.float32 and got.mask.dtype == np.uint8
    assert np.abs(got.probability - expected.probability).max() < 0.05
    features = reduced.features(image)
    assert all(level.dtype == torch.float32 for level in features.vision.levels)
    assert reduced.embedding(image).dtype == np.float32
    benign = reduced.classify(image, "lymph_node").probabilities["benign"]
    assert abs(benign - reference.classify(image, "lymph_node").probabilities["benign"]) < 0.05
    assert isinstance(reduced.uncertainty(image, "lymph_node", samples=2), float)


def test_int8_quantises_only_the_frozen_backbone_lora():
    model = _perturbed("lora")
    version = model.version
    targets = backbone_linears(model)
    assert any(name.endswith("q_proj.base_layer") for name in targets)
    assert not any("lora_" in name for name in targets)
    model.merge_adapter()  # a merged LoRA is unmerged: its factors stay float32 beside the int8 base
    predictor = Predictor(model, precision="int8")
    quantized = quantized_linears(model.clip.vision_model)
    assert sorted(quantized) == sorted(targets) and predictor.precision_info()["backbone_layers"] == len(
        targets
    )
    assert not model.adapter_merged
    assert model.version == version  # the trainable state (LoRA A/B, heads) is untouched
    lora_a = model.clip.vision_model.encoder.layers[0].self_attn.q_proj.lora_A["default"]
    assert type(lora_a) is torch.nn.Linear and lora_a.weight.dtype == torch.float32
    assert not any("text_model" in name for name in quantized_linears(model.clip))  # text tower float32

    # A newly trained checkpoint still loads into the quantised model (the in-place publish path).
    image = _image()
    before = predictor.segment(image, "lymph_node").probability
    state = _perturbed("lora", seed=5).trainable_state_dict()
    model.load_trainable_state_dict(state)
    after = Predictor(model, precision=predictor.precision).segment(image, "lymph_node").probability
    assert not np.allclose(before, after)


def test_int8_keeps_mona_float32_and_is_idempotent():
    model = _perturbed("mona")
    Predictor(model, precision="int8")
    count = len(quantized_linears(model.clip.vision_model))
    assert count == 4 * 6  # q, k, v, out, fc1, fc2 of each of the 4 blocks
    assert all(".mona." not in name for name in quantized_linears(model.clip.vision_model))
    assert all(p.dtype == torch.float32 for p in adapter_parameters(model.clip))
    again = Predictor(model, precision="int8")  # the same model served again (a publish in place)
    assert again.precision_info()["backbone_layers"] == count
    with pytest.raises(SonoInputError, match="already int8"):
        apply_precision(model, Precision("fp32", "fp32", "test"))


@pytest.mark.parametrize("adapter", ["lora", "mona"])
def test_bf16_stores_the_frozen_linears_in_bf16_with_autocast_s_results(adapter):
    """Casting the frozen weights once gives what autocast's per-forward cast gives."""
    model = _perturbed(adapter)
    version = model.version
    predictor = Predictor(model, precision="bf16")
    targets = bf16_linears(model.clip.vision_model)
    assert predictor.precision_info()["backbone_layers"] == len(targets) == 24
    assert all(p.dtype == torch.float32 for p in adapter_parameters(model.clip))
    assert all(p.dtype == torch.float32 for p in model.seg_head.parameters())
    assert model.version == version and not bf16_linears(model.clip.text_model)

    reference = _perturbed(adapter)  # float32 weights, cast by autocast on each forward
    pixels = torch.rand(1, 3, 64, 64)
    with torch.inference_mode(), autocast(predictor.precision, "cpu"):
        expected = reference.segment_logits(reference.encode_image(pixels), reference.organ_text[0])
        got = model.segment_logits(model.encode_image(pixels), model.organ_text[0])
    torch.testing.assert_close(got.float(), expected.float(), rtol=0, atol=1e-6)
    with pytest.raises(SonoInputError, match="already bf16"):
        Predictor(model, precision="int8")
