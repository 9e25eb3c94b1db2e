"""What a stage is: which parameters train, its loss, its validation metric, its test evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from sonovlm.model.adapters import adapter_parameters

from ..distributed import DistInfo

if TYPE_CHECKING:
    from sonovlm.model import SonoVLM


def set_trainable(model: SonoVLM, adapter: bool, seg_head: bool, cls_head: bool) -> None:
    """Freeze everything, then unfreeze the adapter and the heads asked for.

    The backbone never trains. A head a stage does not use stays frozen, so its weights (from
    ``--init-from``) are kept and DDP sees no parameter without a gradient.
    """
    model.requires_grad_(False)
    for parameter in adapter_parameters(model.clip):
        parameter.requires_grad_(adapter)
    model.seg_head.requires_grad_(seg_head)
    model.cls_head.requires_grad_(cls_head)


def batches(loader: Any, info: DistInfo, desc: str) -> Any:
    """``loader`` with a progress bar (main process only) for validation and evaluation loops."""
    if not info.is_main:
        return loader
    from sonovlm.progress import progress

    return progress(loader, desc, total=_length(loader), unit="batch", leave=False)


def _length(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


class Stage:
    """One training stage. Subclasses set the class attributes and implement the methods.

    Attributes:
        name: CLI name. task: layout task whose splits it reads (``None``: image-caption pairs).
        monitor: validation metric for early stopping and the best checkpoint; mode: ``max``/``min``.
        trains_seg_head, trains_cls_head: heads that train in this stage.
    """

    name = "stage"
    task: str | None = None
    monitor = "loss"
    mode = "min"
    trains_seg_head = False
    trains_cls_head = False

    def configure(self, model: SonoVLM, freeze_adapter: bool = False) -> None:
        set_trainable(model, not freeze_adapter, self.trains_seg_head, self.trains_cls_head)

    def loss(self, model: SonoVLM, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def validate(self, model: SonoVLM, loader: Any, info: DistInfo) -> dict[str, float]:
        raise NotImplementedError

    def state_dict(self) -> dict:
        """The stage's own random state, saved with the training state for ``--resume``."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""

    def finish(self, model: SonoVLM, val_loader: Any, info: DistInfo) -> dict:
        """After training, with the best weights loaded (calibration); returns what to record."""
        return {}

    def save_best(self, model: SonoVLM, path: Path) -> str:
        from sonovlm.model import save_checkpoint

        return save_checkpoint(model, path)

    @torch.no_grad()
    def evaluate(self, model: SonoVLM, loader: Any, info: DistInfo) -> list[dict]:
        """Per-case test records from this rank (the runner gathers them)."""
        raise NotImplementedError

    def summarize(self, records: list[dict], n_boot: int, seed: int) -> dict:
        raise NotImplementedError
