"""Atomic file writes: write a temporary file in the same folder, then ``os.replace`` it into place.

A reader (or a server restarted after a kill) sees either the old file or the new one, never a
half-written one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Permissions of files written here (what ``open`` gives with the usual umask 022).
FILE_MODE = 0o644


def write_atomic(path: str | os.PathLike, write: Callable[[str], None], suffix: str = "") -> None:
    """Call ``write(tmp_path)`` to produce the file, then move it onto ``path`` atomically.

    ``suffix`` is given to the temporary name, for writers that pick the format from the
    extension (``.png``, ``.nrrd``). The temporary file is removed when ``write`` fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, FILE_MODE)  # mkstemp makes 0600; others (viewers, backups) may read these
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""

    def _write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    write_atomic(path, _write)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_bytes_atomic(path, json.dumps(obj, indent=2, default=str).encode("utf-8"))


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    """Read JSON from ``path``; ``default`` when the file does not exist."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return default


def file_signature(path: str | os.PathLike) -> tuple[int, int, int] | None:
    """``(inode, mtime_ns, size)`` of ``path``, or ``None`` when it does not exist.

    The inode changes on every ``os.replace``, so this notices atomic rewrites even when two
    land within the file system's timestamp resolution.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)
