"""Scores per model version on disk, and the debounced background scorer."""

from __future__ import annotations

import threading
import time

import numpy as np
from sonovlm.app.scoring import BackgroundScorer, ScoreStore, ScoringJob


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
