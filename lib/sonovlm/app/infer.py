"""The ``segmentation`` and ``classification`` infer tasks (names, types and params are a contract).

Both are MONAI Label :class:`BasicInferTask` subclasses that override what breaks the promises:

* no network of their own: the model comes from the shared :class:`~sonovlm.app.registry.ModelRegistry`
  (``_get_network``), one backbone for every task and one forward at a time;
* images are read with :func:`sonovlm.io.load_image` through the registry's decoded-image cache
  (MONAI's ``LoadImage`` is x-first and ignores ultrasound calibration);
* the mask is written by :func:`sonovlm.io.save_mask` with the input frame's rows × columns and
  its spacing (MONAI Label's writer transposes 2D arrays and drops their spacing);
* bad params or files are HTTP 422 with a message, not 500.

Request params (MONAI Label merges the ``params`` form field into the request): ``organ``
(``auto`` = the image's recorded organ, else ``lymph_node``), ``prompt`` (free text replacing the
organ's prompt), ``frame`` (0-based; default the middle frame), ``result_extension``
(``.nrrd``, ``.nii.gz`` or ``.png``), ``measure`` (default true; false leaves ``measurements``
null — SonoVLM's Slicer extension measures the segment itself, so its clicks skip this work),
``single_lesion`` (default true: the mask is the largest connected lesion with its holes filled,
the one the measurements describe; false sends every component, for multi-focal disease).
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from ..errors import SonoInputError
from ..organs import ORGAN_LABELS, PATHOLOGIES, organ_label
from ..vocabulary import parse_bool
from .compat import InferTaskCompat
from .config import ORGAN_CHOICES_AUTO, RESULT_EXTENSIONS
from .frames import image_key
from .http import input_errors_as_http
from .labels import resolve_organ
from .latency import StageClock, clock_of
from .registry import ModelRegistry
from .seg_result import RESULT_FORMATS, wants_dicom_seg, write_result_seg

logger = logging.getLogger(__name__)

#: Organ used for ``auto`` when the image has no recorded organ.
DEFAULT_ORGAN = "lymph_node"

#: Longest free-text prompt accepted (characters); the text encoder reads 77 tokens anyway.
MAX_PROMPT_CHARS = 1000

#: ``image_id -> recorded organ or None``; ``None`` for an uploaded file.
OrganLookup = Callable[[str | None], str | None]

#: ``(image_id, kind, summary)``: remembers the latest result of a datastore image (for reports).
ResultSink = Callable[[str, str, dict[str, Any]], None]


def _first(value: Any) -> Any:
    """A request value as sent, or the first item of a config list the client left in place."""
    if isinstance(value, list | tuple):
        return value[0] if value else None
    return value


@dataclass(frozen=True)
class FrameRequest:
    """The parsed params of one infer request."""

    organ: str
    organ_source: str
    prompt: str | None
    frame: int
    result_extension: str


def parse_request(
    data: dict[str, Any], n_frames: int, recorded_organ: str | None, with_prompt: bool = True
) -> FrameRequest:
    """Check and parse ``organ``, ``prompt``, ``frame`` and ``result_extension``.

    Raises :class:`SonoInputError` naming the param and the problem.
    """
    organ_value = _first(data.get("organ"))
    if organ_value in (None, "", ORGAN_CHOICES_AUTO):
        organ, source = (recorded_organ, "recorded") if recorded_organ else (DEFAULT_ORGAN, "default")
    else:
        organ, source = resolve_organ(organ_value, recorded_organ), "request"

    prompt = None
    if with_prompt:
        raw = _first(data.get("prompt"))
        if raw is not None and not isinstance(raw, str):
            raise SonoInputError("prompt", f"expected text, got {type(raw).__name__}")
        prompt = raw.strip() if raw and raw.strip() else None
        if prompt is not None and len(prompt) > MAX_PROMPT_CHARS:
            raise SonoInputError("prompt", f"is {len(prompt)} characters long; at most {MAX_PROMPT_CHARS}")

    frame_value = _first(data.get("frame"))
    if frame_value is None or (isinstance(frame_value, str) and frame_value.strip() in ("", "middle")):
        frame = n_frames // 2
    else:
        if isinstance(frame_value, bool) or isinstance(frame_value, float) and not frame_value.is_integer():
            raise SonoInputError("frame", f"expected a frame number, got {frame_value!r}")
        try:
            frame = int(frame_value)
        except (TypeError, ValueError):
            raise SonoInputError("frame", f"expected a frame number (0-based), got {frame_value!r}") from None
        if not 0 <= frame < n_frames:
            raise SonoInputError("frame", f"frame {frame} is out of range: the image has {n_frames} frame(s)")

    extension = _first(data.get("result_extension")) or RESULT_EXTENSIONS[0]
    extension = str(extension).strip().lower()
    extension = extension if extension.startswith(".") else f".{extension}"
    if extension not in RESULT_EXTENSIONS:
        raise SonoInputError(
            "result_extension", f"unsupported {extension!r}; choose one of {', '.join(RESULT_EXTENSIONS)}"
        )
    return FrameRequest(organ, source, prompt, frame, extension)


def precision_of(predictor: Any) -> dict[str, Any] | None:
    """The predictor's precision for a reply (requested, resolved, reason), or None if it has none."""
    info = getattr(predictor, "precision_info", None)
    return info() if callable(info) else None


