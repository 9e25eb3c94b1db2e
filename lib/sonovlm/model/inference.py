"""Inference on ultrasound images: what the server and the CLI call.

:class:`Predictor` wraps one :class:`~sonovlm.model.sonovlm_model.SonoVLM` in eval mode on a device.
The backbone runs once per (image, frame): :meth:`Predictor.features` caches the adapted vision
features (:class:`FeatureCache`, LRU bounded by bytes, keyed by image source, file time, frame, model
version and pixel digest), and segmentation for any organ, prompt or interaction (clicks, box,
previous mask), classification, the embedding and MC-dropout uncertainty all reuse them (the heads
are light).

``precision`` (:mod:`.precision`: ``auto``, ``fp32``, ``bf16``, ``int8``) picks bf16 autocast
around the forwards or int8 dynamic quantisation of the backbone; results stay float32.

:meth:`Predictor.score_batch` scores images for active learning (embedding and MC-dropout
uncertainty) with one backbone forward per batch, outside the feature cache, and can let other
callers in between the backbone's blocks (see :mod:`.active_learning`).

:func:`load_model` builds the model the CLI and the server use from ``--backbone``, ``--adapter``
and ``--weights``.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import ModelLoadError, SonoInputError
from ..organs import PATHOLOGIES, organ_label
from .active_learning import ImageScore, ScoringInput, install_hooks, mc_dropout, pauses
from .interaction import Interaction, encode_interaction
from .precision import Precision, apply_precision, autocast, resolve_precision
from .preprocess import FrameGeometry, check_frame, from_model_space
from .results import (
    FEATURE_CACHE_BYTES,
    MASK_THRESHOLD,
    ClassificationResult,
    FeatureCache,
    FrameFeatures,
    SegmentationResult,
)
from .sonovlm_model import SonoVLM, VisionFeatures

if TYPE_CHECKING:
    from ..io import UltrasoundImage


class Predictor:
    """One model in eval mode on a device, with a byte-bounded LRU of per-frame features.

    Calls are serialised by a lock: safe from several threads, one request at a time (a
    :meth:`score_batch` with ``between_steps`` releases it at its pause points). Weights loaded
    into the model under a new version (``model.config.version``) drop the cached features on the
    next call.

    Args:
        model: the model to serve.
        device: where it runs.
        feature_cache_bytes: budget of the feature cache (default :data:`FEATURE_CACHE_BYTES`).
        precision: ``fp32`` (default), ``bf16``, ``int8``, ``auto`` or a resolved
            :class:`~sonovlm.model.precision.Precision`; ``int8`` quantises ``model``'s backbone
            in place (see :mod:`sonovlm.model.precision`).

    Raises:
        SonoInputError: a precision this device cannot run (names ``--conf precision``).
    """

    def __init__(
        self,
        model: SonoVLM,
        device: str | torch.device = "cpu",
        feature_cache_bytes: int | None = None,
        precision: str | Precision = "fp32",
    ) -> None:
        self.device = torch.device(device)
        self.precision: Precision = resolve_precision(precision, self.device)
        self.model = model.to(self.device).eval()
        self.precision_details: dict[str, Any] = apply_precision(self.model, self.precision)
        self.model_version: str = model.version
        self._config_version = model.config.version
        self.backbone_info: dict[str, Any] = dict(model.backbone_info)
        self._lock = threading.RLock()
        budget = FEATURE_CACHE_BYTES if feature_cache_bytes is None else feature_cache_bytes
        self._cache = FeatureCache(budget)
        install_hooks(self.model)

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
        return self._features(image, frame)[0]

    def _features(self, image: UltrasoundImage, frame: int | None) -> tuple[FrameFeatures, dict[str, float]]:
        """:meth:`features` and ``{"preprocess": ms, "encode": ms}`` (``{}`` when cached)."""
        frame = check_frame(image, frame)
        with self._lock:
            self._check_version()
            key = self._cache_key(image, frame)
            cached = self._cache.get(key)
            if cached is not None:
                return cached, {}
            start = time.perf_counter()
            pixel_values, geometry = self.model.preprocess_frame(image, frame)
            preprocessed = time.perf_counter()
            with torch.inference_mode(), self._autocast():
                vision = self.model.encode_image(pixel_values.unsqueeze(0).to(self.device))
            if self.precision.resolved == "bf16":  # cached and returned as float32
                vision = VisionFeatures(
                    levels=[level.float() for level in vision.levels], embedding=vision.embedding.float()
                )
            features = FrameFeatures(vision=vision, geometry=geometry, frame=frame)
            self._cache.put(key, features)
            encoded = time.perf_counter()
            return features, {
                "preprocess": (preprocessed - start) * 1000.0,
                "encode": (encoded - preprocessed) * 1000.0,
            }

    def _autocast(self):
        """bf16 autocast on this device for ``bf16``, else a no-op context."""
        return autocast(self.precision, self.device)

    def precision_info(self) -> dict[str, Any]:
        """``{"requested", "resolved", "reason", "backbone_layers"}``: for model info.

        ``backbone_layers``: linear layers of the vision backbone held in int8 or bf16 (0 for fp32).
        """
        return {**self.precision.to_dict(), "backbone_layers": self.precision_details.get("layers", 0)}

    @property
    def model_card(self) -> dict[str, Any] | None:
        """The served checkpoint's model card (what it is, what it learnt from), or None."""
        return dict(self.model.model_card) if self.model.model_card else None

    def _check_version(self) -> None:
        """Drop the cached features when weights of another version were loaded into the model."""
        if self.model.config.version != self._config_version:
            self._cache.clear()
            self._config_version = self.model.config.version
            self.model_version = self.model.version

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    def cache_stats(self) -> dict[str, int]:
        """Feature cache entries, bytes, budget, hits, misses and evictions."""
        with self._lock:
            return self._cache.stats()

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
        return self.segment_interactive(image, organ, None, prompt=prompt, frame=frame)

    def segment_interactive(
        self,
        image: UltrasoundImage,
        organ: str,
        interaction: Interaction | None,
        prompt: str | None = None,
        frame: int | None = None,
    ) -> SegmentationResult:
        """Segment ``organ`` in one frame guided by clicks, a box and/or a previous mask.

        The backbone features come from the cache after the first call on a frame: a click costs
        one head forward. ``interaction`` None (or empty) is :meth:`segment`.

        Raises:
            SonoInputError: as :meth:`segment`, and prompts that do not fit the frame
                (:meth:`Interaction.validate`).
        """
        label = organ_label(organ)
        with self._lock:
            features, timings = self._features(image, frame)
            start = time.perf_counter()
            maps = None
            if interaction is not None and not interaction.is_empty:
                maps = encode_interaction(interaction, features.geometry).unsqueeze(0)
            prompted = time.perf_counter()
            condition = self._condition(organ, prompt)
            with torch.inference_mode(), self._autocast():
                logits = self.model.segment_logits(features.vision, condition, maps)
                probability = torch.softmax(logits.float(), dim=1)[0, 1].cpu()
            decoded = time.perf_counter()
        frame_probability = from_model_space(probability, features.geometry).numpy().astype(np.float32)
        foreground = frame_probability >= MASK_THRESHOLD
        mask = foreground.astype(np.uint8) * np.uint8(label)
        confidence = float(frame_probability[foreground].mean()) if foreground.any() else 0.0
        timings["prompts"] = (prompted - start) * 1000.0
        timings["decode_mask"] = (decoded - prompted) * 1000.0
        timings["postprocess"] = (time.perf_counter() - decoded) * 1000.0
        return SegmentationResult(
            mask=mask,
            probability=frame_probability,
            confidence=confidence,
            organ=organ,
            prompt=prompt if prompt is not None and str(prompt).strip() else None,
            frame=features.frame,
            timings_ms=timings,
        )

    def propagate(
        self,
        image: UltrasoundImage,
        organ: str,
        frame: int,
        seed: Interaction,
        first: int | None = None,
        last: int | None = None,
        prompt: str | None = None,
        on_frame: Callable[[SegmentationResult, int, int], None] | None = None,
    ) -> list[SegmentationResult]:
        """Segment frames ``first..last`` (inclusive; default all) of a cine from one seeded frame.

        The seed frame's mask is ``seed.previous_mask`` as given when the seed holds only a mask
        (confidence 1.0: the user's own), else the interactive result of ``seed`` (the automatic
        segmentation of ``organ`` / ``prompt`` for an empty seed). Then each frame
        after it, one by one, is segmented with its predecessor's mask as previous-mask prompt, and
        each frame before it likewise from its successor.

        ``on_frame(result, done, total)`` is called after each frame (the seed first; ``done``
        frames of ``total`` = ``last - first + 1``); an exception it raises stops the work there
        and propagates (a cancelled request).

        Returns:
            One :class:`SegmentationResult` per frame, ordered by frame.

        Raises:
            SonoInputError: frames out of range or not around ``frame``, bad prompts.
        """
        label = organ_label(organ)
        frame = check_frame(image, frame)
        first = 0 if first is None else check_frame(image, first)
        last = image.n_frames - 1 if last is None else check_frame(image, last)
        if not first <= frame <= last:
            raise SonoInputError("frames", f"range {first}..{last} does not contain the seed frame {frame}")
        clicks_or_box = bool(seed.positive or seed.negative or seed.box is not None)
        only_mask = seed.previous_mask is not None and not clicks_or_box
        if only_mask:
            seed.validate(self.features(image, frame).geometry)
            mask = (np.asarray(seed.previous_mask) != 0).astype(np.uint8) * np.uint8(label)
            seeded = SegmentationResult(
                mask=mask,
                probability=(mask != 0).astype(np.float32),
                confidence=1.0,
                organ=organ,
                prompt=prompt,
                frame=frame,
            )
        else:
            seeded = self.segment_interactive(image, organ, seed, prompt=prompt, frame=frame)
        results = {frame: seeded}
        total = last - first + 1
        if on_frame is not None:
            on_frame(seeded, 1, total)
        for step, stop in ((1, last), (-1, first)):
            previous = seeded
            for index in range(frame + step, stop + step, step):
                guide = Interaction(previous_mask=previous.mask)
                previous = self.segment_interactive(image, organ, guide, prompt=prompt, frame=index)
                results[index] = previous
                if on_frame is not None:
                    on_frame(previous, len(results), total)
        return [results[index] for index in sorted(results)]

    def classify(self, image: UltrasoundImage, organ: str, frame: int | None = None) -> ClassificationResult:
        """Benign/malignant probabilities of the ``organ`` lesion in one frame."""
        index = self.model.organ_index(organ)
        with self._lock:
            features = self.features(image, frame)
            organ_ids = torch.tensor([index], device=self.device)
            with torch.inference_mode(), self._autocast():
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
        _check_samples(samples)
        organ_label(organ)
        with self._lock:
            features = self.features(image, frame)
            return self._dropout_entropy(features.vision.levels, features.geometry, organ, samples)

    def _dropout_entropy(
        self, levels: list[torch.Tensor], geometry: FrameGeometry, organ: str, samples: int
    ) -> float:
        """MC-dropout entropy (nats) of one frame from its ``(1, T, W)`` float32 levels.

        The head's dropout is active in this thread only (:func:`.active_learning.mc_dropout`: its
        modules stay in eval mode), so no other caller ever sees it. The masks come from torch's
        global generator: the same generator state gives the same masks (and result) whichever
        method calls this.
        """
        condition = self._condition(organ, None)
        expanded = [level.expand(samples, -1, -1) for level in levels]
        with torch.inference_mode(), self._autocast(), mc_dropout():
            logits = self.model.seg_head(expanded, condition)
        probability = torch.softmax(logits.float(), dim=1)[:, 1].mean(dim=0).cpu().double()
        p = probability.clamp(1e-12, 1 - 1e-12)
        entropy = -(p * p.log() + (1 - p) * (1 - p).log())
        region = geometry.region_in_model_space()
        return float(entropy[region].mean())

    # ----------------------------------------------------------------------- active learning
    def prepare_scoring(
        self, items: Sequence[tuple[UltrasoundImage, str, bool]], frame: int | None = None
    ) -> list[ScoringInput]:
        """Preprocess ``(image, organ, labelled)`` items for :meth:`score_batch` (no lock, no model
        forward: a helper thread may prepare the next batch while one is scored).

        Raises:
            SonoInputError: an unknown organ or a frame out of range, naming the item.
        """
        config = self.model.preprocess_config
        prepared = []
        for index, (image, organ, labelled) in enumerate(items):
            try:
                organ_label(organ)
                chosen = check_frame(image, frame)
            except SonoInputError as exc:
                source = getattr(image, "source", None)
                raise SonoInputError(f"scoring item {index} ({source})", exc.problem) from exc
            pixel_values, geometry = self.model.preprocess_frame(image, chosen)
            prepared.append(
                ScoringInput(pixel_values, geometry, chosen, organ, bool(labelled), preprocess=config)
            )
        return prepared

    def score_batch(
        self,
        items: Sequence[tuple[UltrasoundImage, str, bool] | ScoringInput],
        samples: int = 8,
        between_steps: Callable[[], None] | None = None,
    ) -> list[ImageScore]:
        """Embedding and (unlabelled items) MC-dropout uncertainty of a batch of frames.

        The backbone runs once on the whole batch, under the predictor's precision; the head's
        ``samples`` dropout passes run image by image, in order, exactly as :meth:`uncertainty`
        does (with the same generator state the results are equal up to float rounding of the
        batched backbone). Nothing enters the feature cache: scoring a folder does not evict the
        features of the image being annotated.

        Args:
            items: ``(image, organ, labelled)`` tuples (the middle frame is scored) or
                :meth:`prepare_scoring` results.
            samples: dropout passes per unlabelled image (>= 1).
            between_steps: called at each pause point of the backbone and head forwards
                (:data:`.active_learning.PAUSE_POINTS`) and before each image's head passes, with
                the predictor lock released: a server lets waiting requests run there
                (``ModelRegistry.yield_to_requests``); the head's dropout is active in this thread
                only. With it, the caller must not hold the predictor lock.

        Returns:
            One :class:`ImageScore` per item, in order.

        Raises:
            SonoInputError: bad organ or frame (naming the item), ``samples`` < 1.
            ModelLoadError: other weights were loaded into the model during a pause.
        """
        _check_samples(samples)
        if not items:
            return []
        prepared = [item for item in items if isinstance(item, ScoringInput)]
        if len(prepared) != len(items):
            if prepared:
                raise SonoInputError("items", "mix of ScoringInput and (image, organ, labelled) items")
            prepared = self.prepare_scoring(items)  # type: ignore[arg-type]
        if between_steps is not None and self._lock._is_owned():
            raise RuntimeError("score_batch with between_steps needs the predictor lock free")
        with self._lock:
            self._check_version()
            version, config_version = self.model_version, self.model.config.version
            config = self.model.preprocess_config
            for index, item in enumerate(prepared):
                if item.preprocess is not None and item.preprocess != config:
                    raise ModelLoadError(
                        f"scoring item {index} was preprocessed for another model; prepare it again"
                    )

            def pause() -> None:
                self._lock.release()
                try:
                    between_steps()  # type: ignore[misc]
                finally:
                    self._lock.acquire()
                if self.model.config.version != config_version or self.model_version != version:
                    raise ModelLoadError(f"the model changed from {version} while scoring; score again")

            pixel_values = torch.stack([item.pixel_values for item in prepared]).to(self.device)
            scores = []
            with pauses(pause if between_steps is not None else None):
                with torch.inference_mode(), self._autocast():
                    vision = self.model.encode_image(pixel_values)
                levels = [level.float() for level in vision.levels]
                embeddings = vision.embedding.detach().float().cpu().numpy()
                for index, item in enumerate(prepared):
                    uncertainty = None
                    if not item.labelled:
                        if between_steps is not None:
                            pause()
                        one = [level[index : index + 1] for level in levels]
                        uncertainty = self._dropout_entropy(one, item.geometry, item.organ, samples)
                    scores.append(ImageScore(embeddings[index].copy(), uncertainty, item.frame))
        return scores


def _check_samples(samples: int) -> None:
    if samples < 1:
        raise SonoInputError("samples", f"must be at least 1, got {samples}")


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
    The one loader behind it is :func:`sonovlm.model.run_config.build_model`.
    """
    from .run_config import RunConfig, build_model

    return build_model(RunConfig(backbone=backbone, adapter=adapter, weights=weights, device=device))
