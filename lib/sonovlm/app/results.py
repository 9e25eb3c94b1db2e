"""The latest segmentation and classification result of each datastore image.

Kept beside the datastore in ``STUDIES/.sonovlm/results/IMAGE_ID.json`` (one small JSON per image,
written atomically) for ``sonovlm report``; MONAI Label's index is not touched by an infer.

The server records with ``deferred=True``: a request only hands its summary over and a writer
thread writes the file (read, merge, atomic write with fsync: 2 to 30 ms a click on a shared disk),
so no reply waits for the disk. Summaries of one image that arrive before the writer gets to it
are merged and written once; :meth:`ResultLog.latest` sees them at once, :meth:`ResultLog.flush`
waits for the files (also run when the process exits normally).
"""

from __future__ import annotations

import atexit
import logging
import re
import threading
from pathlib import Path
from typing import Any

from .atomic import read_json, write_json_atomic

logger = logging.getLogger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


class ResultLog:
    """``record(image_id, kind, summary)`` / ``latest(image_id)`` over one results folder.

    Args:
        results_dir: the folder of the per-image JSON files.
        deferred: write on a background thread (see the module notes); False writes before
            :meth:`record` returns.
    """

    def __init__(self, results_dir: str | Path, deferred: bool = False) -> None:
        self.results_dir = Path(results_dir)
        self.deferred = deferred
        self._lock = threading.Lock()  # the files
        self._pending_lock = threading.Condition()
        self._pending: dict[str, dict[str, Any]] = {}
        self._inflight: tuple[str, dict[str, Any]] | None = None  # what the writer writes now
        self._writer: threading.Thread | None = None

    def _path(self, image_id: str) -> Path:
        return self.results_dir / f"{_SAFE.sub('_', image_id)}.json"

    def record(self, image_id: str, kind: str, summary: dict[str, Any]) -> None:
        """Remember ``summary`` as the latest ``kind`` result of ``image_id``."""
        if not self.deferred:
            self._write(image_id, {kind: summary})
            return
        with self._pending_lock:
            self._pending.setdefault(image_id, {})[kind] = summary
            if self._writer is None:
                self._writer = threading.Thread(target=self._drain, name="sonovlm-results", daemon=True)
                self._writer.start()
                atexit.register(self.flush)
            self._pending_lock.notify_all()

    def _write(self, image_id: str, kinds: dict[str, Any]) -> None:
        with self._lock:
            path = self._path(image_id)
            data = read_json(path, default={}) or {}
            data["image_id"] = image_id
            data.update(kinds)
            write_json_atomic(path, data)

    def _drain(self) -> None:
        while True:
            with self._pending_lock:
                while not self._pending:
                    self._pending_lock.wait()
                image_id, kinds = next(iter(self._pending.items()))
                del self._pending[image_id]
                self._inflight = (image_id, kinds)
            try:
                self._write(image_id, kinds)
            except Exception as exc:  # a full disk must not end the writer; the reply went out
                logger.warning("Could not record the result of %s: %s", image_id, exc)
            finally:
                with self._pending_lock:
                    self._inflight = None
                    self._pending_lock.notify_all()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every recorded summary is on disk; False when ``timeout`` seconds pass first."""
        with self._pending_lock:
            return self._pending_lock.wait_for(lambda: not self._pending and self._inflight is None, timeout)

    def latest(self, image_id: str) -> dict[str, Any]:
        """``{"segmentation": {...}, "classification": {...}}`` as far as known; ``{}`` if none."""
        with self._pending_lock:  # first: what is not (surely) on disk yet, newest last
            pending: dict[str, Any] = {}
            if self._inflight is not None and self._inflight[0] == image_id:
                pending.update(self._inflight[1])
            pending.update(self._pending.get(image_id, {}))
        with self._lock:
            data = read_json(self._path(image_id), default={}) or {}
        if pending:
            data = {**data, "image_id": image_id, **pending}
        return data
