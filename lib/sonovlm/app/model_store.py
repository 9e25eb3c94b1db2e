"""Published models: versioned safetensors checkpoints in ``model_dir`` with a short history.

Layout of ``model_dir``::

    published.json               {"current": VERSION | null, "history": [...], "events": [...]}
    versions/VERSION.safetensors one file per published model (the model package's checkpoint)
    train_stats_TASK.json        last training's statistics, shown in /info

Publishing is kill-safe: the checkpoint is written under a temporary name and moved into place with
``os.replace``, then ``published.json`` is replaced atomically. A process killed at any point leaves
the previously served model current. The server notices a change of ``published.json`` and loads
the new version (see :mod:`sonovlm.app.registry`).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from ..errors import SonoInputError
from .atomic import file_signature, read_json, write_json_atomic

logger = logging.getLogger(__name__)

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def _version_filename(version: str) -> str:
    return _SAFE_NAME.sub("_", version).strip("._") + ".safetensors"


@dataclass(frozen=True)
class PublishedModel:
    """One entry of the history: ``version``, its checkpoint ``path`` and what produced it."""

    version: str
    path: Path
    published_at: str
    source: str
    metrics: dict[str, Any]
    current: bool = False

    @property
    def exists(self) -> bool:
        return self.path.is_file()


class ModelStore:
    """Reads and changes the published models of one ``model_dir``.

    Args:
        model_dir: folder holding ``published.json`` and ``versions/``; created when missing.
        keep: number of published checkpoints kept on disk; older ones are deleted (the current
            one always stays).
    """

    INDEX = "published.json"

    def __init__(self, model_dir: str | os.PathLike, keep: int = 5) -> None:
        self.model_dir = Path(model_dir)
        self.versions_dir = self.model_dir / "versions"
        self.keep = max(1, keep)
        self.model_dir.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.model_dir / ".publish.lock"))

    # -- reading ---------------------------------------------------------------------------------

    @property
    def index_path(self) -> Path:
        return self.model_dir / self.INDEX

    def signature(self) -> tuple[int, int, int] | None:
        """Changes whenever ``published.json`` is replaced (see :func:`file_signature`)."""
        return file_signature(self.index_path)

    def _read(self) -> dict[str, Any]:
        data = read_json(self.index_path, default=None)
        if data is None:
            return {"current": None, "history": [], "events": []}
        data.setdefault("history", [])
        data.setdefault("events", [])
        data.setdefault("current", None)
        return data

    def _entry(self, raw: dict[str, Any], current: str | None) -> PublishedModel:
        return PublishedModel(
            version=raw["version"],
            path=self.versions_dir / raw["file"],
            published_at=raw.get("published_at", ""),
            source=raw.get("source", ""),
            metrics=dict(raw.get("metrics", {})),
            current=raw["version"] == current,
        )

    def history(self) -> list[PublishedModel]:
        """Published models, oldest first."""
        data = self._read()
        return [self._entry(raw, data["current"]) for raw in data["history"]]

    def current(self) -> PublishedModel | None:
        """The model to serve, or ``None`` when nothing has been published."""
        data = self._read()
        for raw in data["history"]:
            if raw["version"] == data["current"]:
                return self._entry(raw, data["current"])
        return None

    def events(self) -> list[dict[str, Any]]:
        """Publish and rollback events, oldest first."""
        return list(self._read()["events"])

    # -- changing --------------------------------------------------------------------------------

    def publish(
        self,
        save: Callable[[Path], str],
        source: str,
        metrics: dict[str, Any] | None = None,
    ) -> PublishedModel:
        """Write a checkpoint with ``save(path) -> version`` and make it the current model.

        ``save`` is typically ``lambda p: save_checkpoint(model, p)``. The checkpoint lands under a
        temporary name first; only a complete file is moved into ``versions/`` and only then does
        ``published.json`` name it.
        """
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        incoming = self.versions_dir / f".incoming-{os.getpid()}-{time.time_ns()}.safetensors"
        try:
            version = str(save(incoming))
            final = self.versions_dir / _version_filename(version)
            os.replace(incoming, final)
        finally:
            if incoming.exists():
                incoming.unlink()

        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        with self._lock:
            data = self._read()
            data["history"] = [h for h in data["history"] if h["version"] != version]
            data["history"].append(
                {
                    "version": version,
                    "file": final.name,
                    "published_at": stamp,
                    "source": source,
                    "metrics": metrics or {},
                }
            )
            previous = data["current"]
            data["current"] = version
            data["events"].append({"event": "publish", "version": version, "previous": previous, "at": stamp})
            data["events"] = data["events"][-50:]
            self._prune(data)
            write_json_atomic(self.index_path, data)
        logger.info("Published model %s (%s) => %s", version, source, final)
        return self._entry(data["history"][-1], version)

    def rollback(self, version: str) -> PublishedModel:
        """Make an earlier published ``version`` current again. Raises SonoInputError if unknown."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        with self._lock:
            data = self._read()
            known = {h["version"]: h for h in data["history"]}
            if version not in known:
                listed = ", ".join(known) or "none"
                raise SonoInputError("VERSION", f"no published model {version!r} (published: {listed})")
            entry = known[version]
            if not (self.versions_dir / entry["file"]).is_file():
                raise SonoInputError(
                    "VERSION", f"checkpoint of {version!r} was pruned from {self.versions_dir}"
                )
            previous = data["current"]
            data["current"] = version
            data["events"].append(
                {"event": "rollback", "version": version, "previous": previous, "at": stamp}
            )
            data["events"] = data["events"][-50:]
            write_json_atomic(self.index_path, data)
        logger.info("Rolled back to model %s (was %s)", version, previous)
        return self._entry(entry, version)

    def _prune(self, data: dict[str, Any]) -> None:
        """Delete checkpoints beyond the ``keep`` newest; history entries stay, marked ``pruned``."""
        newest_first = list(reversed(data["history"]))
        keep = {raw["version"] for raw in newest_first[: self.keep]} | {data["current"]}
        for raw in newest_first:
            if raw["version"] in keep:
                continue
            (self.versions_dir / raw["file"]).unlink(missing_ok=True)
            raw["pruned"] = True

    def remove_stale_incoming(self) -> None:
        """Delete temporary checkpoints left by a killed training (call when none is running)."""
        if not self.versions_dir.is_dir():
            return
        for path in self.versions_dir.glob(".incoming-*"):
            logger.info("Removing unfinished checkpoint %s", path)
            path.unlink(missing_ok=True)

    # -- training statistics ---------------------------------------------------------------------

    def stats_path(self, task: str) -> Path:
        return self.model_dir / f"train_stats_{task}.json"
