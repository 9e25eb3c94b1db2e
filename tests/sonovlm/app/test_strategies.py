"""Active learning strategies: no repeats per client, 404 when done, fallbacks stated, k-centre."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi import HTTPException
from sonovlm.app.scoring import ScoreStore
from sonovlm.app.strategies import (
    DiversityStrategy,
    FirstStrategy,
    RandomStrategy,
    ServedLog,
    UncertaintyStrategy,
    k_centre_distances,
)


class FakeDatastore:
    def __init__(self, unlabelled, labelled=()):
        self.unlabelled = list(unlabelled)
        self.labelled = list(labelled)

    def get_unlabeled_images(self, *args):
        return list(self.unlabelled)

    def get_labeled_images(self, *args):
        return list(self.labelled)


def ask(strategy, datastore, client="c1"):
    return strategy({"strategy": strategy.name, "client_id": client}, datastore)


def test_random_never_repeats_in_a_row_per_client():
    strategy = RandomStrategy(ServedLog(), seed=1)
    datastore = FakeDatastore(["a", "b", "c"])
    picks = [ask(strategy, datastore)["id"] for _ in range(60)]
    assert all(x != y for x, y in zip(picks, picks[1:], strict=False))
    assert set(picks) == {"a", "b", "c"}
    other = [ask(strategy, datastore, client="c2")["id"] for _ in range(2)]
    assert other[0] != other[1]


def test_last_image_is_returned_again_and_none_is_404():
    strategy = RandomStrategy(ServedLog())
    datastore = FakeDatastore(["only"])
    assert [ask(strategy, datastore)["id"] for _ in range(2)] == ["only", "only"]
    datastore.unlabelled = []
    with pytest.raises(HTTPException) as caught:
        ask(strategy, datastore)
    assert caught.value.status_code == 404 and "no unlabelled images" in caught.value.detail


def test_first_walks_in_order_then_starts_over():
    strategy = FirstStrategy(ServedLog())
    datastore = FakeDatastore(["c", "a", "b"])
    assert [ask(strategy, datastore)["id"] for _ in range(4)] == ["a", "b", "c", "a"]
    assert ask(strategy, datastore, client="new")["id"] == "a"
    datastore.unlabelled = ["b", "c"]  # a got labelled
    assert ask(strategy, datastore)["id"] == "b"


def test_uncertainty_falls_back_then_ranks(tmp_path):
    scores = ScoreStore(tmp_path)
    served = ServedLog()
    strategy = UncertaintyStrategy(served, scores, lambda: "v1", seed=0)
    datastore = FakeDatastore(["a", "b", "c"])
    reply = ask(strategy, datastore)
    assert reply["fallback"] == "random" and "v1" in reply["fallback_reason"]

    scores.write("v1", {"a": 0.1, "b": 0.6, "c": 0.3}, {k: np.ones(4) for k in "abc"})
    first, second = ask(strategy, datastore, client="x"), ask(strategy, datastore, client="x")
    assert (first["id"], second["id"]) == ("b", "c")
    assert first["score"] == pytest.approx(0.6) and "fallback" not in first
    # Scores of another model version are not used.
    strategy.model_version = lambda: "v2"
    assert ask(strategy, datastore)["fallback"] == "random"


def test_diversity_k_centre(tmp_path):
    scores = ScoreStore(tmp_path)
    strategy = DiversityStrategy(ServedLog(), scores, lambda: "v1")
    datastore = FakeDatastore(["near", "far", "mid"], labelled=["lab"])
    assert ask(strategy, datastore)["fallback"] == "random"
    embeddings = {
        "lab": np.array([1.0, 0.0]),
        "near": np.array([0.99, 0.1]),
        "mid": np.array([0.7, 0.7]),
        "far": np.array([-1.0, 0.05]),
    }
    scores.write("v1", {}, embeddings)
    first = ask(strategy, datastore, client="x")
    assert first["id"] == "far" and first["score"] == pytest.approx(
        k_centre_distances(embeddings["far"][None], embeddings["lab"][None])[0]
    )
    # "far" is now a centre too: next is the one farthest from both.
    assert ask(strategy, datastore, client="x")["id"] == "mid"


def test_k_centre_distances():
    points = np.array([[1.0, 0.0], [0.0, 2.0]])
    centres = np.array([[1.0, 0.0], [0.0, -1.0]])
    np.testing.assert_allclose(k_centre_distances(points, centres), [0.0, 1.0])


def test_images_added_after_scoring_ask_for_a_new_pass(tmp_path):
    scores = ScoreStore(tmp_path)
    scores.write("v1", {"a": 0.2}, {"a": np.ones(2)})
    asked = []
    strategy = UncertaintyStrategy(ServedLog(), scores, lambda: "v1", on_missing=lambda: asked.append(1))
    reply = ask(strategy, FakeDatastore(["a", "new"]))
    assert reply["id"] == "a" and reply["unscored"] == 1 and asked == [1]
    ask(strategy, FakeDatastore(["a"]), client="other")
    assert asked == [1]  # nothing missing: no new pass
