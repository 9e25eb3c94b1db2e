"""Checkpoints: one safetensors file of what was trained, with the model's config in its metadata.

The file holds the adapter and head weights, the classification temperature and the cached text
embeddings, never the backbone (that comes from its hub id, directory or preset, as recorded). Its
safetensors metadata (string -> string) carries:

* ``format``: ``sonovlm-checkpoint``, ``format_version``: ``1``;
* ``config``: :class:`~sonovlm.model.sonovlm_model.ModelConfig` as JSON (backbone, adapter, prompt
  bank name and hash, preprocessing, heads, version id); ``heads.levels`` records the vision blocks
  the segmentation head reads (a checkpoint saved before they were recorded is loaded with the
  blocks of that time, :func:`~sonovlm.model.heads.legacy_levels`);
* ``backbone_info``: the backbone's info (``untrained`` for presets) and geometry, JSON;
* ``prompt_bank``: the bank's texts (JSON), so class prompts reported later are the ones embedded;
* ``version``, ``created`` (UTC, ISO 8601);
* optionally ``model_card``: JSON object saying what the model is and what it learnt from (for
  example the demo model's ``{"name", "trained_on", "clinical_use": false, "notice"}``); it is
  carried by every checkpoint saved from a model loaded with one, so a model retrained from the
  demo still says where it came from.

Writes are atomic: a temporary file in the same directory, fsync, then ``os.replace``; a reader sees
the old checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelLoadError, SonoInputError
from .backbone import Backbone, load_backbone
from .heads import legacy_levels
from .prompts import PromptBank
from .sonovlm_model import ModelConfig, SonoVLM

FORMAT = "sonovlm-checkpoint"
FORMAT_VERSION = "1"

#: Geometry keys a backbone must match to take a checkpoint.
_GEOMETRY_KEYS = ("image_size", "patch_size", "vision_layers", "vision_width", "embed_dim")


def save_checkpoint(model: SonoVLM, path: str | os.PathLike) -> str:
    """Save ``model``'s trainable state to ``path`` atomically; returns the new version id.

    The version id is ``<UTC time>-<first 12 hex digits of the state's sha256>``; it is also set on
    ``model.config.version``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    created = _dt.datetime.now(_dt.UTC)
    version = f"{created:%Y%m%dT%H%M%SZ}-{model.state_hash()[:12]}"
    config = model.config.to_dict()
    config["version"] = version
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(config),
        "backbone_info": json.dumps(model.backbone_info),
        "prompt_bank": json.dumps(model.prompt_bank.to_dict(), ensure_ascii=False),
        "version": version,
        "created": created.isoformat(timespec="seconds"),
    }
    if model.model_card:
        metadata["model_card"] = json.dumps(model.model_card, ensure_ascii=False)
    state = model.trainable_state_dict()
    tensors = {key: tensor.detach().cpu().contiguous().clone() for key, tensor in state.items()}
    _write_atomic(path, tensors, metadata)
    model.config.version = version
    return version


def _write_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        save_file(tensors, temporary, metadata=metadata)
        with open(temporary, "rb") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def set_checkpoint_card(path: str | os.PathLike, card: dict[str, Any]) -> None:
    """Write ``card`` as the ``model_card`` of the checkpoint at ``path`` (atomically; weights,
    version and the rest of the metadata unchanged).

    Raises:
        SonoInputError: not a SonoVLM checkpoint, or ``card`` is not a JSON object with a ``name``.
    """
    from safetensors import safe_open

    if not isinstance(card, dict) or not str(card.get("name", "")).strip():
        raise SonoInputError("model_card", "must be a JSON object with a non-empty 'name'")
    path = Path(path)
    read_checkpoint_metadata(path)
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
    metadata["model_card"] = json.dumps(card, ensure_ascii=False)
    _write_atomic(path, tensors, metadata)


