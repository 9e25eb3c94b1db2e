"""What :class:`~sonovlm.model.inference.Predictor` returns and keeps: the adapted features of one
frame (:class:`FrameFeatures`) in a byte-bounded LRU (:class:`FeatureCache`), and the results of
segmentation and classification (:class:`SegmentationResult`, :class:`ClassificationResult`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from ..errors import SonoInputError
from .preprocess import FrameGeometry
from .sonovlm_model import VisionFeatures

#: Frames whose features a Predictor keeps at most.
FEATURE_CACHE_SIZE = 256
#: Bytes of cached features a Predictor keeps at most (ViT-B/16: about 1.8 MB per frame).
FEATURE_CACHE_BYTES = 256 * 1024 * 1024
#: Foreground threshold on the lesion probability.
MASK_THRESHOLD = 0.5


@dataclass
class FrameFeatures:
    """Adapted vision features of one frame, with the geometry to map results back.

    Attributes:
        vision: hidden states of the head's blocks and the image embedding (batch of 1).
        geometry: frame <-> model-space mapping.
        frame: 0-based frame index.
    """

    vision: VisionFeatures
    geometry: FrameGeometry
    frame: int


@dataclass
class SegmentationResult:
    """A lesion mask for one frame.

    Attributes:
        mask: ``(rows, cols)`` uint8, the organ's label value where the lesion is, 0 elsewhere
            (always 0 outside the ultrasound region).
        probability: ``(rows, cols)`` float32 lesion probability (0 outside the region).
        confidence: mean lesion probability over the mask's pixels; 0.0 for an empty mask.
        organ, prompt, frame: what was asked (``prompt`` None = the organ's target description).
        timings_ms: wall time of each stage in ms (``time.perf_counter``): ``preprocess`` (frame
            to model input) and ``encode`` (backbone) only when the features were not cached,
            ``prompts`` (prompt maps), ``decode_mask`` (segmentation head and softmax),
            ``postprocess`` (back to the frame, threshold, confidence). Empty when not measured.
    """

    mask: np.ndarray
    probability: np.ndarray
    confidence: float
    organ: str
    prompt: str | None
    frame: int
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class ClassificationResult:
    """Benign/malignant for one frame.

    Attributes:
        probabilities: ``{"benign": p, "malignant": 1 - p}`` (calibrated).
        prompts: the organ's class prompts that drove the zero-shot part.
        organ, frame: what was asked.
        zero_shot_only: True while the learned part of the head is untrained (pure zero-shot).
    """

    probabilities: dict[str, float]
    prompts: dict[str, list[str]]
    organ: str
    frame: int
    zero_shot_only: bool


def features_nbytes(features: FrameFeatures) -> int:
    """Bytes held by the tensors of ``features``."""
    tensors = [*features.vision.levels, features.vision.embedding]
    return sum(t.numel() * t.element_size() for t in tensors)


class FeatureCache:
    """LRU of :class:`FrameFeatures`, bounded by bytes and by entries; not thread-safe on its own.

    Args:
        max_bytes: feature bytes kept at most (an entry larger than this is not kept).
        max_items: entries kept at most.
    """

    def __init__(self, max_bytes: int = FEATURE_CACHE_BYTES, max_items: int = FEATURE_CACHE_SIZE) -> None:
        if max_bytes < 0 or max_items < 0:
            raise SonoInputError("feature cache", f"limits must be >= 0: {max_bytes} B, {max_items} items")
        self.max_bytes = int(max_bytes)
        self.max_items = int(max_items)
        self._entries: OrderedDict[tuple, tuple[FrameFeatures, int]] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: tuple) -> bool:
        return key in self._entries

    def get(self, key: tuple) -> FrameFeatures | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[0]

    def put(self, key: tuple, features: FrameFeatures) -> None:
        size = features_nbytes(features)
        if key in self._entries:
            self.bytes -= self._entries.pop(key)[1]
        if size > self.max_bytes or self.max_items == 0:
            return
        self._entries[key] = (features, size)
        self.bytes += size
        while len(self._entries) > self.max_items or self.bytes > self.max_bytes:
            _, (_, dropped) = self._entries.popitem(last=False)
            self.bytes -= dropped
            self.evictions += 1

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def stats(self) -> dict[str, int]:
        return {
            "entries": len(self._entries),
            "bytes": self.bytes,
            "max_bytes": self.max_bytes,
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
        }