def restrict_to_imaging_area(mask: np.ndarray, bbox: Sequence[int]) -> np.ndarray:
    """Zero every pixel of ``mask`` (rows, cols) outside ``bbox`` ``(x0, y0, x1, y1)``."""
    x0, y0, x1, y1 = (int(v) for v in bbox)
    inside = np.zeros(mask.shape, dtype=bool)
    inside[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True
    return np.where(inside, mask, 0).astype(mask.dtype)


def slicer_mask_spacing(image: Any) -> tuple[float, float] | None:
    """``(row_mm, col_mm)`` to write a mask file with: the spacing 3D Slicer gives the image's
    own file, so that a client that imports the mask with the file's geometry (the stock MONAI
    Label Slicer plugin: ``sitk.ReadImage`` + ``ImportLabelmapToSegmentationNode`` onto the
    volume it loaded with ``slicer.util.loadVolume``) puts it on the image.

    Slicer reads DICOM through ITK (``vtkITKArchetypeImageSeriesReader``), which takes Pixel
    Spacing and ignores the Sequence of Ultrasound Regions: a calibrated ultrasound DICOM without
    Pixel Spacing is 1 x 1 mm there (``None`` here). Other files (NRRD, NIfTI) keep their own
    spacing, PNG/JPEG have none. The calibrated ``spacing_mm`` stays in the reply's JSON.

    A DICOM's header is read once per file version (key: path, inode, mtime, size), not per click.
    """
    if getattr(image, "modality", None) is None:  # not DICOM
        return image.spacing_mm
    key = image_key(image.source)
    if key is not None:
        with _SPACING_LOCK:
            if key in _DICOM_SPACING:
                _DICOM_SPACING.move_to_end(key)
                return _DICOM_SPACING[key]
    spacing = _dicom_pixel_spacing(image.source)
    if key is not None:
        with _SPACING_LOCK:
            _DICOM_SPACING[key] = spacing
            while len(_DICOM_SPACING) > _SPACING_MEMO_SIZE:
                _DICOM_SPACING.popitem(last=False)
    return spacing


#: Pixel Spacing of recently served DICOM files, by :func:`~sonovlm.app.frames.image_key`.
_DICOM_SPACING: OrderedDict[tuple, tuple[float, float] | None] = OrderedDict()
_SPACING_LOCK = threading.Lock()
_SPACING_MEMO_SIZE = 256


def _dicom_pixel_spacing(path: str) -> tuple[float, float] | None:
    """The file's Pixel Spacing ``(row_mm, col_mm)``, or None (absent, not positive, unreadable)."""
    import pydicom

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PixelSpacing"])
    except (OSError, pydicom.errors.InvalidDicomError):
        return None
    spacing = header.get("PixelSpacing")
    if spacing is None or len(spacing) != 2 or not all(float(v) > 0 for v in spacing):
        return None
    return float(spacing[0]), float(spacing[1])


def _bool_param(request: dict[str, Any], name: str, default: bool) -> bool:
    """A true/false request param: a bool or ``"true"``/``"false"``; absent or blank is ``default``."""
    return parse_bool(_first(request.get(name, default)), name, default)


def wants_measurements(request: dict[str, Any]) -> bool:
    """The request's ``measure`` param (default true)."""
    return _bool_param(request, "measure", True)


def wants_single_lesion(request: dict[str, Any]) -> bool:
    """The request's ``single_lesion`` param (default true; false for multi-focal disease)."""
    return _bool_param(request, "single_lesion", True)


def single_lesion(mask: np.ndarray, label: int) -> np.ndarray:
    """The lesion that :func:`sonovlm.measure.measure_lesion` measures, as the served mask.

    :func:`sonovlm.measure.lesion_mask` (MONAI's ``KeepLargestConnectedComponent``, 8-connected
    as the measurement, then ``FillHoles``, pixel for pixel) of the non-zero pixels of a
    ``(rows, cols)`` mask; returns a ``(rows, cols)`` uint8 mask of 0 and ``label``. Measuring the
    result gives its own area: the contour shown is the one whose size is reported.
    """
    from ..measure import lesion_mask

    return lesion_mask(mask, label)


def lesion_measurements(image: Any, mask: np.ndarray) -> dict[str, Any] | None:
    """:func:`sonovlm.measure.measure_lesion` of ``mask`` with the spacing of the region holding it
    (else the image's); ``None`` for an empty mask."""
    from ..measure import lesion_region, measure_lesion

    if not mask.any():
        return None
    region = lesion_region(image.regions, mask) if image.regions else None
    spacing = region.spacing_mm if region is not None and region.spacing_mm else image.spacing_mm
    return measure_lesion(mask, spacing).to_dict()


def record_model_stages(clock: StageClock, result: Any) -> None:
    """The model's stage times of ``result`` (a SegmentationResult) on ``clock``; the features'
    cache state from whether the backbone ran."""
    timings = dict(getattr(result, "timings_ms", None) or {})
    clock.cache["features"] = "miss" if "encode" in timings else "hit"
    clock.add_all(timings)


def segmentation_config() -> dict[str, Any]:
    """The options ``/info`` lists for a mask-producing task (a fresh dict: MONAI Label keeps it).

    The stock Slicer plugin sends the first item of each list.
    """
    return {
        "organ": [ORGAN_CHOICES_AUTO, *ORGAN_LABELS],
        "prompt": "",
        "frame": "",
        "result_extension": list(RESULT_EXTENSIONS),
        "result_format": list(RESULT_FORMATS),
    }


class _SonoInferTask(InferTaskCompat, BasicInferTask):
    """What both tasks share: the registry's model, image loading, params, info."""

    def __init__(
        self,
        registry: ModelRegistry,
        organ_lookup: OrganLookup,
        results: ResultSink | None,
        type: InferType,
        labels: Any,
        description: str,
        config: dict[str, Any],
    ) -> None:
        super().__init__(
            path=None,
            network=None,
            type=type,
            labels=labels,
            dimension=2,
            description=description,
            config=config,
        )
        # One model on one device for every request: the per-request device list does not apply.
        self._config.pop("device", None)
        self.registry = registry
        self.organ_lookup = organ_lookup
        self.results = results

    #: Whether replies carry ``latency_ms`` (:mod:`sonovlm.app.latency`): the tasks whose stages
    #: cover their work.
    reports_latency = False

    def __call__(self, request, callbacks=None):
        """MONAI Label's run of the task, timed: ``latency_ms`` in the reply (see :mod:`.latency`)."""
        start = time.perf_counter()
        clock = StageClock()
        path, result = super().__call__({**request, "sono_clock": clock}, callbacks)
        if self.reports_latency and isinstance(result, dict) and "sono_clock" not in result:
            result["latency_ms"] = clock.reply((time.perf_counter() - start) * 1000.0)
            result["cache"] = dict(clock.cache)
        return path, result

    def is_valid(self) -> bool:
        return True

    def info(self) -> dict[str, Any]:
        return {**super().info(), **self.registry.info()}

    def served_network(self, device, data):
        """The registry of the one served model (MONAI Label's ``_get_network``, via :mod:`.compat`)."""
        return self.registry

    def pre_transforms(self, data=None) -> Sequence[Callable]:
        return [self._load_frame]

    def inverse_transforms(self, data=None):
        return None

    def post_transforms(self, data=None) -> Sequence[Callable]:
        return []

    # The transforms are plain functions of ours: run them directly. MONAI Label's run_transforms
    # sets its logger's level on every call (which clears the cache of every logger: about 0.4 ms
    # with transformers loaded) and logs each step at INFO; both per request, twice.
    def run_pre_transforms(self, data: dict[str, Any], transforms: Sequence[Callable]) -> dict[str, Any]:
        for transform in transforms:
            data = transform(data)
        return data

    def run_post_transforms(self, data: dict[str, Any], transforms: Sequence[Callable]) -> dict[str, Any]:
        return self.run_pre_transforms(data, transforms)

    def _load_frame(self, data: dict[str, Any]) -> dict[str, Any]:
        """Decode the image (cached), parse the params; SonoInputError becomes HTTP 422."""
        clock = clock_of(data)
        with input_errors_as_http():
            path = data.get("image")
            if not isinstance(path, str) or not path:
                raise SonoInputError("image", "no image given (an id, or an uploaded file)")
            try:
                with clock.stage("decode"):
                    image, decoded = self.registry.images.lookup(path)
            except SonoInputError as exc:
                if data.get("image_id"):
                    raise
                raise SonoInputError("uploaded file", exc.problem) from exc
            clock.cache["image"] = "miss" if decoded else "hit"
            with clock.stage("parse"):
                recorded = self.organ_lookup(data.get("image_id"))
                data["sono_request"] = parse_request(
                    data, image.n_frames, recorded, with_prompt=self.type == InferType.SEGMENTATION
                )
            data["sono_image"] = image
        return data

    def _remember(self, data: dict[str, Any], kind: str, summary: dict[str, Any]) -> None:
        image_id = data.get("image_id")
        if image_id and self.results is not None and not data.get("warm_up"):
            try:
                self.results(image_id, kind, summary)
            except OSError as exc:  # the answer matters more than the report's copy of it
                logger.warning("Could not record the %s result of %s: %s", kind, image_id, exc)


class SegmentationTask(_SonoInferTask):
    """Auto-segmentation of the lesion of one frame; a mask file plus JSON."""

    def __init__(self, registry: ModelRegistry, organ_lookup: OrganLookup, results: ResultSink | None = None):
        super().__init__(
            registry,
            organ_lookup,
            results,
            type=InferType.SEGMENTATION,
            labels=dict(ORGAN_LABELS),
            description="Lesion segmentation (lymph node, breast, thyroid), prompted by organ or text",
            config={**segmentation_config(), "single_lesion": True},
        )

    reports_latency = True

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cpu"):
        request: FrameRequest = data["sono_request"]
        image = data["sono_image"]
        clock = clock_of(data)
        with self.registry.inference() as predictor:
            result = predictor.segment(image, request.organ, prompt=request.prompt, frame=request.frame)
            data["model_version"] = predictor.model_version
            data["model_card"] = predictor.model_card
            data["precision"] = precision_of(predictor)
        record_model_stages(clock, result)
        with clock.stage("postprocess"):
            mask = np.asarray(result.mask).astype(np.uint8)
            if mask.shape != (image.height, image.width):
                raise RuntimeError(
                    f"model returned a {mask.shape} mask for a {image.height}x{image.width} frame"
                )
            mask = restrict_to_imaging_area(mask, image.imaging_bbox())
            label = organ_label(request.organ)
            data["pred"] = np.where(mask != 0, label, 0).astype(np.uint8)
            with input_errors_as_http():
                data["single_lesion"] = wants_single_lesion(data)
            if data["single_lesion"]:
                data["pred"] = single_lesion(data["pred"], label)
        data["confidence"] = float(result.confidence)
        return data

    def writer(self, data: dict[str, Any], extension=None, dtype=None) -> tuple[str, dict[str, Any]]:
        request: FrameRequest = data["sono_request"]
        image = data["sono_image"]
        mask = data["pred"]
        clock = clock_of(data)
        from ..io import save_mask

        with input_errors_as_http():
            measurements = None
            if wants_measurements(data):
                with clock.stage("measure"):
                    measurements = lesion_measurements(image, mask)
            as_dicom_seg = wants_dicom_seg(data)
            with clock.stage("write"):
                if as_dicom_seg:
                    path = write_result_seg(
                        data["image"],
                        mask,
                        request.organ,
                        frame=request.frame,
                        model_version=data["model_version"],
                        measurements=measurements,
                    )
                else:
                    fd, path = tempfile.mkstemp(prefix="sonovlm-mask-", suffix=request.result_extension)
                    os.close(fd)
                    save_mask(path, mask, spacing_mm=slicer_mask_spacing(image))
        result = {
            "organ": request.organ,
            "organ_source": request.organ_source,
            "label": organ_label(request.organ),
            "confidence": data["confidence"],
            "lesion_pixels": int((mask != 0).sum()),
            "single_lesion": data.get("single_lesion", False),  # interactive: the mask as refined
            "measurements": measurements,
            "model_version": data["model_version"],
            "model_card": data["model_card"],
            "precision": data.get("precision"),
            "frame": request.frame,
            "n_frames": image.n_frames,
            "rows": image.height,
            "cols": image.width,
            "spacing_mm": list(image.spacing_mm) if image.spacing_mm else None,
            "prompt": request.prompt,
            "result_extension": ".dcm" if as_dicom_seg else request.result_extension,
            "result_format": "dicom_seg" if as_dicom_seg else "mask",
        }
        with clock.stage("write"):
            self._remember(data, "segmentation", {**result, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        return path, result


class ClassificationTask(_SonoInferTask):
    """Benign or malignant, zero-shot from clinical prompts before training, better after."""

    def __init__(self, registry: ModelRegistry, organ_lookup: OrganLookup, results: ResultSink | None = None):
        super().__init__(
            registry,
            organ_lookup,
            results,
            type=InferType.CLASSIFICATION,
            labels=list(PATHOLOGIES),
            description="Benign or malignant, with the clinical criteria (prompts) behind the zero-shot part",
            config={"organ": [ORGAN_CHOICES_AUTO, *ORGAN_LABELS], "frame": ""},
        )

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cpu"):
        request: FrameRequest = data["sono_request"]
        with self.registry.inference() as predictor:
            data["pred"] = predictor.classify(data["sono_image"], request.organ, frame=request.frame)
            data["model_version"] = predictor.model_version
            data["model_card"] = predictor.model_card
            data["precision"] = precision_of(predictor)
        return data

    def writer(self, data: dict[str, Any], extension=None, dtype=None) -> tuple[None, dict[str, Any]]:
        request: FrameRequest = data["sono_request"]
        result = data["pred"]
        probabilities = {k: float(v) for k, v in result.probabilities.items()}
        total = sum(probabilities.values())
        prediction = [{"label": name, "score": probabilities[name] / total} for name in PATHOLOGIES]
        reply = {
            "prediction": prediction,
            "label": max(prediction, key=lambda p: p["score"])["label"],
            "organ": request.organ,
            "organ_source": request.organ_source,
            "prompts": result.prompts,
            "zero_shot_only": bool(result.zero_shot_only),
            "model_version": data["model_version"],
            "model_card": data["model_card"],
            "precision": data.get("precision"),
            "frame": request.frame,
        }
        self._remember(data, "classification", {**reply, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        return None, reply
