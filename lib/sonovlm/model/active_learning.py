"""What :meth:`sonovlm.model.Predictor.score_batch` needs besides the predictor: its input and
result types, the pause points of a scoring forward and MC dropout confined to one thread.

Both mechanisms are forward hooks installed once per model (:func:`install_hooks`) that read a
:class:`contextvars.ContextVar`: they act only in the thread that set it, so a click served in
another thread at the same moment (or at a pause) runs the very same modules in plain eval mode.
No module state is ever toggled (the head's dropout modules stay in eval mode).

Pause points (:data:`PAUSE_POINTS`): in the vision tower before each encoder block but the first,
before each block's MLP and before its second linear layer (three steps of about equal work per
block: a ViT-B/16 forward has 35 pauses); in the segmentation head before each upsampling stage
and before the classifier. :meth:`Predictor.score_batch` adds one before each image's head passes.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

#: Where a scoring forward can pause (see the module notes).
PAUSE_POINTS = "vision blocks, their MLPs and second MLP layers; head upsampling stages, classifier"

_pause_callback: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "sonovlm_pause_callback", default=None
)
_mc_dropout: contextvars.ContextVar[bool] = contextvars.ContextVar("sonovlm_mc_dropout", default=False)
_HOOKS_ATTRIBUTE = "_sonovlm_active_learning_hooks"
_hooks_lock = threading.Lock()


@dataclass
class ScoringInput:
    """One frame ready for :meth:`Predictor.score_batch` (:meth:`Predictor.prepare_scoring`).

    Attributes:
        pixel_values: ``(3, S, S)`` float32 model input.
        geometry: frame <-> model-space mapping (its region bounds the uncertainty average).
        frame: 0-based frame index (the middle frame unless asked).
        organ: what the uncertainty is about (the segmentation head's text condition).
        labelled: True = only the embedding (an image with a final label needs no uncertainty).
        preprocess: the preprocessing config used (checked against the model when scored).
    """

    pixel_values: torch.Tensor
    geometry: Any
    frame: int
    organ: str
    labelled: bool
    preprocess: Any = None


@dataclass
class ImageScore:
    """What active learning keeps of one image.

    Attributes:
        embedding: ``(D,)`` float32 adapted image embedding, L2-normalised (diversity).
        uncertainty: MC-dropout predictive entropy in nats (as :meth:`Predictor.uncertainty`);
            None for a labelled image.
        frame: the frame scored.
    """

    embedding: np.ndarray
    uncertainty: float | None
    frame: int


def _pause_hook(module: nn.Module, args: tuple) -> None:
    callback = _pause_callback.get()
    if callback is not None:
        callback()


def _dropout_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
    """An eval-mode ``nn.Dropout`` returns its input; in an MC-dropout thread, drop out instead
    (the same draw as the module in train mode)."""
    if _mc_dropout.get():
        return nn.functional.dropout(args[0], module.p, training=True)
    return None


def install_hooks(model: nn.Module) -> None:
    """The pause-point pre-hooks and the dropout hooks of ``model`` (a SonoVLM), once per model
    (every Predictor of an in-place publish shares them)."""
    with _hooks_lock:
        if getattr(model, _HOOKS_ATTRIBUTE, False):
            return
        points: list[nn.Module] = []
        for index, layer in enumerate(model.clip.vision_model.encoder.layers):
            if index > 0:
                points.append(layer)
            mlp = getattr(layer, "mlp", None)
            if isinstance(mlp, nn.Module):
                points.append(mlp)
                if isinstance(getattr(mlp, "fc2", None), nn.Module):
                    points.append(mlp.fc2)
        head = model.seg_head
        if isinstance(getattr(head, "up", None), nn.ModuleList):
            points.extend(head.up)
        if isinstance(getattr(head, "classifier", None), nn.Module):
            points.append(head.classifier)
        for module in points:
            module.register_forward_pre_hook(_pause_hook)
        for module in head.modules():
            if isinstance(module, nn.Dropout):
                module.register_forward_hook(_dropout_hook)
        setattr(model, _HOOKS_ATTRIBUTE, True)


@contextlib.contextmanager
def pauses(callback: Callable[[], None] | None) -> Iterator[None]:
    """Run ``callback`` at every pause point reached in this thread meanwhile (None: no pauses)."""
    token = _pause_callback.set(callback)
    try:
        yield
    finally:
        _pause_callback.reset(token)


@contextlib.contextmanager
def mc_dropout() -> Iterator[None]:
    """The segmentation head's dropout active in this thread only, meanwhile."""
    token = _mc_dropout.set(True)
    try:
        yield
    finally:
        _mc_dropout.reset(token)
