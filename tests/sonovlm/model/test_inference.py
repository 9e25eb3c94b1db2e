"""Predictor: segmentation, classification, embedding and uncertainty on one frame; feature cache."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sonovlm.errors import SonoInputError
from sonovlm.io import UltrasoundImage, UltrasoundRegion
from sonovlm.model import AdapterConfig, ModelConfig, Predictor, SonoVLM, load_model, save_checkpoint
from sonovlm.organs import ORGAN_LABELS

REGION = (100, 60, 540, 420)


def _image(frames: int = 3, seed: int = 0) -> UltrasoundImage:
    rng = np.random.default_rng(seed)
    pixels = np.zeros((frames, 480, 640), np.uint8)
    x0, y0, x1, y1 = REGION
    pixels[:, y0:y1, x0:x1] = rng.integers(20, 200, (frames, y1 - y0, x1 - x0))
    pixels[:, 200:260, 250:330] = 10  # a dark lesion
    return UltrasoundImage(
        frames=pixels, source="<memory>", regions=[UltrasoundRegion(REGION, (0.1, 0.1), data_type=1)]
    )


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    model = SonoVLM(ModelConfig(backbone="tiny", adapter=AdapterConfig(kind="lora")))
    # Make the untrained head say "lesion" somewhere and "background" elsewhere.
    with torch.no_grad():
        model.seg_head.classifier.bias.copy_(torch.tensor([0.0, 0.0]))
        model.seg_head.classifier.weight.normal_(std=2.0, generator=torch.Generator().manual_seed(3))
    return Predictor(model)


def _outside_region() -> np.ndarray:
    outside = np.ones((480, 640), bool)
    x0, y0, x1, y1 = REGION
    outside[y0:y1, x0:x1] = False
    return outside


@pytest.mark.parametrize("organ", list(ORGAN_LABELS))
def test_segment_gives_a_frame_sized_mask_with_the_organ_value(predictor, organ):
    result = predictor.segment(_image(), organ)
    assert result.mask.shape == (480, 640) and result.mask.dtype == np.uint8
    assert result.probability.shape == (480, 640) and result.probability.dtype == np.float32
    assert set(np.unique(result.mask)) <= {0, ORGAN_LABELS[organ]}
    assert result.mask.any() and not result.mask.all()
    assert not result.mask[_outside_region()].any()
    assert np.all(result.probability[_outside_region()] == 0)
    lesion = result.mask > 0
    assert result.confidence == pytest.approx(float(result.probability[lesion].mean()), rel=1e-6)
    assert result.frame == 1 and result.organ == organ and result.prompt is None


def test_backbone_runs_once_per_frame(predictor, monkeypatch):
    calls = []
    original = predictor.model.encode_image

    def counting(pixel_values):
        calls.append(pixel_values.shape)
        return original(pixel_values)

    monkeypatch.setattr(predictor.model, "encode_image", counting)
    image = _image(seed=5)
    predictor.segment(image, "lymph_node")
    predictor.segment(image, "thyroid_nodule", prompt="a hypoechoic thyroid nodule")
    predictor.classify(image, "thyroid_nodule")
    predictor.embedding(image)
    predictor.uncertainty(image, "breast_lesion", samples=2)
    assert len(calls) == 1
    predictor.segment(image, "lymph_node", frame=0)
    assert len(calls) == 2
    image.frames[0, 300, 300] += 1  # other pixels under the same source name: not the cached features
    predictor.segment(image, "lymph_node", frame=0)
    assert len(calls) == 3


def test_frame_and_organ_errors(predictor):
    image = _image(frames=3)
    with pytest.raises(SonoInputError, match="out of range"):
        predictor.segment(image, "lymph_node", frame=3)
    with pytest.raises(SonoInputError, match="unknown organ"):
        predictor.segment(image, "liver")
    with pytest.raises(SonoInputError, match="unknown organ"):
        predictor.classify(image, "liver")
    with pytest.raises(SonoInputError, match="unknown organ"):
        predictor.uncertainty(image, "liver")


def test_classify_is_zero_shot_before_training(predictor):
    image = _image()
    result = predictor.classify(image, "breast_lesion", frame=2)
    assert list(result.probabilities) == ["benign", "malignant"]
    assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-12)
    assert result.zero_shot_only is True
    assert result.prompts == predictor.model.prompt_bank.class_prompts("breast_lesion")
    assert result.frame == 2
    model = predictor.model
    embedding = torch.from_numpy(predictor.embedding(image, frame=2))
    logits = model.logit_scale() * embedding @ model.class_text[1].T
    assert result.probabilities["benign"] == pytest.approx(float(torch.softmax(logits, -1)[0]), abs=1e-5)


def test_embedding_is_unit_length(predictor):
    embedding = predictor.embedding(_image())
    assert embedding.shape == (32,) and embedding.dtype == np.float32
    assert np.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-5)


def test_uncertainty_is_an_entropy_and_restores_eval_mode(predictor):
    value = predictor.uncertainty(_image(), "thyroid_nodule", samples=6)
    assert 0.0 <= value <= math.log(2) + 1e-9
    assert not any(module.training for module in predictor.model.modules())
    with pytest.raises(SonoInputError):
        predictor.uncertainty(_image(), "thyroid_nodule", samples=0)


def test_uncertainty_samples_dropout(predictor):
    head = predictor.model.seg_head
    image = _image(seed=9)
    # Without dropout every sample is the same: the entropy is that of the single prediction.
    p = head.dropout.p
    head.dropout.p = 0.0
    try:
        deterministic = predictor.uncertainty(image, "lymph_node", samples=4)
    finally:
        head.dropout.p = p
    sampled = predictor.uncertainty(image, "lymph_node", samples=16)
    assert sampled != pytest.approx(deterministic, abs=1e-7)


def test_load_model_with_weights(tmp_path):
    model = SonoVLM(ModelConfig(backbone="tiny", adapter=AdapterConfig(kind="mona")))
    path = tmp_path / "model.safetensors"
    version = save_checkpoint(model, path)
    loaded = load_model(weights=path)
    assert loaded.version == version and loaded.backbone_info["name"] == "tiny"
    with pytest.raises(SonoInputError, match="does not match the checkpoint"):
        load_model(adapter="lora", weights=path)
    fresh = load_model(backbone="tiny", adapter="hybrid")
    assert fresh.config.adapter.kind == "hybrid" and fresh.version.startswith("init-")
