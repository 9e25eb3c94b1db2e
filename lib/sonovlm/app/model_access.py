"""The server's use of :mod:`sonovlm.model`: build, load, swap and warm up the served predictor.

A published checkpoint holds only what trains (adapter, heads, text embeddings). When its config
matches the served model's (same backbone geometry, adapter, heads, preprocessing, prompt bank),
it is loaded *into* the served model: one backbone stays in memory. The file is read and checked
completely before the served weights are touched, and a failure while copying restores them.
Otherwise the checkpoint is loaded as a new model beside the served one and swapped in.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelLoadError, SonoInputError
from ..vocabulary import DEFAULT_ADAPTER
from .config import AppConfig

logger = logging.getLogger(__name__)

#: Adapter of a fresh model when ``--conf adapter`` is not given (the paper's Mona).

#: Config entries that must be equal for a checkpoint to load into the served model in place.
_IN_PLACE_KEYS = ("adapter", "heads", "preprocess", "prompt_hash")
_GEOMETRY_KEYS = ("image_size", "patch_size", "vision_layers", "vision_width", "embed_dim")


def new_predictor(config: AppConfig, device: str) -> Any:
    """A fresh model on ``config.backbone`` (untrained adapter and heads; zero-shot classification)."""
    from ..model import Predictor, load_model

    model = load_model(backbone=config.backbone, adapter=config.adapter or DEFAULT_ADAPTER, device=device)
    return Predictor(model, device, precision=config.resolved_precision(device))


def load_predictor(path: str | os.PathLike, config: AppConfig, device: str) -> Any:
    """A new model from a checkpoint, on the configured backbone (its adapter must match if named)."""
    from ..model import Predictor, load_model

    model = load_model(backbone=config.backbone, adapter=config.adapter, weights=path, device=device)
    return Predictor(model, device, precision=config.resolved_precision(device))


def load_training_model(config: AppConfig, store: Any, device: Any) -> tuple[Any, dict[str, Any]]:
    """The model a training run starts from: the served one. Returns ``(SonoVLM, base)`` where
    ``base`` says what it is (``version``, ``source``, ``published_version``)."""
    from ..model import load_model

    current = store.current()
    if current is not None:
        model = load_model(
            backbone=config.backbone, adapter=config.adapter, weights=current.path, device=device
        )
        base = {"source": "published", "published_version": current.version}
    elif config.weights:
        model = load_model(
            backbone=config.backbone, adapter=config.adapter, weights=config.weights, device=device
        )
        base = {"source": f"weights {config.weights}", "published_version": None}
    else:
        model = load_model(backbone=config.backbone, adapter=config.adapter or DEFAULT_ADAPTER, device=device)
        base = {"source": "backbone", "published_version": None}
    base["version"] = model.version
    return model, base


def checkpoint_state(path: str | os.PathLike, model: Any) -> dict[str, Any] | None:
    """The trainable state in checkpoint ``path`` if it fits ``model`` exactly, else ``None``."""
    from safetensors.torch import load_file

    from ..model import read_checkpoint_metadata

    try:
        if not _fits_in_place(model, read_checkpoint_metadata(path)):
            return None
        state = load_file(str(path))
    except (SonoInputError, OSError, ValueError) as exc:
        logger.warning("Cannot read served checkpoint %s: %s", path, exc)
        return None
    expected = model.trainable_state_dict()
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in state):
        return None
    return state


@dataclass
class PreparedModel:
    """A checked checkpoint, ready to serve: call :meth:`activate` while holding the serving lock."""

    version: str
    activate: Callable[[], Any]
    in_place: bool


def prepare(path: str | os.PathLike, config: AppConfig, device: str, served: Any | None) -> PreparedModel:
    """Read and check ``path`` (no served weight changes yet).

    Raises:
        SonoInputError: not a readable SonoVLM checkpoint.
        ModelLoadError: the weights do not fit.
    """
    from safetensors.torch import load_file

    from ..model import Predictor, read_checkpoint_metadata
    from ..model.sonovlm_model import OPTIONAL_STATE_PREFIXES

    metadata = read_checkpoint_metadata(path)
    version = str(metadata["version"])
    if served is None or not _fits_in_place(served.model, metadata):
        predictor = load_predictor(path, config, device)
        return PreparedModel(version=version, activate=lambda: predictor, in_place=False)

    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors' own error type for truncated data
        raise SonoInputError(path, f"unreadable checkpoint tensors ({exc})") from exc
    model = served.model
    expected = model.trainable_state_dict()
    if not any(k.startswith(OPTIONAL_STATE_PREFIXES) for k in state):
        # Saved before those parts existed; load_trainable_state_dict sets them to no effect.
        expected = {k: v for k, v in expected.items() if not k.startswith(OPTIONAL_STATE_PREFIXES)}
    wrong = sorted(set(expected) ^ set(state)) + sorted(
        k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape)
    )
    if wrong:
        raise ModelLoadError(f"checkpoint {str(path)!r}: weights do not fit the served model ({wrong[:4]})")

    def activate() -> Any:
        backup = {k: v.detach().clone() for k, v in model.trainable_state_dict().items()}
        previous_version, previous_card = model.config.version, model.model_card
        try:
            model.load_trainable_state_dict(state)
            model.config.version = version
            model.model_card = metadata["model_card"]
            model.eval()
        except BaseException:
            model.load_trainable_state_dict(backup)
            model.config.version, model.model_card = previous_version, previous_card
            raise
        return Predictor(model, device, precision=served.precision)

    return PreparedModel(version=version, activate=activate, in_place=True)


def _fits_in_place(model: Any, metadata: dict[str, Any]) -> bool:
    recorded = metadata["config"]
    current = model.config.to_dict()
    if any(recorded.get(key) != current.get(key) for key in _IN_PLACE_KEYS):
        return False
    info = metadata["backbone_info"]
    return all(info.get(key) == model.backbone_info.get(key) for key in _GEOMETRY_KEYS)


def describe(predictor: Any) -> dict[str, Any]:
    """Backbone (``NAME (untrained)`` for a preset), adapter and prompt bank of the served model."""
    info = predictor.model.describe()
    name = str(info["backbone"])
    return {
        "backbone": f"{name} (untrained)" if info.get("untrained") else name,
        "backbone_untrained": bool(info.get("untrained")),
        "adapter": info["adapter"],
        "prompt_bank": info.get("prompt_bank"),
        # What the weights are for and learnt from (the demo model: simulated phantoms, not clinical).
        "model_card": info.get("model_card"),
    }


def synthetic_image() -> Any:
    """A small speckled grey frame with a dark blob (warm-up input)."""
    from ..io import UltrasoundImage

    rng = np.random.default_rng(0)
    frame = rng.rayleigh(60.0, size=(96, 128)).clip(0, 255).astype(np.uint8)
    rows, cols = np.ogrid[:96, :128]
    frame[(rows - 48) ** 2 / 300 + (cols - 60) ** 2 / 500 < 1] //= 4
    return UltrasoundImage(frames=frame[None], source="<warm-up>")


def warm_up(predictor: Any) -> None:
    """Run every code path a request takes once (lazy imports, tokenizer, writers, measurement)."""
    from ..io import save_mask
    from ..measure import measure_lesion

    image = synthetic_image()
    predictor.segment(image, "lymph_node")
    predictor.segment(image, "lymph_node", prompt="a round hypoechoic lymph node")
    predictor.classify(image, "lymph_node")
    predictor.embedding(image)
    predictor.clear_cache()
    blob = np.zeros((96, 128), np.uint8)
    blob[30:60, 40:90] = 1
    measure_lesion(blob, (0.1, 0.1))
    with tempfile.TemporaryDirectory() as folder:
        for ext in (".nrrd", ".nii.gz", ".png"):
            save_mask(Path(folder) / f"warm{ext}", blob, spacing_mm=(0.1, 0.1))
