"""The ``interactive`` infer task: clicks, a box and a previous mask refine one frame's lesion mask.

MONAI Label type ``deepgrow``, dimension 2, so the stock Slicer plugin's DeepGrow/SmartEdit tools
drive it (with type ``deepedit`` and labels the plugin switches to a landmark mode and sends no
clicks). Request params, as the stock plugin sends them:

* ``foreground`` / ``background``: lists of ``[i, j, k]`` (or ``[i, j]``) rounded 0-based voxel
  indices, i = column, j = row, k = slice (= cine frame); points on other frames than the one
  segmented are ignored (counted in the reply's ``ignored_points``), as MONAI Label's 2D deepgrow
  does;
* ``roi``: ``[i_min, i_max, j_min, j_max, k_min, k_max]`` (or without the k pair), inclusive; a
  pair may come reversed (it is sorted); ``[]`` = no box;
* ``slice``: the frame the plugin shows; ``label``: the segment's name;
* SonoVLM's own: ``organ``, ``prompt``, ``frame`` (wins over ``slice``; without either, the k of
  the first point, else the middle frame), ``result_extension``.

A previous mask to correct comes as the request's ``label`` *file* (MONAI Label stores the upload
and puts its path in ``label``; a ``label`` param in ``params`` replaces that path, so a client that
uploads a mask must not also send a segment name). A multi-frame label volume of the cine gives
the mask of the frame segmented.

The mask and JSON are those of the ``segmentation`` task (its writer), plus ``interaction``:
points used and ignored, the box, whether a previous mask was given and whether the served model
was trained with interactions (``interaction_trained``; until it is, prompts do not change the
result).

Every click re-runs only the segmentation head: the decoded image (registry image cache) and the
backbone features (predictor feature cache) are reused.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from monailabel.interfaces.tasks.infer_v2 import InferType

from ..errors import SonoInputError
from ..model.interaction import Interaction
from ..organs import ORGAN_LABELS, organ_label
from .http import input_errors_as_http
from .infer import (
    FrameRequest,
    OrganLookup,
    ResultSink,
    SegmentationTask,
    parse_request,
    precision_of,
    record_model_stages,
    restrict_to_imaging_area,
    segmentation_config,
)
from .latency import clock_of
from .registry import ModelRegistry


@dataclass(frozen=True)
class Point:
    """A click: ``x`` column, ``y`` row, ``frame`` (``None`` when sent as ``[i, j]``)."""

    x: int
    y: int
    frame: int | None


@dataclass(frozen=True)
class Roi:
    """A box ``(x0, y0, x1, y1)`` (ends exclusive) on frames ``frames`` (inclusive; None = all)."""

    box: tuple[int, int, int, int]
    frames: tuple[int, int] | None


def as_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating | str):
        raise SonoInputError(name, f"expected a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise SonoInputError(name, f"expected a number, got {value!r}") from None
    if not np.isfinite(number):
        raise SonoInputError(name, f"expected a finite number, got {value!r}")
    return int(round(number))


def parse_points(value: Any, name: str) -> list[Point]:
    """``[[i, j, k], ...]`` (or ``[i, j]`` items) -> points; ``None``/``[]`` -> no points."""
    if value is None or value == "":
        return []
    if not isinstance(value, list | tuple):
        raise SonoInputError(name, f"expected a list of [i, j, k] points, got {value!r}")
    points = []
    for item in value:
        if not isinstance(item, list | tuple) or len(item) not in (2, 3):
            raise SonoInputError(name, f"each point must be [i, j, k] (column, row, slice), got {item!r}")
        numbers = [as_int(v, name) for v in item]
        points.append(Point(numbers[0], numbers[1], numbers[2] if len(numbers) == 3 else None))
    return points


def parse_roi(value: Any) -> Roi | None:
    """Slicer's inclusive ``[i_min, i_max, j_min, j_max(, k_min, k_max)]`` -> :class:`Roi` (pairs sorted)."""
    if value is None or value == "" or (isinstance(value, list | tuple) and not value):
        return None
    if not isinstance(value, list | tuple) or len(value) not in (4, 6):
        raise SonoInputError("roi", f"expected [i_min, i_max, j_min, j_max, k_min, k_max], got {value!r}")
    numbers = [as_int(v, "roi") for v in value]
    pairs = [tuple(sorted(numbers[i : i + 2])) for i in range(0, len(numbers), 2)]
    (i0, i1), (j0, j1) = pairs[0], pairs[1]
    frames = pairs[2] if len(pairs) == 3 else None
    return Roi((i0, j0, i1 + 1, j1 + 1), frames)  # inclusive -> exclusive ends


def choose_frame(data: dict[str, Any], points: Sequence[Point], n_frames: int, parsed: int) -> int:
    """The frame to segment: ``frame`` if sent (already ``parsed``), else ``slice``, else the first
    point's k, else ``parsed`` (the middle frame)."""
    if data.get("frame") not in (None, "", "middle"):
        return parsed
    source, value = "slice", data.get("slice")
    if value in (None, ""):
        source, value = "foreground/background", next((p.frame for p in points if p.frame is not None), None)
    if value is None:
        return parsed
    frame = as_int(value, source)
    if not 0 <= frame < n_frames:
        raise SonoInputError(source, f"frame {frame} is out of range: the image has {n_frames} frame(s)")
    return frame