def read_checkpoint_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed metadata of a checkpoint (``config``, ``backbone_info``, ``prompt_bank`` as dicts).

    Raises:
        SonoInputError: missing file, not a safetensors file, or not a SonoVLM checkpoint.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise SonoInputError(path, "no such checkpoint file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as exc:  # safetensors raises its own SafetensorError (not an OSError) for bad files
        raise SonoInputError(path, f"not a safetensors checkpoint ({exc})") from exc
    if metadata.get("format") != FORMAT:
        raise SonoInputError(path, f"not a SonoVLM checkpoint (its metadata has no format {FORMAT!r})")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise SonoInputError(
            path,
            f"checkpoint format version {metadata.get('format_version')!r}; "
            f"this SonoVLM reads {FORMAT_VERSION!r}",
        )
    parsed: dict[str, Any] = dict(metadata)
    for key in ("config", "backbone_info", "prompt_bank"):
        try:
            parsed[key] = json.loads(metadata[key])
        except (KeyError, ValueError) as exc:
            raise SonoInputError(path, f"checkpoint metadata {key!r} missing or not JSON") from exc
    if "model_card" in metadata:
        try:
            parsed["model_card"] = json.loads(metadata["model_card"])
        except ValueError as exc:
            raise SonoInputError(path, "checkpoint metadata 'model_card' is not JSON") from exc
        if not isinstance(parsed["model_card"], dict):
            raise SonoInputError(path, "checkpoint metadata 'model_card' is not a JSON object")
    else:
        parsed["model_card"] = None
    return parsed


def load_checkpoint(
    path: str | os.PathLike,
    backbone: str | os.PathLike | Backbone | None = None,
    device: str | torch.device | None = None,
) -> SonoVLM:
    """Rebuild the model a checkpoint was saved from; outputs equal the saved model's exactly.

    Args:
        path: the ``.safetensors`` checkpoint.
        backbone: the backbone to load it onto (preset, hub id, directory, or a loaded
            :class:`Backbone`); ``None`` = the one recorded in the checkpoint. Its geometry must
            match the recorded one.
        device: where to put the model (default CPU).

    Raises:
        SonoInputError: not a (readable) SonoVLM checkpoint, or an invalid config inside.
        ModelLoadError: backbone missing, or not the geometry the checkpoint was trained on, or
            weights that do not fit.
    """
    from safetensors.torch import load_file

    metadata = read_checkpoint_metadata(path)
    try:
        config = ModelConfig.from_dict(metadata["config"])
        bank = PromptBank.from_dict(metadata["prompt_bank"], source=f"{path} (prompt bank)")
    except SonoInputError as exc:
        raise SonoInputError(path, f"invalid checkpoint config: {exc}") from exc
    levels_recorded = config.heads.levels is not None
    if bank.content_hash != config.prompt_hash:
        raise SonoInputError(path, "checkpoint prompt bank does not match its recorded hash")

    if isinstance(backbone, Backbone):
        loaded = backbone
    else:
        loaded = load_backbone(config.backbone if backbone is None else str(backbone))
    recorded = metadata["backbone_info"]
    mismatched = {
        key: (recorded.get(key), loaded.info.get(key))
        for key in _GEOMETRY_KEYS
        if recorded.get(key) != loaded.info.get(key)
    }
    if mismatched:
        details = ", ".join(f"{k} {a} != {b}" for k, (a, b) in mismatched.items())
        raise ModelLoadError(
            f"checkpoint {str(path)!r} was trained on backbone {recorded.get('name')!r}; backbone "
            f"{loaded.info.get('name')!r} has a different geometry ({details})"
        )

    drawn, now = recorded.get("weights_fingerprint"), loaded.info.get("weights_fingerprint")
    if drawn and now and drawn != now:
        raise ModelLoadError(
            f"checkpoint {str(path)!r} was trained on preset {recorded.get('name')!r} with random weights "
            f"{drawn}, but this torch/transformers draws {now} from the same seed (another version than "
            "the lock's?); install requirements/lock.txt or retrain (python -m training demo-model)"
        )

    if not levels_recorded:
        # Saved before checkpoints recorded the head's blocks: it was trained on the old rule's.
        config.heads = replace(config.heads, levels=legacy_levels(loaded.vision_layers))
    model = SonoVLM(config, backbone=loaded, prompt_bank=bank, encode_prompts=False)
    try:
        state = load_file(str(path))
    except Exception as exc:  # SafetensorError for truncated data
        raise SonoInputError(path, f"unreadable checkpoint tensors ({exc})") from exc
    try:
        model.load_trainable_state_dict(state)
    except ModelLoadError as exc:
        raise ModelLoadError(f"checkpoint {str(path)!r}: {exc}") from exc
    model.config.version = metadata["version"]
    model.model_card = metadata["model_card"]
    if device is not None:
        model.to(device)
    model.eval()
    return model
