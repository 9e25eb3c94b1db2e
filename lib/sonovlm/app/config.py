"""The server's configuration, from MONAI Label's ``--conf KEY VALUE`` pairs.

Every key has a default, so ``monailabel start_server --app monailabel_app --studies DIR`` works
alone. Values arrive as strings; they are parsed and checked here, once, with messages that name
the key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..demo_model import DEMO_WEIGHTS_ALIAS, demo_checkpoint
from ..errors import SonoInputError
from ..vocabulary import ADAPTER_KINDS, DEFAULT_BACKBONE, PRECISION_KEY, check_adapter, parse_bool

if TYPE_CHECKING:  # the precision module imports torch; this one must not (--conf parsing only)
    from ..model.precision import Precision

__all__ = ["ADAPTER_KINDS", "AppConfig"]

#: Task names; ``--conf models`` picks a subset (default ``all``).
MODEL_NAMES: tuple[str, ...] = ("segmentation", "classification")

#: The organ choices the infer tasks advertise; ``auto`` first because the stock Slicer plugin sends
#: the first item of each list.
ORGAN_CHOICES_AUTO = "auto"

#: Formats the segmentation task can return a mask in (first = default, what Slicer asks for).
RESULT_EXTENSIONS: tuple[str, ...] = (".nrrd", ".nii.gz", ".png")

#: Image files the datastore lists when ``MONAI_LABEL_DATASTORE_FILE_EXT`` is not set.
DEFAULT_IMAGE_PATTERNS: tuple[str, ...] = (
    "*.dcm",
    "*.DCM",
    "*.dicom",
    "*.png",
    "*.jpg",
    "*.jpeg",
    "*.bmp",
    "*.tif",
    "*.tiff",
    "*.nii.gz",
    "*.nii",
    "*.nrrd",
)


def _parse_bool(key: str, value: str | bool) -> bool:
    return parse_bool(value, f"--conf {key}")


def _parse_number(key: str, value: str | float, minimum: float, number_type: type = int) -> float:
    """``value`` as ``number_type`` (``int`` or ``float``), at least ``minimum``."""
    try:
        number = number_type(value)
    except (TypeError, ValueError):
        expected = "an integer" if number_type is int else "a number"
        raise SonoInputError(f"--conf {key}", f"expected {expected}, got {value!r}") from None
    if number < minimum:
        raise SonoInputError(f"--conf {key}", f"must be at least {minimum}, got {number}")
    return number


@dataclass(frozen=True)
class AppConfig:
    """Parsed server configuration.

    Attributes:
        backbone: hub id, local directory, or preset name (``tiny``, ``vit-b16``).
        adapter: adapter kind (``lora``, ``mona``, ``hybrid``, ``none``); ``None`` = the checkpoint's,
            or Mona for a fresh model.
        weights: checkpoint (safetensors) served while nothing has been published, or ``None``;
            ``demo`` is the packaged demo model (simulated phantoms, not for clinical use).
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``auto`` (bf16 where the CPU or GPU has native bfloat16, else int8 on a CPU),
            ``fp32``, ``bf16`` or ``int8`` (see :mod:`sonovlm.model.precision`).
        models: the task names enabled.
        model_dir: where published models, their history and ``train_stats`` live.
        threads: torch threads for inference in the server (0 = torch's default).
        train_threads: torch threads for a training subprocess; default leaves one core to the server.
        auto_scoring: recompute uncertainty scores and embeddings after each publish.
        scoring_delay_s: debounce before that recomputation starts.
        uncertainty_samples: stochastic forward passes per image for the uncertainty score.
        scoring_batch: images per backbone forward of a scoring pass (requests are still answered
            between the backbone's blocks).
        keep_versions: published checkpoints kept on disk (the served one is always kept).
        warmup: run a dummy forward at start so the first request is as fast as later ones.
    """

    # The real model by default: offline and uncached, the server stops at start with a message
    # saying how to get it; the untrained presets are only served when named.
    backbone: str = DEFAULT_BACKBONE
    adapter: str | None = None
    weights: str | None = None
    device: str = "auto"
    precision: str = "auto"
    models: tuple[str, ...] = MODEL_NAMES
    model_dir: Path = Path("model")
    threads: int = 0
    train_threads: int = 1
    auto_scoring: bool = True
    scoring_delay_s: float = 5.0
    uncertainty_samples: int = 8
    scoring_batch: int = 8
    keep_versions: int = 5
    warmup: bool = True
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_conf(cls, conf: dict[str, str] | None, app_dir: str | os.PathLike) -> AppConfig:
        """Parse MONAI Label's ``conf`` (string values). Raises :class:`SonoInputError` on a bad value."""
        conf = dict(conf or {})
        cores = os.cpu_count() or 1

        models_text = conf.pop("models", "all").strip()
        if models_text in ("", "all"):
            models = MODEL_NAMES
        else:
            models = tuple(m.strip() for m in models_text.split(",") if m.strip())
            unknown = [m for m in models if m not in MODEL_NAMES]
            if unknown or not models:
                raise SonoInputError(
                    "--conf models", f"unknown model(s) {unknown}; choose from all, {', '.join(MODEL_NAMES)}"
                )

        weights = conf.pop("weights", "").strip() or None
        if weights == DEMO_WEIGHTS_ALIAS:  # the packaged demo model (phantoms only, not clinical)
            weights = str(demo_checkpoint())
        if weights is not None and not Path(weights).is_file():
            raise SonoInputError("--conf weights", f"checkpoint file {weights!r} does not exist")

        device = conf.pop("device", "auto").strip() or "auto"
        if device != "auto" and device != "cpu" and not device.startswith("cuda"):
            raise SonoInputError("--conf device", f"expected auto, cpu, cuda or cuda:N, got {device!r}")

        model_dir = conf.pop("model_dir", "").strip()
        model_dir_path = Path(model_dir) if model_dir else Path(app_dir) / "model"

        if "backbone" not in conf and weights is not None:
            # A checkpoint names the backbone it was trained on; serve it there unless told otherwise.
            from ..model import read_checkpoint_metadata

            backbone = str(read_checkpoint_metadata(weights)["config"]["backbone"])
        else:
            backbone = conf.pop("backbone", cls.backbone).strip()
        if not backbone:
            raise SonoInputError("--conf backbone", "must not be empty")

        adapter = check_adapter(conf.pop("adapter", "").strip() or None, "--conf adapter")
        from ..model.precision import parse_precision

        return cls(
            backbone=backbone,
            adapter=adapter,
            weights=weights,
            device=device,
            precision=parse_precision(conf.pop("precision", "auto"), PRECISION_KEY),
            models=models,
            model_dir=model_dir_path.resolve(),
            threads=_parse_number("threads", conf.pop("threads", 0), 0),
            train_threads=_parse_number("train_threads", conf.pop("train_threads", max(1, cores - 1)), 1),
            auto_scoring=_parse_bool("auto_scoring", conf.pop("auto_scoring", "true")),
            scoring_delay_s=_parse_number("scoring_delay_s", conf.pop("scoring_delay_s", 5.0), 0.0, float),
            uncertainty_samples=_parse_number("uncertainty_samples", conf.pop("uncertainty_samples", 8), 2),
            scoring_batch=_parse_number("scoring_batch", conf.pop("scoring_batch", 8), 1),
            keep_versions=_parse_number("keep_versions", conf.pop("keep_versions", 5), 1),
            warmup=_parse_bool("warmup", conf.pop("warmup", "true")),
            extra=conf,
        )

    def resolved_device(self) -> str:
        """The torch device string: ``auto`` becomes ``cuda`` when CUDA is available, else ``cpu``."""
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise SonoInputError("--conf device", f"{self.device!r} asked for but CUDA is not available")
        return self.device

    def resolved_precision(self, device: str | None = None) -> Precision:
        """What ``precision`` means on ``device`` (default :meth:`resolved_device`).

        Raises:
            SonoInputError: naming ``--conf precision`` (int8 on CUDA, bf16 on a GPU without it).
        """
        from ..model.precision import resolve_precision

        return resolve_precision(self.precision, device or self.resolved_device(), PRECISION_KEY)