@dataclass(frozen=True)
class InteractionRequest:
    """The parsed prompts of one request, on frame ``frame``."""

    interaction: Interaction
    frame: int
    ignored_points: int
    ignored_roi: bool


def parse_interaction(data: dict[str, Any], image: Any, parsed_frame: int) -> InteractionRequest:
    """Clicks, box and previous mask of a request, for frame-sized ``image``; SonoInputError if bad.

    Points and ROI are checked for form here; whether they lie inside the image and its ultrasound
    region is checked by :meth:`Interaction.validate` when the model space is known.
    """
    foreground = parse_points(data.get("foreground"), "foreground")
    background = parse_points(data.get("background"), "background")
    frame = choose_frame(data, foreground + background, image.n_frames, parsed_frame)

    def on_frame(points: list[Point]) -> list[tuple[float, float]]:
        return [(p.x, p.y) for p in points if p.frame is None or p.frame == frame]

    positive, negative = on_frame(foreground), on_frame(background)
    ignored = len(foreground) + len(background) - len(positive) - len(negative)
    roi = parse_roi(data.get("roi"))
    ignored_roi = roi is not None and roi.frames is not None and not roi.frames[0] <= frame <= roi.frames[1]
    box = roi.box if roi is not None and not ignored_roi else None
    previous = read_previous_mask(data.get("label"), image, frame)
    return InteractionRequest(Interaction(positive, negative, box, previous), frame, ignored, ignored_roi)


def read_previous_mask(value: Any, image: Any, frame: int) -> np.ndarray | None:
    """The uploaded ``label`` file's mask of ``frame`` ``(rows, cols)`` uint8, or None.

    ``value`` that is not an existing file is a segment name (the stock plugin's ``label``
    param): no mask. A label volume with one slice per frame of the cine gives slice ``frame``.
    """
    if not isinstance(value, str) or not value or not os.path.isfile(value):
        return None
    from ..io import load_mask
    from ..io.formats import NIFTI, NRRD, sniff

    shape = (image.height, image.width)
    if image.n_frames > 1 and sniff(value) in (NRRD, NIFTI):
        from ..io.volume import read_nifti, read_nrrd

        volume = read_nrrd(value) if sniff(value) == NRRD else read_nifti(value)
        array = volume.array
        if array.ndim == 3 and array.shape[0] == image.n_frames:
            if tuple(array.shape[1:]) != shape:
                raise SonoInputError(
                    "label", f"mask volume is {array.shape}; the image is {image.frames.shape[:3]}"
                )
            return (array[frame] != 0).astype(np.uint8)
    return load_mask(value, shape)


class InteractiveTask(SegmentationTask):
    """Clicks (positive/negative), a box and a previous mask -> the lesion mask of one frame."""

    def __init__(self, registry: ModelRegistry, organ_lookup: OrganLookup, results: ResultSink | None = None):
        # The segmentation task's loading, inference and writer, under another type and config.
        super(SegmentationTask, self).__init__(
            registry,
            organ_lookup,
            results,
            type=InferType.DEEPGROW,
            labels=dict(ORGAN_LABELS),
            description="Interactive lesion segmentation: positive/negative clicks, a box, a previous mask",
            config=segmentation_config(),
        )

    def _load_frame(self, data: dict[str, Any]) -> dict[str, Any]:
        data = super()._load_frame(data)
        with input_errors_as_http(), clock_of(data).stage("parse"):
            image = data["sono_image"]
            request = parse_request(data, image.n_frames, self.organ_lookup(data.get("image_id")))
            prompts = parse_interaction(data, image, request.frame)
            data["sono_request"] = replace(request, frame=prompts.frame)
            data["sono_interaction"] = prompts
        return data

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cpu"):
        request: FrameRequest = data["sono_request"]
        prompts: InteractionRequest = data["sono_interaction"]
        image = data["sono_image"]
        clock = clock_of(data)
        with self.registry.inference() as predictor, input_errors_as_http():
            result = predictor.segment_interactive(
                image, request.organ, prompts.interaction, prompt=request.prompt, frame=request.frame
            )
            data["model_version"] = predictor.model_version
            data["model_card"] = predictor.model_card
            data["precision"] = precision_of(predictor)
            data["interaction_trained"] = predictor.model.seg_head.interaction.is_trained
        record_model_stages(clock, result)
        with clock.stage("postprocess"):
            mask = restrict_to_imaging_area(np.asarray(result.mask).astype(np.uint8), image.imaging_bbox())
            data["pred"] = np.where(mask != 0, organ_label(request.organ), 0).astype(np.uint8)
        data["confidence"] = float(result.confidence)
        return data

    def writer(self, data: dict[str, Any], extension=None, dtype=None) -> tuple[str, dict[str, Any]]:
        path, result = super().writer(data, extension, dtype)
        prompts: InteractionRequest = data["sono_interaction"]
        interaction = prompts.interaction
        result["interaction"] = {
            "foreground": [list(p) for p in interaction.positive],
            "background": [list(p) for p in interaction.negative],
            "box": list(interaction.box) if interaction.box is not None else None,
            "previous_mask": interaction.previous_mask is not None,
            "ignored_points": prompts.ignored_points,
            "ignored_roi": prompts.ignored_roi,
            "interaction_trained": bool(data["interaction_trained"]),
        }
        return path, result
