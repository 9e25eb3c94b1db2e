"""Temporal smoothing of the lesion probability across live frames (optional, off by default).

An exponential moving average of the per-pixel lesion probability, in frame (pixel) coordinates:
``smoothed = alpha * new + (1 - alpha) * previous``. ``alpha = 1`` is no smoothing; smaller values
steady the contour against speckle flicker at the cost of lag while the probe moves (about
``1 / alpha`` frames). The state restarts on the first frame, after :meth:`reset` (the stream
stopped, or its frame size or spacing changed) and whenever the frame shape changes.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import SonoInputError


def check_alpha(alpha: float, source: str = "--smoothing") -> float:
    """``alpha`` when it is a number in ``(0, 1]``, else SonoInputError naming ``source``."""
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise SonoInputError(source, f"must be a number in (0, 1], got {alpha!r}") from None
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise SonoInputError(source, f"must be in (0, 1] (1 = no smoothing), got {alpha!r}")
    return value


class ProbabilitySmoother:
    """Exponential moving average of ``(rows, cols)`` probability maps.

    Args:
        alpha: weight of the newest frame, in ``(0, 1]``.
    """

    def __init__(self, alpha: float) -> None:
        self.alpha = check_alpha(alpha)
        self._state: np.ndarray | None = None

    def update(self, probability: np.ndarray) -> np.ndarray:
        """Fold in one ``(rows, cols)`` float map in [0, 1]; returns the smoothed map (float32)."""
        probability = np.asarray(probability, dtype=np.float32)
        if probability.ndim != 2:
            raise SonoInputError("probability", f"expected (rows, cols), got shape {probability.shape}")
        if self._state is None or self._state.shape != probability.shape:
            self._state = probability.copy()
        else:
            self._state *= np.float32(1.0 - self.alpha)
            self._state += np.float32(self.alpha) * probability
        return self._state.copy()

    def reset(self) -> None:
        """Forget the history: the next frame starts afresh."""
        self._state = None

    @property
    def active(self) -> bool:
        """Whether a history is held."""
        return self._state is not None
