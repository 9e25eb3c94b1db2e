"""Per-stage wall times of one infer request, for the reply's ``latency_ms``.

Every mask-producing task (``segmentation``, ``interactive``, ``propagate`` excepted) replies with
``latency_ms``: milliseconds (``time.perf_counter``, rounded to 0.01 ms) of each stage of the
request inside the server, in the order they ran:

* ``decode``: the decoded image (a lookup when the image cache holds it; ``cache.image`` says);
* ``parse``: request params and prompts (and a previous-mask file);
* ``preprocess``: frame to model input, and ``encode``: the backbone; both 0 when the frame's
  features were cached (``cache.features``);
* ``prompts``: clicks, box and previous mask as prompt maps;
* ``decode_mask``: the segmentation head (and softmax);
* ``postprocess``: the probability back on the frame, threshold, imaging area, single lesion;
* ``measure``: lesion measurements (0 with ``"measure": false``);
* ``write``: the mask file (and its spacing) and the result record;
* ``other``: the rest of the task (MONAI Label's copy and log of the request);
* ``total``: the whole task, from MONAI Label calling it to the reply's JSON.

What happens outside the task (the HTTP request parsed, the multipart reply built and sent) is
not in ``total``: a client's round trip minus ``total`` is that part.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

#: Stages in reply order (``other`` and ``total`` are added last).
STAGES = (
    "decode",
    "parse",
    "preprocess",
    "encode",
    "prompts",
    "decode_mask",
    "postprocess",
    "measure",
    "write",
)


class StageClock:
    """Milliseconds per stage of one request; a stage timed twice adds up.

    It rides in the request dict (``sono_clock``); MONAI Label deep-copies the request before the
    task sees it, so a copy is the clock itself (the caller reads what the task recorded).
    """

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}
        self.cache: dict[str, str] = {}

    def __deepcopy__(self, memo: dict) -> StageClock:
        return self

    def __copy__(self) -> StageClock:
        return self

    def __repr__(self) -> str:
        return f"StageClock({', '.join(f'{k}={v:.2f}' for k, v in self.ms.items())})"

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the ``with`` body as stage ``name``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, (time.perf_counter() - start) * 1000.0)

    def add(self, name: str, ms: float) -> None:
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
        self.ms[name] = self.ms.get(name, 0.0) + float(ms)

    def add_all(self, timings: Mapping[str, float]) -> None:
        """Stages measured elsewhere (a :class:`~sonovlm.model.inference.SegmentationResult`'s)."""
        for name, ms in timings.items():
            self.add(name, ms)

    def reply(self, total_ms: float) -> dict[str, float]:
        """``{stage: ms, ..., "other": ms, "total": ms}``, every stage present (0 if it did not run)."""
        stages = {name: round(self.ms.get(name, 0.0), 2) for name in STAGES}
        other = max(total_ms - sum(self.ms.values()), 0.0)
        return {**stages, "other": round(other, 2), "total": round(total_ms, 2)}


def clock_of(data: Mapping) -> StageClock:
    """The request's clock (a fresh one, not kept, when the task was not started by ``__call__``)."""
    clock = data.get("sono_clock")
    return clock if isinstance(clock, StageClock) else StageClock()
