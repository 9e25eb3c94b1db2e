"""Progress bars for long work (sample data, dataset preparation, duplicate hashing, cache filling,
training, evaluation): tqdm, on stderr, shown on a terminal and hidden in logs and pipes.

``SONOVLM_PROGRESS`` overrides the terminal check: ``1``/``true`` always shows bars (e.g. in a CI
log), ``0``/``false`` never does. The server's long work (background scoring, cine propagation)
reports progress in ``/info`` and job status instead (:mod:`sonovlm.app.scoring`, :mod:`sonovlm.app.jobs`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from .vocabulary import parse_bool

T = TypeVar("T")

#: Environment variable forcing bars on (true) or off (false); unset or ``auto``: on a terminal.
PROGRESS_ENV = "SONOVLM_PROGRESS"


def bars_enabled() -> bool | None:
    """``True``/``False`` when :data:`PROGRESS_ENV` forces it, ``None`` to let tqdm decide (a tty)."""
    value = os.environ.get(PROGRESS_ENV, "").strip()
    if value in ("", "auto"):
        return None
    return parse_bool(value, PROGRESS_ENV)


def progress(
    iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it", **kwargs: Any
) -> Iterator[T]:
    """``iterable`` with a progress bar labelled ``desc`` (see the module notes for when it shows);
    the tqdm object itself, so callers can ``set_postfix``."""
    from tqdm.auto import tqdm

    enabled = bars_enabled()
    disable = None if enabled is None else not enabled
    return tqdm(iterable, desc=desc, total=total, unit=unit, dynamic_ncols=True, disable=disable, **kwargs)


def cache_progress() -> bool:
    """The ``progress`` argument for MONAI's ``CacheDataset`` (its own tqdm bar while it fills)."""
    enabled = bars_enabled()
    if enabled is None:
        import sys

        return sys.stderr.isatty()
    return enabled
