"""Predictor.score_batch (issue 17 item 3): batched active-learning scores equal one-at-a-time ones,
stay out of the feature cache, and pause between backbone blocks without leaking state."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from sonovlm.errors import ModelLoadError, SonoInputError
from sonovlm.io import UltrasoundImage, UltrasoundRegion
from sonovlm.model import AdapterConfig, ModelConfig, Predictor, SonoVLM
from sonovlm.model.inference import ImageScore, ScoringInput

ORGANS = ("thyroid_nodule", "breast_lesion", "lymph_node", "thyroid_nodule", "lymph_node")


def _image(seed: int, shape: tuple[int, int] = (480, 640), frames: int = 1) -> UltrasoundImage:
    rng = np.random.default_rng(seed)
    rows, cols = shape
    region = (cols // 8, rows // 10, cols - cols // 8, rows - rows // 10)
    x0, y0, x1, y1 = region
    pixels = np.zeros((frames, rows, cols), np.uint8)
    pixels[:, y0:y1, x0:x1] = rng.integers(20, 200, (frames, y1 - y0, x1 - x0))
    pixels[:, rows // 2 - 20 : rows // 2 + 20, cols // 2 - 30 : cols // 2 + 30] = 10
    return UltrasoundImage(
        frames=pixels, source=f"<memory {seed}>", regions=[UltrasoundRegion(region, (0.1, 0.1), data_type=1)]
    )


def _predictor(adapter: str = "mona", precision: str = "fp32") -> Predictor:
    model = SonoVLM(ModelConfig(backbone="tiny", adapter=AdapterConfig(kind=adapter)))
    with torch.no_grad():  # an untrained head is certain everywhere: make it say something
        generator = torch.Generator().manual_seed(3)
        model.seg_head.classifier.weight.normal_(std=2.0, generator=generator)
        for parameter in model.clip.vision_model.parameters():  # and a Mona that does something
            if parameter.requires_grad and parameter.abs().sum() == 0:
                parameter.normal_(std=0.02, generator=generator)
    return Predictor(model, precision=precision)


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return _predictor()


def _items():
    shapes = [(480, 640), (300, 400), (480, 640), (256, 256), (600, 500)]
    labelled = [False, True, False, False, True]
    frames = [1, 1, 3, 1, 1]  # a cine: its middle frame is scored
    return [
        (_image(i, shape, n), organ, flag)
        for i, (shape, organ, flag, n) in enumerate(zip(shapes, ORGANS, labelled, frames, strict=True))
    ]


def _one_at_a_time(predictor: Predictor, items, samples: int, seed: int):
    torch.manual_seed(seed)
    results = []
    for image, organ, labelled in items:
        embedding = predictor.embedding(image)
        results.append(
            (embedding, None if labelled else predictor.uncertainty(image, organ, samples=samples))
        )
    predictor.clear_cache()
    return results


def _assert_equal(batched: list[ImageScore], single) -> None:
    assert len(batched) == len(single)
    for score, (embedding, uncertainty) in zip(batched, single, strict=True):
        assert score.embedding.dtype == np.float32 and score.embedding.shape == embedding.shape
        np.testing.assert_allclose(score.embedding, embedding, rtol=1e-5, atol=1e-6)
        assert np.linalg.norm(score.embedding) == pytest.approx(1.0, abs=1e-5)
        if uncertainty is None:
            assert score.uncertainty is None
        else:
            assert score.uncertainty == pytest.approx(uncertainty, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("adapter", ["mona", "lora"])
def test_batched_scores_equal_one_at_a_time(adapter):
    predictor = _predictor(adapter)
    items = _items()
    single = _one_at_a_time(predictor, items, samples=6, seed=11)
    assert all(u is None or u > 1e-4 for _, u in single)  # the dropout really samples
    torch.manual_seed(11)
    batched = predictor.score_batch(items, samples=6)
    _assert_equal(batched, single)
    assert [s.frame for s in batched] == [0, 0, 1, 0, 0]
    torch.manual_seed(11)  # prepared on their own first (what the server's helper thread does)
    _assert_equal(predictor.score_batch(predictor.prepare_scoring(items), samples=6), single)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_batched_equals_single_under_reduced_precision(precision):
    try:
        predictor = _predictor("mona", precision)
    except SonoInputError as exc:
        pytest.skip(f"{precision} not available here: {exc}")
    items = _items()[:3]
    single = _one_at_a_time(predictor, items, samples=4, seed=5)
    torch.manual_seed(5)
    batched = predictor.score_batch(items, samples=4)
    for score, (embedding, uncertainty) in zip(batched, single, strict=True):
        # A batch of 3 and a batch of 1 round differently in bf16/int8; the same figures otherwise.
        np.testing.assert_allclose(score.embedding, embedding, atol=0.05)
        if uncertainty is not None:
            assert score.uncertainty == pytest.approx(uncertainty, abs=0.02)


def test_scoring_does_not_touch_the_feature_cache(predictor):
    clicked = _image(99)
    predictor.clear_cache()
    predictor.segment(clicked, "thyroid_nodule")
    before = predictor.cache_stats()
    predictor.score_batch(_items(), samples=2)
    after = predictor.cache_stats()
    assert after["entries"] == before["entries"] == 1
    assert (after["hits"], after["misses"]) == (before["hits"], before["misses"])


def test_pauses_release_the_lock_and_never_show_active_dropout(predictor):
    """At every pause (inside the head's dropout passes too) another thread can take the predictor
    and run a click: every module is in eval mode, the click is unchanged by the scoring around it
    (the dropout acts in the scoring thread only), and the scores by the clicks."""
    items = _items()
    clicked = _image(42)
    predictor.clear_cache()
    reference = predictor.segment(clicked, "lymph_node").probability
    torch.manual_seed(2)
    quiet = predictor.score_batch(items, samples=3)
    pauses: list[bool] = []
    clicks: list[np.ndarray] = []

    def click_from_another_thread() -> None:
        assert not predictor._lock._is_owned()
        pauses.append(any(m.training for m in predictor.model.modules()))
        worker = threading.Thread(
            target=lambda: clicks.append(predictor.segment(clicked, "lymph_node").probability)
        )
        worker.start()
        worker.join(30)
        assert not worker.is_alive()

    torch.manual_seed(2)
    busy = predictor.score_batch(items, samples=3, between_steps=click_from_another_thread)
    layers = len(predictor.model.clip.vision_model.encoder.layers)
    unlabelled = sum(1 for _, _, labelled in items if not labelled)
    head_stages = len(predictor.model.seg_head.up) + 1  # upsampling stages, classifier
    # Before each block but the first, its MLP and the MLP's fc2; before and inside each head pass.
    assert len(pauses) == (3 * layers - 1) + unlabelled * (1 + head_stages)
    assert not any(pauses)
    assert len(clicks) == len(pauses)
    for probability in clicks:
        np.testing.assert_array_equal(probability, reference)
    for a, b in zip(busy, quiet, strict=True):
        np.testing.assert_array_equal(a.embedding, b.embedding)
        assert a.uncertainty == b.uncertainty


def test_a_model_change_during_a_pause_stops_the_batch():
    predictor = _predictor()
    predictor.score_batch(_items()[:2], samples=2)

    def publish() -> None:
        predictor.model.config.version = "v-new"

    with pytest.raises(ModelLoadError, match="changed"):
        predictor.score_batch(_items()[:2], samples=2, between_steps=publish)


def test_bad_input_is_named():
    predictor = _predictor()
    items = _items()[:2]
    with pytest.raises(SonoInputError, match="scoring item 1"):
        predictor.score_batch([items[0], (items[1][0], "spleen", False)])
    with pytest.raises(SonoInputError, match="samples"):
        predictor.score_batch(items, samples=0)
    prepared = predictor.prepare_scoring(items)
    assert isinstance(prepared[0], ScoringInput)
    with pytest.raises(SonoInputError, match="mix"):
        predictor.score_batch([prepared[0], items[1]])
    assert predictor.score_batch([]) == []
    with predictor._lock, pytest.raises(RuntimeError, match="lock"):
        predictor.score_batch(items, between_steps=lambda: None)
