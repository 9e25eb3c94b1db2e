"""The latest segmentation and classification result of each datastore image.

Kept beside the datastore in ``STUDIES/.sonovlm/results/IMAGE_ID.json`` (one small JSON per image,
written atomically) for ``sonovlm report``; MONAI Label's index is not touched by an infer.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

from .atomic import read_json, write_json_atomic

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


class ResultLog:
    """``record(image_id, kind, summary)`` / ``latest(image_id)`` over one results folder."""

    def __init__(self, results_dir: str | Path) -> None:
        self.results_dir = Path(results_dir)
        self._lock = threading.Lock()

    def _path(self, image_id: str) -> Path:
        return self.results_dir / f"{_SAFE.sub('_', image_id)}.json"

    def record(self, image_id: str, kind: str, summary: dict[str, Any]) -> None:
        with self._lock:
            path = self._path(image_id)
            data = read_json(path, default={}) or {}
            data["image_id"] = image_id
            data[kind] = summary
            write_json_atomic(path, data)

    def latest(self, image_id: str) -> dict[str, Any]:
        """``{"segmentation": {...}, "classification": {...}}`` as far as known; ``{}`` if none."""
        return read_json(self._path(image_id), default={}) or {}
