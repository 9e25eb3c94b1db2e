"""Scores per model version on disk, and the debounced background scorer."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from sonovlm.app.config import AppConfig
from sonovlm.app.frames import ImageCache
from sonovlm.app.model_store import ModelStore
from sonovlm.app.registry import ModelRegistry
from sonovlm.app.scoring import BackgroundScorer, ScoreStore, ScoringJob
from sonovlm.errors import ModelLoadError
from sonovlm.model.interaction import Interaction


def test_store_round_trip_per_version(tmp_path):
    store = ScoreStore(tmp_path / "scores")
    assert store.uncertainty("v1") is None and store.embeddings("v1") is None and not store.has("v1")
    store.write("v1", {"a": 0.25}, {"a": np.arange(3.0), "b": np.ones(3)})
    assert store.has("v1") and not store.has("v2")
    assert store.uncertainty("v1") == {"a": 0.25}
    embeddings = store.embeddings("v1")
    np.testing.assert_array_equal(embeddings["a"], [0, 1, 2])
    assert sorted(embeddings) == ["a", "b"]
    store.write("v1", {"a": 0.5}, {"a": np.zeros(3)})  # rewritten: the cache notices
    assert store.uncertainty("v1") == {"a": 0.5}


def test_scheduling_is_debounced_and_follows_the_model(tmp_path):
    version = {"value": "v1"}
    calls: list[str] = []
    lock = threading.Lock()

    def score_image(image_id, labelled):
        with lock:
            calls.append(image_id)
        return (None if labelled else 0.3), np.ones(2)

    job = ScoringJob(
        model_version=lambda: version["value"],
        images=lambda: [("a", False), ("b", True)],
        score_image=score_image,
    )
    store = ScoreStore(tmp_path)
    scorer = BackgroundScorer(store, job, delay_s=0.2)
    for _ in range(5):
        scorer.schedule("publish")
    time.sleep(0.05)
    assert scorer.status()["state"] == "pending" and calls == []
    assert scorer.wait_idle(10)
    assert calls == ["a", "b"]  # one pass for five requests
    assert store.uncertainty("v1") == {"a": 0.3}
    version["value"] = "v2"
    scorer.schedule("publish")
    assert scorer.wait_idle(10)
    assert store.has("v2") and len(calls) == 4


def test_a_failing_image_is_skipped(tmp_path):
    def score_image(image_id, labelled):
        if image_id == "bad":
            raise ValueError("unreadable")
        return 0.1, np.ones(2)

    job = ScoringJob(lambda: "v", lambda: [("bad", False), ("good", False)], score_image)
    store = ScoreStore(tmp_path)
    scorer = BackgroundScorer(store, job, delay_s=0.0)
    scorer.schedule("test")
    assert scorer.wait_idle(10)
    assert store.uncertainty("v") == {"good": 0.1}


def test_a_pass_reports_its_progress_while_it_runs(tmp_path):
    """Issue 15 item 6: ``status()`` (shown in /info) says how far a scoring pass has got."""
    gate, reached = threading.Event(), threading.Event()

    def score_image(image_id, labelled):
        if image_id == "c":
            reached.set()
            gate.wait(10)
        return 0.5, np.ones(2)

    job = ScoringJob(
        lambda: "v", lambda: [("a", False), ("b", False), ("c", False), ("d", True)], score_image
    )
    scorer = BackgroundScorer(ScoreStore(tmp_path), job, delay_s=0.0)
    assert "images_done" not in scorer.status()
    scorer.schedule("test")
    assert reached.wait(10)
    status = scorer.status()
    assert status["state"] == "running" and (status["images_done"], status["images_total"]) == (2, 4)
    assert status["model_version"] == "v"
    gate.set()
    assert scorer.wait_idle(10)
    status = scorer.status()
    assert status["state"] == "idle" and (status["images_done"], status["images_total"]) == (4, 4)


def test_batches_of_the_configured_size(tmp_path):
    """Issue 17 item 3: ``score_batch`` gets ``batch_size`` images at a time; progress per batch."""
    calls: list[list[str]] = []
    progress: list[int] = []
    scorer: BackgroundScorer | None = None

    def score_batch(pairs):
        calls.append([image_id for image_id, _ in pairs])
        progress.append(scorer.status()["images_done"])
        return [(None if labelled else 0.2, np.full(2, len(calls), np.float32)) for _, labelled in pairs]

    images = [(name, name == "c") for name in "abcde"]
    job = ScoringJob(lambda: "v", lambda: images, lambda *_: pytest.fail("one at a time"), score_batch, 2)
    store = ScoreStore(tmp_path)
    scorer = BackgroundScorer(store, job, delay_s=0.0)
    scorer.schedule("test")
    assert scorer.wait_idle(10)
    assert calls == [["a", "b"], ["c", "d"], ["e"]] and progress == [0, 2, 4]
    assert store.uncertainty("v") == {"a": 0.2, "b": 0.2, "d": 0.2, "e": 0.2}
    assert {k: float(v[0]) for k, v in store.embeddings("v").items()} == {
        "a": 1,
        "b": 1,
        "c": 2,
        "d": 2,
        "e": 3,
    }
    assert scorer.status()["images_done"] == 5


def test_a_failing_batch_is_scored_image_by_image(tmp_path):
    singles: list[str] = []

    def score_batch(pairs):
        ids = [image_id for image_id, _ in pairs]
        if "bad" in ids:
            raise ValueError("unreadable")  # the whole batch fails
        return [ValueError("no frames") if i == "empty" else (0.1, np.ones(2)) for i in ids]

    def score_image(image_id, labelled):
        singles.append(image_id)
        if image_id == "bad":
            raise ValueError("unreadable")
        return 0.3, np.ones(2)

    images = [("a", False), ("bad", False), ("b", False), ("empty", False)]
    job = ScoringJob(lambda: "v", lambda: images, score_image, score_batch, batch_size=2)
    store = ScoreStore(tmp_path)
    scorer = BackgroundScorer(store, job, delay_s=0.0)
    scorer.schedule("test")
    assert scorer.wait_idle(10)
    assert singles == ["a", "bad"]  # only the failed batch again; "empty" only skips itself
    assert store.uncertainty("v") == {"a": 0.3, "b": 0.1}


def test_a_model_change_during_a_batch_starts_over(tmp_path):
    version = {"value": "v1"}
    calls: list[str] = []

    def score_batch(pairs):
        calls.append(version["value"])
        if len(calls) == 1:
            version["value"] = "v2"  # published while the first batch ran
            raise ModelLoadError("model v2 was published while the work ran on v1; run it again")
        return [(0.5, np.ones(2)) for _ in pairs]

    job = ScoringJob(lambda: version["value"], lambda: [("a", False), ("b", False)], None, score_batch, 8)
    store = ScoreStore(tmp_path)
    scorer = BackgroundScorer(store, job, delay_s=0.0)
    scorer.schedule("test")
    assert scorer.wait_idle(10)
    assert calls == ["v1", "v2"] and not store.has("v1") and store.uncertainty("v2") == {"a": 0.5, "b": 0.5}


def _served_registry(tmp_path):
    config = AppConfig.from_conf(
        {"backbone": "tiny", "precision": "fp32", "model_dir": str(tmp_path / "model")}, tmp_path
    )
    registry = ModelRegistry(config, ModelStore(config.model_dir), ImageCache(), watch_interval_s=0)
    registry.start()
    return registry


def _frame(seed: int):
    from sonovlm.io import UltrasoundImage

    rng = np.random.default_rng(seed)
    return UltrasoundImage(frames=rng.integers(0, 255, (1, 120, 160), dtype=np.uint8), source=f"<{seed}>")


def test_a_click_during_scoring_is_served_before_the_pass_ends(tmp_path, monkeypatch):
    """The scoring forward gives the model to a waiting click between backbone blocks: the click
    is answered while the batch is still inside its forward (ordering by events, no timing), with
    the result it has without scoring, and the pass then ends with every score."""
    registry = _served_registry(tmp_path)
    clicked = _frame(100)
    images = {f"img{i}": _frame(i) for i in range(5)}
    interaction = Interaction(positive=[(60, 80)])
    with registry.inference() as predictor:
        alone = predictor.segment_interactive(clicked, "thyroid_nodule", interaction).probability
        predictor.clear_cache()
    order: list[str] = []
    in_forward, click_waiting = threading.Event(), threading.Event()
    original_yield = registry.yield_to_requests

    def yield_to_requests(predictor):
        if not in_forward.is_set():
            in_forward.set()
            assert click_waiting.wait(30)
            deadline = time.monotonic() + 30  # the click thread is about to queue for the model
            while not registry._requests_waiting and time.monotonic() < deadline:
                time.sleep(0.001)
            order.append("scoring pauses")
            original_yield(predictor)
            order.append("scoring resumes")
            return
        original_yield(predictor)

    monkeypatch.setattr(registry, "yield_to_requests", yield_to_requests)

    def score_batch(pairs):
        predictor = registry.predictor
        prepared = predictor.prepare_scoring(
            [(images[i], "thyroid_nodule", labelled) for i, labelled in pairs]
        )
        return [(s.uncertainty, s.embedding) for s in registry.score_batch(prepared, samples=4)]

    store = ScoreStore(tmp_path / "scores")
    original_write = store.write

    def write(*args):
        order.append("scores written")
        original_write(*args)

    store.write = write
    job = ScoringJob(
        lambda: registry.model_version,
        lambda: [(i, i == "img3") for i in sorted(images)],
        None,
        score_batch,
        batch_size=8,
    )
    clicks: list[np.ndarray] = []

    def click() -> None:
        assert in_forward.wait(30)
        click_waiting.set()
        with registry.inference() as predictor:
            clicks.append(predictor.segment_interactive(clicked, "thyroid_nodule", interaction).probability)
            order.append("click served")

    clicker = threading.Thread(target=click)
    clicker.start()
    scorer = BackgroundScorer(store, job, delay_s=0.0)
    scorer.schedule("test")
    assert scorer.wait_idle(60)
    clicker.join(30)
    assert order == ["scoring pauses", "click served", "scoring resumes", "scores written"], order
    np.testing.assert_array_equal(clicks[0], alone)
    version = registry.model_version
    assert sorted(store.embeddings(version)) == sorted(images)
    assert sorted(store.uncertainty(version)) == ["img0", "img1", "img2", "img4"]
    assert registry.predictor.cache_stats()["entries"] == 1  # the click's frame only
