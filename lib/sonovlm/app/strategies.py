"""Active learning: which unlabelled image to annotate next.

Rules shared by every strategy (MONAI Label 0.8.5's own ``first`` repeats the same id and its
``random`` fails when every image was served within the same second):

* Candidates are the images without a final label.
* Per client (the request's ``client_id``), the id returned last is not returned again while
  another candidate exists; with one candidate left, it is returned.
* With no candidate: 404 and a message.
* ``uncertainty`` and ``diversity`` need scores or embeddings of the served model version (see
  :mod:`sonovlm.app.scoring`); until those exist they pick at random and say so in the reply
  (``fallback`` and ``fallback_reason``). Images added after the last scoring pass are not ranked
  (``unscored`` in the reply) and ask for a new pass.
"""

from __future__ import annotations

import logging
import random
import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from .http import not_found
from .scoring import ScoreStore

logger = logging.getLogger(__name__)

ANONYMOUS = "anonymous"


class ServedLog:
    """What each client was given, per strategy (in the server's memory)."""

    def __init__(self) -> None:
        self._served: dict[tuple[str, str], list[str]] = defaultdict(list)
        self._lock = threading.Lock()

    def last(self, strategy: str, client: str) -> str | None:
        with self._lock:
            served = self._served.get((strategy, client))
            return served[-1] if served else None

    def all(self, strategy: str, client: str) -> list[str]:
        with self._lock:
            return list(self._served.get((strategy, client), []))

    def add(self, strategy: str, client: str, image_id: str) -> None:
        with self._lock:
            self._served[(strategy, client)].append(image_id)


class SonoStrategy(Strategy):
    """Base of the app's strategies: candidates, the no-repeat rule, the reply.

    Subclasses implement :meth:`choose`, returning the chosen id and extra reply fields.
    """

    name = "base"

    def __init__(self, description: str, served: ServedLog, seed: int | None = None) -> None:
        super().__init__(description)
        self.served = served
        self.rng = random.Random(seed)

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        client = str(request.get("client_id") or ANONYMOUS)
        unlabelled = sorted(datastore.get_unlabeled_images())
        if not unlabelled:
            raise not_found("no unlabelled images left: every image has a final label")
        last = self.served.last(self.name, client)
        candidates = [i for i in unlabelled if i != last] or unlabelled
        image_id, extra = self.choose(candidates, client, datastore)
        self.served.add(self.name, client, image_id)
        logger.info("%s: %s for client %s (%d candidates)", self.name, image_id, client, len(candidates))
        return {"id": image_id, "selected_by": self.name, "candidates": len(unlabelled), **extra}

    def choose(self, candidates: list[str], client: str, datastore: Datastore) -> tuple[str, dict[str, Any]]:
        raise NotImplementedError

    def random_choice(self, candidates: list[str], reason: str | None = None) -> tuple[str, dict[str, Any]]:
        extra: dict[str, Any] = {}
        if reason:
            extra = {"fallback": "random", "fallback_reason": reason}
        return self.rng.choice(candidates), extra


class RandomStrategy(SonoStrategy):
    """A uniformly random unlabelled image."""

    name = "random"

    def __init__(self, served: ServedLog, seed: int | None = None) -> None:
        super().__init__("Random unlabelled image (never the same twice in a row per client)", served, seed)

    def choose(self, candidates, client, datastore):
        return self.random_choice(candidates)


class FirstStrategy(SonoStrategy):
    """Unlabelled images in id order, each client walking through them once before starting over."""

    name = "first"

    def __init__(self, served: ServedLog) -> None:
        super().__init__("First unlabelled image (by id) this client has not been given yet", served)

    def choose(self, candidates, client, datastore):
        given = set(self.served.all(self.name, client))
        fresh = [c for c in candidates if c not in given]
        return (fresh or candidates)[0], {}


class _ScoredStrategy(SonoStrategy):
    """A strategy that ranks candidates by what the served model version computed (a ScoreStore).

    ``on_missing`` is called when some candidate has no score yet (see :func:`_report_missing`).
    """

    description_text = ""

    def __init__(
        self,
        served: ServedLog,
        scores: ScoreStore,
        model_version: Callable[[], str],
        seed: int | None = None,
        on_missing: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(self.description_text, served, seed)
        self.scores = scores
        self.model_version = model_version
        self.on_missing = on_missing


class UncertaintyStrategy(_ScoredStrategy):
    """The unlabelled image whose segmentation is least certain (highest predictive entropy).

    Scores are those of the served model version; candidates without one come after scored ones.
    """

    name = "uncertainty"
    description_text = "Highest predictive entropy (MC dropout) under the served model"

    def choose(self, candidates, client, datastore):
        version = self.model_version()
        scores = self.scores.uncertainty(version)
        scored = {c: scores[c] for c in candidates if scores and c in scores}
        _report_missing(self.on_missing, len(scored), len(candidates))
        if not scored:
            return self.random_choice(
                candidates, f"no uncertainty scores for model version {version} yet (computed after publish)"
            )
        image_id = max(scored, key=lambda c: (scored[c], c))
        return image_id, {
            "score": scored[image_id],
            "model_version": version,
            "unscored": len(candidates) - len(scored),
        }


class DiversityStrategy(_ScoredStrategy):
    """k-centre greedy: the unlabelled image farthest (cosine distance of the adapted model's image
    embeddings) from every labelled image and every image this client was already given."""

    name = "diversity"
    description_text = "k-centre greedy over image embeddings against the labelled images"

    def choose(self, candidates, client, datastore):
        version = self.model_version()
        embeddings = self.scores.embeddings(version)
        _report_missing(self.on_missing, sum(c in (embeddings or {}) for c in candidates), len(candidates))
        if not embeddings or not any(c in embeddings for c in candidates):
            return self.random_choice(
                candidates, f"no image embeddings for model version {version} yet (computed after publish)"
            )
        centres = set(datastore.get_labeled_images()) | set(self.served.all(self.name, client))
        centre_vectors = [embeddings[c] for c in sorted(centres) if c in embeddings]
        scored = [c for c in candidates if c in embeddings]
        if not centre_vectors:
            # Nothing labelled yet: start from the image farthest from the mean of all images.
            centre_vectors = [np.mean([embeddings[c] for c in embeddings], axis=0)]
        distance = k_centre_distances(np.stack([embeddings[c] for c in scored]), np.stack(centre_vectors))
        best = int(np.argmax(distance))
        return scored[best], {"score": float(distance[best]), "model_version": version}


def _report_missing(on_missing: Callable[[], None] | None, scored: int, candidates: int) -> None:
    """Ask for scores of images added since the last scoring pass (it runs in the background)."""
    if on_missing is not None and scored < candidates:
        on_missing()


def k_centre_distances(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """For each of ``points`` (N, D), the cosine distance to its nearest of ``centres`` (M, D)."""
    p = points / np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-12)
    c = centres / np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
    return (1.0 - p @ c.T).min(axis=1)
