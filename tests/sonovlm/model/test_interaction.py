"""Interaction prompts: model-space maps through the image geometry, the head's zero-initialised
fusion, old checkpoints, the byte-bounded feature cache, interactive segmentation and propagation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sonovlm.errors import ModelLoadError, SonoInputError
from sonovlm.io import UltrasoundImage, UltrasoundRegion
from sonovlm.model import AdapterConfig, ModelConfig, Predictor, SonoVLM
from sonovlm.model.interaction import (
    BOX,
    NEGATIVE,
    POSITIVE,
    PREVIOUS_MASK,
    Interaction,
    encode_interaction,
    frame_to_model_point,
)
from sonovlm.model.preprocess import PreprocessConfig, frame_geometry, to_model_space
from sonovlm.model.results import FeatureCache, FrameFeatures, features_nbytes
from sonovlm.model.sonovlm_model import VisionFeatures

REGION = (100, 60, 540, 420)


def _image(frames: int = 3, seed: int = 0) -> UltrasoundImage:
    rng = np.random.default_rng(seed)
    pixels = np.zeros((frames, 480, 640), np.uint8)
    x0, y0, x1, y1 = REGION
    pixels[:, y0:y1, x0:x1] = rng.integers(20, 200, (frames, y1 - y0, x1 - x0))
    for index in range(frames):  # a dark lesion moving right by 4 px per frame
        pixels[index, 200:260, 250 + 4 * index : 330 + 4 * index] = 10
    return UltrasoundImage(
        frames=pixels, source="<memory>", regions=[UltrasoundRegion(REGION, (0.1, 0.1), data_type=1)]
    )


@pytest.fixture(scope="module")
def model() -> SonoVLM:
    return SonoVLM(ModelConfig(backbone="tiny", adapter=AdapterConfig(kind="none")))


@pytest.fixture(scope="module")
def geometry():
    return frame_geometry((480, 640), REGION, PreprocessConfig(image_size=64))


def _train_encoder_outputs(model: SonoVLM, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in (model.seg_head.interaction.fine_out, model.seg_head.interaction.coarse_out):
            layer.weight.normal_(std=0.5, generator=generator)


# ------------------------------------------------------------------------------------ prompt maps
def test_click_lands_where_the_image_geometry_puts_that_pixel(geometry):
    x, y = 321, 233
    maps = encode_interaction(Interaction(positive=[(x, y)], negative=[(150, 100)]), geometry)
    assert maps.shape == (4, 64, 64) and maps.dtype == torch.float32
    spot = np.zeros((480, 640), np.float32)
    spot[y - 3 : y + 4, x - 3 : x + 4] = 1.0
    expected = np.unravel_index(int(to_model_space(spot, geometry).argmax()), (64, 64))
    peak = np.unravel_index(int(maps[POSITIVE].argmax()), (64, 64))
    assert abs(peak[0] - expected[0]) <= 1 and abs(peak[1] - expected[1]) <= 1
    assert 0.6 < float(maps[POSITIVE].max()) <= 1.0  # the click falls between model pixels
    mx, my = frame_to_model_point(150, 100, geometry)
    assert np.unravel_index(int(maps[NEGATIVE].argmax()), (64, 64)) == (round(my), round(mx))
    assert maps[BOX].abs().sum() == 0 and maps[PREVIOUS_MASK].abs().sum() == 0


def test_box_and_previous_mask_use_the_image_geometry(geometry):
    mask = np.zeros((480, 640), np.uint8)
    mask[200:260, 250:330] = 3
    maps = encode_interaction(Interaction(box=(240, 190, 340, 270), previous_mask=mask), geometry)
    rect = np.zeros((480, 640), np.float32)
    rect[190:270, 240:340] = 1
    torch.testing.assert_close(maps[BOX], to_model_space(rect, geometry))
    torch.testing.assert_close(maps[PREVIOUS_MASK], to_model_space((mask != 0).astype(np.float32), geometry))
    # Reversed or out-of-frame corners are clipped; the map stays inside the frame's region.
    clipped = encode_interaction(Interaction(box=(-50, -50, 200, 200)), geometry)[BOX]
    assert clipped.sum() > 0


@pytest.mark.parametrize(
    "interaction, message",
    [
        (Interaction(positive=[(640, 10)]), "outside the 480 x 640 image"),
        (Interaction(negative=[(-1, 10)]), "outside the 480 x 640 image"),
        (Interaction(positive=[(20, 20)]), "outside the ultrasound region"),
        (Interaction(box=(300, 200, 300, 260)), "covers less than"),
        (Interaction(box=(700, 500, 800, 600)), "covers less than"),
        (Interaction(previous_mask=np.ones((240, 320), np.uint8)), r"previous mask is \(240, 320\)"),
    ],
)
def test_bad_prompts_are_input_errors(geometry, interaction, message):
    with pytest.raises(SonoInputError, match=message):
        encode_interaction(interaction, geometry)


# ------------------------------------------------------------------------------------------ head
def test_without_interaction_the_head_is_unchanged(model, geometry):
    head = model.seg_head
    torch.manual_seed(0)
    levels = [torch.randn(2, 1 + head.grid**2, 32) for _ in model.levels]
    text = model.organ_text[:2]
    maps = torch.stack([encode_interaction(Interaction(positive=[(300, 230)]), geometry)] * 2)
    assert not head.interaction.is_trained
    with torch.no_grad():
        plain = head(levels, text)
        torch.testing.assert_close(head(levels, text, None), plain, rtol=0, atol=0)
        # Zero-initialised fusion: prompts have no effect until trained.
        torch.testing.assert_close(head(levels, text, maps), plain, rtol=0, atol=0)


def test_trained_interaction_changes_the_output_and_checkpoints_round_trip(geometry):
    model = SonoVLM(ModelConfig(backbone="tiny", adapter=AdapterConfig(kind="none")))
    _train_encoder_outputs(model)
    assert model.seg_head.interaction.is_trained
    torch.manual_seed(0)
    levels = [torch.randn(1, 1 + model.seg_head.grid**2, 32) for _ in model.levels]
    features = VisionFeatures(levels=levels, embedding=torch.zeros(1, 32))
    maps = encode_interaction(Interaction(positive=[(300, 230)]), geometry).unsqueeze(0)
    with torch.no_grad():
        assert not torch.allclose(
            model.segment_logits(features, model.organ_text[0], maps),
            model.segment_logits(features, model.organ_text[0]),
        )
    state = model.trainable_state_dict()
    assert any(k.startswith("seg_head.interaction.") for k in state)
    fresh = SonoVLM(ModelConfig(backbone="tiny", adapter=AdapterConfig(kind="none")))
    fresh.load_trainable_state_dict(state)
    assert fresh.state_hash() == model.state_hash()


def test_checkpoint_saved_before_interaction_existed_still_loads():
    source = SonoVLM(ModelConfig(backbone="tiny", adapter=AdapterConfig(kind="none")))
    with torch.no_grad():
        source.seg_head.classifier.bias.fill_(0.25)
    old_state = {k: v for k, v in source.trainable_state_dict().items() if ".interaction." not in k}
    target = SonoVLM(ModelConfig(backbone="tiny", adapter=AdapterConfig(kind="none")))
    _train_encoder_outputs(target)  # whatever it held, an old checkpoint leaves prompts without effect
    target.load_trainable_state_dict(old_state)
    assert torch.all(target.seg_head.classifier.bias == 0.25)
    assert not target.seg_head.interaction.is_trained
    partial = {**old_state, "seg_head.interaction.fine_out.bias": torch.zeros(16)}
    with pytest.raises(ModelLoadError, match="missing"):
        target.load_trainable_state_dict(partial)


# ------------------------------------------------------------------------------------ feature cache
def _features(nbytes_per_level: int) -> FrameFeatures:
    level = torch.zeros(nbytes_per_level // 4)
    geometry = frame_geometry((8, 8), None, PreprocessConfig(image_size=8))
    return FrameFeatures(VisionFeatures(levels=[level], embedding=torch.zeros(0)), geometry, 0)


def test_feature_cache_counts_hits_misses_and_evicts_by_bytes():
    cache = FeatureCache(max_bytes=1000, max_items=10)
    a, b, c = _features(400), _features(400), _features(400)
    assert features_nbytes(a) == 400
    assert cache.get(("a",)) is None
    cache.put(("a",), a)
    cache.put(("b",), b)
    assert cache.get(("a",)) is a  # a is now the most recently used
    cache.put(("c",), c)  # 1200 bytes > 1000: the least recently used (b) goes
    assert ("b",) not in cache and ("a",) in cache and ("c",) in cache
    assert cache.stats() == {
        "entries": 2,
        "bytes": 800,
        "max_bytes": 1000,
        "hits": 1,
        "misses": 1,
        "evictions": 1,
    }
    cache.put(("huge",), _features(4000))  # larger than the budget: not kept, nothing evicted
    assert ("huge",) not in cache and len(cache) == 2
    small = FeatureCache(max_bytes=10_000, max_items=1)
    small.put(("a",), a)
    small.put(("b",), b)
    assert len(small) == 1 and ("b",) in small


def test_predictor_reuses_features_per_click_and_drops_them_for_a_new_version(monkeypatch):
    model = SonoVLM(ModelConfig(backbone="tiny", adapter=AdapterConfig(kind="none")))
    predictor = Predictor(model, feature_cache_bytes=10 * 1024 * 1024)
    calls = []
    original = model.encode_image
    monkeypatch.setattr(model, "encode_image", lambda pv: calls.append(1) or original(pv))
    image = _image()
    plain = predictor.segment(image, "lymph_node", frame=1)
    for click in range(3):
        result = predictor.segment_interactive(
            image, "lymph_node", Interaction(positive=[(290 + click, 230)]), frame=1
        )
        # Untrained interaction encoder: exactly the automatic result.
        np.testing.assert_array_equal(result.probability, plain.probability)
    assert len(calls) == 1
    stats = predictor.cache_stats()
    assert stats["hits"] == 3 and stats["misses"] == 1 and stats["entries"] == 1 and stats["bytes"] > 0
    model.config.version = "v-new"  # weights of another version loaded in place
    predictor.segment(image, "lymph_node", frame=1)
    assert len(calls) == 2 and predictor.model_version == "v-new"
    assert predictor.cache_stats()["entries"] == 1


# ------------------------------------------------------------------------------------- propagation
def test_propagation_gives_one_mask_per_frame_in_frame_geometry():
    model = SonoVLM(ModelConfig(backbone="tiny", adapter=AdapterConfig(kind="none")))
    _train_encoder_outputs(model)
    predictor = Predictor(model)
    image = _image(frames=5)
    seed_mask = np.zeros((480, 640), np.uint8)
    seed_mask[200:260, 258:338] = 1
    results = predictor.propagate(image, "thyroid_nodule", 2, Interaction(previous_mask=seed_mask))
    assert [r.frame for r in results] == [0, 1, 2, 3, 4]
    for result in results:
        assert result.mask.shape == (480, 640) and result.mask.dtype == np.uint8
        assert set(np.unique(result.mask)) <= {0, 3}
        assert 0.0 <= result.confidence <= 1.0
    np.testing.assert_array_equal(results[2].mask, seed_mask * 3)
    assert results[2].confidence == 1.0
    # A range, seeded by a click instead of a mask.
    clicked = predictor.propagate(image, "thyroid_nodule", 1, Interaction(positive=[(290, 230)]), 1, 3)
    assert [r.frame for r in clicked] == [1, 2, 3]
    with pytest.raises(SonoInputError, match="does not contain the seed frame"):
        predictor.propagate(image, "thyroid_nodule", 4, Interaction(previous_mask=seed_mask), 0, 2)
    # An empty seed: the automatic segmentation of the seed frame starts the propagation.
    automatic = predictor.propagate(image, "thyroid_nodule", 2, Interaction(), 2, 3)
    np.testing.assert_array_equal(automatic[0].mask, predictor.segment(image, "thyroid_nodule", frame=2).mask)
    with pytest.raises(SonoInputError, match="previous mask"):
        predictor.propagate(image, "thyroid_nodule", 2, Interaction(previous_mask=seed_mask[:100]))
