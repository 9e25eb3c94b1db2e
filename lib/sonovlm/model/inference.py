"""Inference on ultrasound images: what the server and the CLI call.

:class:`Predictor` wraps one :class:`~sonovlm.model.sonovlm_model.SonoVLM` in eval mode on a device.
The backbone runs once per (image, frame): :meth:`Predictor.features` caches the adapted vision
features, and segmentation for any organ or prompt, classification, the embedding and MC-dropout
uncertainty all reuse them (the heads are light).

:func:`load_model` builds the model the CLI and the server use from ``--backbone``, ``--adapter``
and ``--weights``.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..errors import SonoInputError
from ..organs import PATHOLOGIES, organ_label
from .preprocess import FrameGeometry, check_frame, from_model_space
from .sonovlm_model import ModelConfig, SonoVLM, VisionFeatures

if TYPE_CHECKING:
    from ..io import UltrasoundImage

#: Frames whose features a Predictor keeps.
FEATURE_CACHE_SIZE = 8
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
    """

    mask: np.ndarray
    probability: np.ndarray
    confidence: float
    organ: str
    prompt: str | None
    frame: int


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


class Predictor:
    """One model in eval mode on a device, with a small cache of per-frame features.

    Calls are serialised by a lock: safe from several threads, one request at a time.
    """

    def __init__(self, model: SonoVLM, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.model_version: str = model.version
        self.backbone_info: dict[str, Any] = dict(model.backbone_info)
        self._lock = threading.RLock()
        self._cache: OrderedDict[tuple, FrameFeatures] = OrderedDict()

    # ------------------------------------------------------------------------------ features
    def _cache_key(self, image: UltrasoundImage, frame: int) -> tuple:
        try:
            mtime = os.stat(image.source).st_mtime_ns
        except (OSError, TypeError, ValueError):
            mtime = None
        # The pixels' digest keeps in-memory images that share a source name apart.
        digest = hashlib.blake2b(np.ascontiguousarray(image.frames[frame]).tobytes(), digest_size=16)
        return (str(image.source), mtime, frame, self.model_version, digest.hexdigest())

    def features(self, image: UltrasoundImage, frame: int | None = None) -> FrameFeatures:
        """Adapted vision features of ``frame`` (middle frame when None), computed once and cached."""
        frame = check_frame(image, frame)
        key = self._cache_key(image, frame)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
            pixel_values, geometry = self.model.preprocess_frame(image, frame)
            with torch.inference_mode():
                vision = self.model.encode_image(pixel_values.unsqueeze(0).to(self.device))
            features = FrameFeatures(vision=vision, geometry=geometry, frame=frame)
            self._cache[key] = features
            while len(self._cache) > FEATURE_CACHE_SIZE:
                self._cache.popitem(last=False)
            return features

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    def _condition(self, organ: str, prompt: str | None) -> torch.Tensor:
        if prompt is not None and str(prompt).strip():
            return self.model.encode_prompt(prompt)
        return self.model.organ_text[self.model.organ_index(organ)]

    # -------------------------------------------------------------------------------- tasks
    def segment(
        self, image: UltrasoundImage, organ: str, prompt: str | None = None, frame: int | None = None
    ) -> SegmentationResult:
        """Segment ``organ`` (or what ``prompt`` describes) in one frame.

        Raises:
            SonoInputError: unknown organ, frame out of range, prompt too long.
        """
        label = organ_label(organ)
        with self._lock:
            features = self.features(image, frame)
            condition = self._condition(organ, prompt)
            with torch.inference_mode():
                logits = self.model.segment_logits(features.vision, condition)
                probability = torch.softmax(logits.float(), dim=1)[0, 1].cpu()
        frame_probability = from_model_space(probability, features.geometry).numpy().astype(np.float32)
        foreground = frame_probability >= MASK_THRESHOLD
        mask = foreground.astype(np.uint8) * np.uint8(label)
        confidence = float(frame_probability[foreground].mean()) if foreground.any() else 0.0
        return SegmentationResult(
            mask=mask,
            probability=frame_probability,
            confidence=confidence,
            organ=organ,
            prompt=prompt if prompt is not None and str(prompt).strip() else None,
            frame=features.frame,
        )

    def classify(self, image: UltrasoundImage, organ: str, frame: int | None = None) -> ClassificationResult:
        """Benign/malignant probabilities of the ``organ`` lesion in one frame."""
        index = self.model.organ_index(organ)
        with self._lock:
            features = self.features(image, frame)
            organ_ids = torch.tensor([index], device=self.device)
            with torch.inference_mode():
                logits = self.model.classify_logits(features.vision, organ_ids)
                benign = float(self.model.cls_head.probabilities(logits.float())[0, 0])
        return ClassificationResult(
            probabilities=dict(zip(PATHOLOGIES, (benign, 1.0 - benign), strict=True)),
            prompts=self.model.prompt_bank.class_prompts(organ),
            organ=organ,
            frame=features.frame,
            zero_shot_only=self.model.cls_head.is_zero_shot,
        )

    def embedding(self, image: UltrasoundImage, frame: int | None = None) -> np.ndarray:
        """Adapted image embedding ``(D,)`` float32, L2-normalised (for diversity sampling)."""
        features = self.features(image, frame)
        return features.vision.embedding[0].detach().float().cpu().numpy()

    def uncertainty(
        self, image: UltrasoundImage, organ: str, frame: int | None = None, samples: int = 8
    ) -> float:
        """Predictive entropy of the segmentation by MC dropout, in nats (0 = certain, ln 2 = maximal).

        ``samples`` passes of the segmentation head with its dropout active (the cached backbone
        features are reused); the binary entropy of the mean lesion probability is averaged over
        the model-space pixels that show the ultrasound region (padding excluded).
        """
        if samples < 1:
            raise SonoInputError("samples", f"must be at least 1, got {samples}")
        organ_label(organ)
        with self._lock:
            features = self.features(image, frame)
            condition = self._condition(organ, None)
            head = self.model.seg_head
            dropouts = [m for m in head.modules() if isinstance(m, nn.Dropout)]
            levels = [level.expand(samples, -1, -1) for level in features.vision.levels]
            try:
                for module in dropouts:
                    module.train()
                with torch.inference_mode():
                    logits = head(levels, condition)
            finally:
                for module in dropouts:
                    module.eval()
        probability = torch.softmax(logits.float(), dim=1)[:, 1].mean(dim=0).cpu().double()
        p = probability.clamp(1e-12, 1 - 1e-12)
        entropy = -(p * p.log() + (1 - p) * (1 - p).log())
        region = features.geometry.region_in_model_space()
        return float(entropy[region].mean())


def load_model(
    backbone: str | None = None,
    adapter: str | None = None,
    weights: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
) -> SonoVLM:
    """The model behind ``--backbone``, ``--adapter`` and ``--weights``.

    With ``weights`` the checkpoint's backbone is the default and ``adapter``, when given, must be
    the checkpoint's; without, a fresh model (identity adapter, untrained heads: zero-shot
    classification) on ``backbone`` (default: the hub id, which fails offline unless cached).
    """
    from .adapters import AdapterConfig
    from .checkpoint import load_checkpoint, read_checkpoint_metadata

    if weights is not None:
        if adapter is not None:
            recorded = read_checkpoint_metadata(weights)["config"].get("adapter", {}).get("kind")
            if recorded != adapter:
                raise SonoInputError(
                    "--adapter",
                    f"{adapter!r} does not match the checkpoint's adapter {recorded!r} ({weights})",
                )
        return load_checkpoint(weights, backbone=backbone, device=device)
    config = ModelConfig(adapter=AdapterConfig(kind=adapter) if adapter else AdapterConfig())
    if backbone is not None:
        config.backbone = backbone
    model = SonoVLM(config)
    if device is not None:
        model.to(device)
    return model
