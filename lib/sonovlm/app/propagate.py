"""The ``propagate`` infer task: a lesion seeded on one cine frame, followed through the others.

Request params: the seed as for ``interactive`` (:mod:`sonovlm.app.interactive`): a mask uploaded
as the request's ``label`` file, and/or ``foreground``/``background`` clicks and a ``roi`` box, on
frame ``frame`` (else ``slice``, else the clicks' k, else the middle frame); ``organ``, ``prompt``;
``first_frame`` / ``last_frame`` (inclusive, default the whole cine). Without a mask or clicks the
seed frame's automatic segmentation (organ or prompt) is the seed. Frames after the seed are
segmented one after another, each with its predecessor's mask as previous-mask prompt; frames before
it likewise backwards. With ``"as_job": true`` the request starts a job that a client polls
for per-frame progress (:mod:`sonovlm.app.jobs`). MONAI Label type ``others`` (the stock plugin
does not list it; SonoVLM's Slicer extension calls it).

The result is one NRRD labelmap of the whole cine, frames as slices: sizes ``cols rows frames``
(x fastest), space left-posterior-superior, directions scaled by the spacing in mm (1 mm when
uncalibrated; 1 between frames), origin 0, gzip; frames outside the range are all zero. The JSON
gives a confidence per frame (mean lesion probability over the mask; 1.0 for an uploaded seed mask,
``null`` outside the range) and ``review_first``: the segmented frames, weakest first.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import HTTPException
from monailabel.interfaces.tasks.infer_v2 import InferType

from ..errors import ModelLoadError, SonoInputError
from ..io.volume import write_nrrd_slices
from ..organs import ORGAN_LABELS, organ_label
from .config import ORGAN_CHOICES_AUTO
from .http import input_errors_as_http
from .infer import (
    FrameRequest,
    OrganLookup,
    ResultSink,
    SegmentationTask,
    precision_of,
    restrict_to_imaging_area,
    slicer_mask_spacing,
)
from .interactive import InteractionRequest, InteractiveTask, as_int
from .jobs import JobBoard
from .latency import clock_of
from .registry import ModelRegistry

#: The one result format: a multi-frame labelmap.
PROPAGATE_EXTENSION = ".nrrd"


@dataclass(frozen=True)
class FrameRange:
    """Inclusive frames to segment."""

    first: int
    last: int


def parse_frame_range(data: dict[str, Any], n_frames: int, seed: int) -> FrameRange:
    """``first_frame`` / ``last_frame`` (default 0 and the last frame); must contain ``seed``."""
    bounds = []
    for name, default in (("first_frame", 0), ("last_frame", n_frames - 1)):
        value = data.get(name)
        if isinstance(value, list | tuple):
            value = value[0] if value else None
        frame = default if value in (None, "") else as_int(value, name)
        if not 0 <= frame < n_frames:
            raise SonoInputError(name, f"frame {frame} is out of range: the image has {n_frames} frame(s)")
        bounds.append(frame)
    first, last = bounds
    if not first <= seed <= last:
        raise SonoInputError(
            "first_frame/last_frame", f"range {first}..{last} does not contain the seed frame {seed}"
        )
    return FrameRange(first, last)


class PropagateTask(InteractiveTask):
    """A mask or prompts on one frame -> masks of every frame of the cine (or a range).

    ``jobs``: the server's background propagations (:mod:`sonovlm.app.jobs`); a request that is
    one of them reports each frame to it, and lets waiting requests run between frames.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        organ_lookup: OrganLookup,
        results: ResultSink | None = None,
        jobs: JobBoard | None = None,
    ):
        self.jobs = jobs
        super(SegmentationTask, self).__init__(
            registry,
            organ_lookup,
            results,
            type=InferType.OTHERS,
            labels=dict(ORGAN_LABELS),
            description="Propagate a lesion mask through a cine, frame by frame, with a confidence per frame",
            config={"organ": [ORGAN_CHOICES_AUTO, *ORGAN_LABELS], "prompt": "", "frame": ""},
        )

    def _load_frame(self, data: dict[str, Any]) -> dict[str, Any]:
        extension = data.get("result_extension")
        if isinstance(extension, list | tuple):  # a client that sent the option list back
            extension = extension[0] if extension else None
        if extension not in (None, "", PROPAGATE_EXTENSION, PROPAGATE_EXTENSION[1:]):
            with input_errors_as_http():
                raise SonoInputError("result_extension", f"propagation writes {PROPAGATE_EXTENSION} only")
        data["result_extension"] = PROPAGATE_EXTENSION
        data = super()._load_frame(data)
        with input_errors_as_http():
            prompts: InteractionRequest = data["sono_interaction"]
            frames = parse_frame_range(data, data["sono_image"].n_frames, prompts.frame)
            if data.get("warm_up"):  # the server's start-up pass: one frame is enough
                frames = FrameRange(prompts.frame, prompts.frame)
            data["sono_range"] = frames
        return data

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cpu"):
        request: FrameRequest = data["sono_request"]
        prompts: InteractionRequest = data["sono_interaction"]
        frames: FrameRange = data["sono_range"]
        image = data["sono_image"]
        label = organ_label(request.organ)
        job = self.jobs.running(data.get("propagation_job")) if self.jobs is not None else None
        with self.registry.inference() as predictor, input_errors_as_http():

            def on_frame(result, done: int, total: int) -> None:
                job.frame_done(result.frame, result.confidence, done, total)
                try:
                    self.registry.yield_to_requests(predictor)
                except ModelLoadError as exc:
                    raise HTTPException(status_code=409, detail=str(exc)) from exc

            results = predictor.propagate(
                image,
                request.organ,
                request.frame,
                prompts.interaction,
                frames.first,
                frames.last,
                prompt=request.prompt,
                on_frame=on_frame if job is not None else None,
            )
            data["model_version"] = predictor.model_version
            data["model_card"] = predictor.model_card
            data["precision"] = precision_of(predictor)
        clock = clock_of(data)
        for result in results:  # the frames' model stages, summed
            clock.add_all(getattr(result, "timings_ms", None) or {})
        computed = any("encode" in (getattr(r, "timings_ms", None) or {}) for r in results)
        clock.cache["features"] = "miss" if computed else "hit"
        masks = np.zeros((image.n_frames, image.height, image.width), np.uint8)
        confidence: list[float | None] = [None] * image.n_frames
        bbox = image.imaging_bbox()
        with clock.stage("postprocess"):
            for result in results:
                mask = restrict_to_imaging_area(np.asarray(result.mask).astype(np.uint8), bbox)
                masks[result.frame] = np.where(mask != 0, label, 0)
                confidence[result.frame] = float(result.confidence)
        data["pred"] = masks
        data["confidence"] = confidence
        return data

    def writer(self, data: dict[str, Any], extension=None, dtype=None) -> tuple[str, dict[str, Any]]:
        request: FrameRequest = data["sono_request"]
        frames: FrameRange = data["sono_range"]
        image = data["sono_image"]
        masks: np.ndarray = data["pred"]
        confidence: list[float | None] = data["confidence"]
        clock = clock_of(data)
        with clock.stage("write"):
            fd, path = tempfile.mkstemp(prefix="sonovlm-cine-mask-", suffix=PROPAGATE_EXTENSION)
            os.close(fd)
            # The cine as one labelmap, frames as slices (see module notes).
            write_nrrd_slices(path, np.asarray(masks, dtype=np.uint8), slicer_mask_spacing(image))
        segmented = list(range(frames.first, frames.last + 1))
        result = {
            "organ": request.organ,
            "organ_source": request.organ_source,
            "label": organ_label(request.organ),
            "seed_frame": request.frame,
            "first_frame": frames.first,
            "last_frame": frames.last,
            "n_frames": image.n_frames,
            "rows": image.height,
            "cols": image.width,
            "spacing_mm": list(image.spacing_mm) if image.spacing_mm else None,
            "confidence": confidence,
            "lesion_pixels": [int((m != 0).sum()) for m in masks],
            "review_first": sorted(segmented, key=lambda f: (confidence[f], f)),
            "model_version": data["model_version"],
            "model_card": data["model_card"],
            "precision": data.get("precision"),
            "prompt": request.prompt,
            "result_extension": PROPAGATE_EXTENSION,
            "format": "NRRD labelmap (cols, rows, frames), frames as slices; zero outside first..last",
        }
        with clock.stage("write"):
            self._remember(data, "propagation", {**result, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        return path, result
