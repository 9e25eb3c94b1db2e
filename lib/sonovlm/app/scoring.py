"""Uncertainty scores and image embeddings for active learning, per served model version.

MONAI Label 0.8.5 re-scores after every next-sample in a subprocess that rebuilds the whole app;
that is switched off. Here scores are recomputed in the server, in a background thread sharing
the served model, after each publish (debounced) and at start when the served version has none.
They are stored beside the datastore, in ``STUDIES/.sonovlm/scores/``, keyed by model version,
not in MONAI Label's index::

    VERSION.json   {"model_version", "computed_at", "uncertainty": {image_id: entropy}}
    VERSION.npz    ids (N,), embeddings (N, D) float32

A pass scores ``batch_size`` images at a time (``--conf scoring_batch``, default 8) when the job
has ``score_batch``: one backbone forward per batch, which lets waiting requests in between its
blocks (:meth:`sonovlm.model.Predictor.score_batch`), so a click waits for one block, not a batch.
A batch that fails is scored again image by image, so one unreadable image skips only itself.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import file_signature, read_json, write_atomic, write_json_atomic

logger = logging.getLogger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _stem(version: str) -> str:
    return _SAFE.sub("_", version).strip("._") or "unversioned"


class ScoreStore:
    """Reads and writes the per-version score files of one studies folder."""

    def __init__(self, scores_dir: str | Path) -> None:
        self.scores_dir = Path(scores_dir)
        self._cache: dict[Path, tuple[Any, Any]] = {}
        self._lock = threading.Lock()

    def _load(self, path: Path, reader: Callable[[Path], Any]) -> Any:
        signature = file_signature(path)
        if signature is None:
            return None
        with self._lock:
            cached = self._cache.get(path)
            if cached and cached[0] == signature:
                return cached[1]
        value = reader(path)
        with self._lock:
            self._cache[path] = (signature, value)
        return value

    def uncertainty(self, version: str) -> dict[str, float] | None:
        data = self._load(self.scores_dir / f"{_stem(version)}.json", lambda p: read_json(p))
        return None if data is None else {k: float(v) for k, v in data.get("uncertainty", {}).items()}

    def embeddings(self, version: str) -> dict[str, np.ndarray] | None:
        def read(path: Path) -> dict[str, np.ndarray]:
            with np.load(path, allow_pickle=False) as data:
                return {str(i): v for i, v in zip(data["ids"], data["embeddings"], strict=True)}

        return self._load(self.scores_dir / f"{_stem(version)}.npz", read)

    def has(self, version: str) -> bool:
        stem = _stem(version)
        return (self.scores_dir / f"{stem}.json").exists() and (self.scores_dir / f"{stem}.npz").exists()

    def write(self, version: str, uncertainty: dict[str, float], embeddings: dict[str, np.ndarray]) -> None:
        stem = _stem(version)
        ids = sorted(embeddings)
        matrix = (
            np.stack([np.asarray(embeddings[i], dtype=np.float32) for i in ids])
            if ids
            else np.zeros((0, 0), np.float32)
        )

        def write_npz(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, ids=np.array(ids, dtype=str), embeddings=matrix)

        write_atomic(self.scores_dir / f"{stem}.npz", write_npz)
        write_json_atomic(
            self.scores_dir / f"{stem}.json",
            {
                "model_version": version,
                "computed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "uncertainty": uncertainty,
            },
        )


#: One image's result from ``ScoringJob.score_batch``: ``(uncertainty or None, embedding)``, or the
#: exception that image raised (it is skipped).
ImageResult = tuple[float | None, np.ndarray] | BaseException


@dataclass
class ScoringJob:
    """What one scoring pass needs from the app (callables keep this module free of the model)."""

    model_version: Callable[[], str]
    images: Callable[[], Iterable[tuple[str, bool]]]
    """``(image_id, labelled)`` pairs."""
    score_image: Callable[[str, bool], tuple[float | None, np.ndarray]]
    """``(image_id, labelled) -> (uncertainty or None, embedding)``; runs the model."""
    score_batch: Callable[[list[tuple[str, bool]]], list[ImageResult]] | None = None
    """``[(image_id, labelled), ...] -> [(uncertainty or None, embedding) or the exception that
    image raised, ...]`` in order; an exception raised for the whole batch retries it with
    ``score_image``. None = one ``score_image`` call per image."""
    batch_size: int = 1
    """Images per ``score_batch`` call (>= 1)."""


#: Seconds between two progress lines of a scoring pass in the server log.
PROGRESS_LOG_S = 10.0


class BackgroundScorer:
    """Recomputes scores in a daemon thread, ``delay_s`` after the last :meth:`schedule` call."""

    def __init__(self, store: ScoreStore, job: ScoringJob, delay_s: float = 5.0) -> None:
        self.store = store
        self.job = job
        self.delay_s = delay_s
        self._due: float | None = None
        self._cond = threading.Condition()
        self._state = "idle"
        self._last_error: str | None = None
        self._progress: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._run, name="sonovlm-scoring", daemon=True)
        self._thread.start()

    def schedule(self, reason: str) -> None:
        """Ask for a recomputation; calls within ``delay_s`` of each other start one pass."""
        with self._cond:
            self._due = time.monotonic() + self.delay_s
            if self._state == "idle":
                self._state = "pending"
            logger.info("Scoring scheduled in %.1f s (%s)", self.delay_s, reason)
            self._cond.notify_all()

    def status(self) -> dict[str, Any]:
        """``state`` (idle/pending/running), ``last_error``, and the pass in progress or last done:
        ``images_done`` of ``images_total``, ``model_version``, ``elapsed_s``."""
        with self._cond:
            return {"state": self._state, "last_error": self._last_error, **self._progress}

    def wait_idle(self, timeout: float) -> bool:
        """Block until no pass is pending or running (for tests and the benchmark)."""
        end = time.monotonic() + timeout
        with self._cond:
            while self._state != "idle" or self._due is not None:
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._due is None or time.monotonic() < self._due:
                    self._cond.wait(None if self._due is None else max(0.0, self._due - time.monotonic()))
                self._due = None
                self._state = "running"
            try:
                self._score_all()
                self._last_error = None
            except Exception as exc:  # keep the thread alive; the next publish retries
                logger.exception("Scoring failed")
                self._last_error = str(exc)
            with self._cond:
                self._state = "pending" if self._due is not None else "idle"
                self._cond.notify_all()

    def _score_all(self) -> None:
        version = self.job.model_version()
        uncertainty: dict[str, float] = {}
        embeddings: dict[str, np.ndarray] = {}
        start = time.monotonic()
        images = list(self.job.images())
        size = max(1, int(self.job.batch_size)) if self.job.score_batch is not None else 1
        logged = start
        for first in range(0, len(images), size):
            now = time.monotonic()
            with self._cond:
                self._progress = {
                    "images_done": first,
                    "images_total": len(images),
                    "model_version": version,
                    "elapsed_s": round(now - start, 1),
                }
            if now - logged >= PROGRESS_LOG_S:
                logger.info("Scoring for model %s: %d of %d images", version, first, len(images))
                logged = now
            if self.job.model_version() != version:
                logger.info("Model changed during scoring of %s; starting over", version)
                self.schedule("model changed during scoring")
                return
            batch = images[first : first + size]
            results = self._score_some(batch, version)
            if self.job.model_version() != version:  # scored (partly) by another model
                logger.info("Model changed during scoring of %s; starting over", version)
                self.schedule("model changed during scoring")
                return
            for (image_id, _), result in zip(batch, results, strict=True):
                if isinstance(result, BaseException):  # one unreadable image must not stop the others
                    logger.warning("Scoring skipped %s: %s", image_id, result)
                    continue
                score, embedding = result
                embeddings[image_id] = embedding
                if score is not None:
                    uncertainty[image_id] = float(score)
        self.store.write(version, uncertainty, embeddings)
        with self._cond:
            self._progress = {
                "images_done": len(images),
                "images_total": len(images),
                "model_version": version,
                "elapsed_s": round(time.monotonic() - start, 1),
            }
        logger.info(
            "Scored %d images (%d uncertainty) for model %s in %.1f s",
            len(embeddings),
            len(uncertainty),
            version,
            time.monotonic() - start,
        )

    def _score_some(self, batch: list[tuple[str, bool]], version: str) -> list[ImageResult]:
        """Results of ``batch``, in order: one ``score_batch`` call, else (or when that fails while
        model ``version`` is still served) image by image."""
        if self.job.score_batch is not None:
            try:
                results = list(self.job.score_batch(batch))
                if len(results) != len(batch):
                    raise RuntimeError(f"score_batch gave {len(results)} results for {len(batch)} images")
                return results
            except Exception as exc:
                if len(batch) == 1 or self.job.model_version() != version:
                    return [exc] * len(batch)
                logger.warning(
                    "Scoring a batch of %d failed (%s); scoring its images one by one", len(batch), exc
                )
        results: list[ImageResult] = []
        for image_id, labelled in batch:
            try:
                results.append(self.job.score_image(image_id, labelled))
            except Exception as exc:
                results.append(exc)
        return results
