"""The one model loader: :class:`RunConfig` says which SonoVLM a command, the server or a training
run wants, :func:`build_model` makes it.

``sonovlm`` commands and the server call :func:`~sonovlm.model.load_model` (backbone, adapter,
weights, device), which is ``build_model(RunConfig(...))``; ``python -m training`` turns its flags
into a RunConfig (``training.runner.run_config``) and calls :func:`build_model` too, so a fresh
model, a checkpoint and a checkpoint with other heads are built the same way everywhere.

Example::

    from sonovlm.model.run_config import RunConfig, build_model

    model = build_model(RunConfig(backbone="tiny", adapter="lora", adapter_options={"lora_rank": 8}))
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import SonoInputError
from ..vocabulary import DEFAULT_ADAPTER, check_adapter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunConfig:
    """Which model to build.

    Attributes:
        backbone: preset, hub id or local folder; ``None``: the checkpoint's, else the default.
        adapter: adapter kind; ``None``: the checkpoint's, else ``default_adapter``. With
            ``weights`` it must be the checkpoint's.
        weights: a SonoVLM checkpoint (``.safetensors``) to start from, or ``None`` for a fresh model.
        device: torch device for the result (``None``: where it was built, the CPU).
        default_adapter: the adapter of a fresh model when ``adapter`` is ``None``.
        adapter_options: further :class:`~sonovlm.model.AdapterConfig` fields (fresh models only).
        heads: :class:`~sonovlm.model.HeadConfig` fields; with ``weights`` and other heads than the
            checkpoint's, the heads are fresh and the checkpoint's adapter and prompts are kept.
        prompt_bank: packaged prompt bank name or bank file (fresh models).
        preprocess_for: ``image_size -> PreprocessConfig`` replacing the backbone's preprocessing
            (fresh models; e.g. the reference code's whole-frame input).
    """

    backbone: str | None = None
    adapter: str | None = None
    weights: str | os.PathLike | None = None
    device: Any = None
    default_adapter: str = DEFAULT_ADAPTER
    adapter_options: Mapping[str, Any] = field(default_factory=dict)
    heads: Mapping[str, Any] = field(default_factory=dict)
    prompt_bank: str | None = None
    preprocess_for: Callable[[int], Any] | None = None

    def __post_init__(self) -> None:
        check_adapter(self.adapter)
        check_adapter(self.default_adapter, "default adapter")


def build_model(config: RunConfig) -> Any:
    """The :class:`~sonovlm.model.SonoVLM` ``config`` names (see :class:`RunConfig`).

    Raises:
        SonoInputError: an adapter that is not the checkpoint's.
        ModelLoadError: a backbone or checkpoint that cannot be loaded.
    """
    model = _from_checkpoint(config) if config.weights is not None else _fresh(config)
    if config.device is not None:
        model.to(config.device)
    return model


def _from_checkpoint(config: RunConfig) -> Any:
    from .backbone import load_backbone
    from .checkpoint import load_checkpoint, read_checkpoint_metadata
    from .sonovlm_model import SonoVLM

    if config.adapter is not None:
        recorded = read_checkpoint_metadata(config.weights)["config"].get("adapter", {}).get("kind")
        if recorded != config.adapter:
            raise SonoInputError(
                "--adapter",
                f"{config.adapter!r} does not match the checkpoint's adapter {recorded!r} ({config.weights})",
            )
    model = load_checkpoint(config.weights, backbone=config.backbone)
    wanted = replace(model.config.heads, **config.heads)
    if wanted == model.config.heads:
        return model
    # Other heads (e.g. --paper after a contrastive run): fresh heads on the checkpoint's adapter
    # and prompt embeddings.
    heads = replace(wanted, levels=model.config.heads.levels)
    model_config = replace(model.config, heads=heads, version=None)
    backbone = load_backbone(model_config.backbone if config.backbone is None else config.backbone)
    fresh = SonoVLM(model_config, backbone=backbone, prompt_bank=model.prompt_bank, encode_prompts=False)
    kept = {k: v for k, v in model.trainable_state_dict().items() if k.startswith(("adapter.", "text."))}
    fresh.load_trainable_state_dict({**fresh.trainable_state_dict(), **kept})
    log.info("heads %s replaced by %s (adapter kept)", model.config.heads.to_dict(), dict(config.heads))
    return fresh


def _fresh(config: RunConfig) -> Any:
    from .adapters import AdapterConfig
    from .backbone import load_backbone
    from .heads import HeadConfig
    from .sonovlm_model import ModelConfig, SonoVLM

    model_config = ModelConfig(
        adapter=AdapterConfig(kind=config.adapter or config.default_adapter, **config.adapter_options),
        heads=HeadConfig(**config.heads),
    )
    if config.backbone:
        model_config.backbone = config.backbone
    if config.prompt_bank:
        model_config.prompt_bank = config.prompt_bank
    if config.preprocess_for is not None:
        backbone = load_backbone(model_config.backbone)
        model_config.preprocess = config.preprocess_for(backbone.image_size)
        return SonoVLM(model_config, backbone=backbone)
    return SonoVLM(model_config)
