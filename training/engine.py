"""The training loop every stage shares.

AdamW over the trainable parameters (adapter and the stage's head; the backbone stays frozen),
a cosine learning-rate schedule over all steps, early stopping on the stage's validation metric
(``patience`` validations without improvement; a validation after every epoch unless
``val_every`` says otherwise), the best model kept as a SonoVLM checkpoint
(``best.safetensors``, the format the server loads), and the full training state after every
epoch (``last_state.pt``) for ``--resume``. Mixed precision on CUDA (bf16 where the GPU has it,
else fp16 with a gradient scaler); full precision on CPU. Under torchrun the step module is
wrapped in ``DistributedDataParallel``; only rank 0 writes files.

Progress bars on epochs and batches (tqdm, rank 0); each epoch logs its training loss, the
validation metrics, the learning rate and the throughput in images per second (all ranks
together) to the log, to ``history.json`` and to TensorBoard (``tensorboard/``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sonovlm.errors import SonoInputError
from torch import nn

from .distributed import DistInfo, all_reduce_sum, broadcast, on_main

if TYPE_CHECKING:
    from sonovlm.model import SonoVLM

    from .stages.base import Stage

log = logging.getLogger("training")

BEST_CHECKPOINT = "best.safetensors"
LAST_STATE = "last_state.pt"
HISTORY = "history.json"
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


@dataclass
class TrainSettings:
    """Optimisation settings (the CLI's common options)."""

    epochs: int = 100
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.01
    patience: int = 10
    precision: str = "auto"
    seed: int = 0
    num_workers: int = 0
    grad_clip: float | None = None
    #: AdamW's (beta1, beta2); the reference code uses (0.9, 0.95).
    betas: tuple[float, float] = (0.9, 0.999)
    #: the cosine schedule's floor (the reference's ``eta_min`` 1e-8).
    lr_min: float = 0.0
    #: validate after every ``val_every``-th epoch and the last; ``patience`` counts validations.
    val_every: int = 1

    def __post_init__(self) -> None:
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise SonoInputError("--betas", f"must be in [0, 1), got {list(self.betas)}")
        if not 0.0 <= self.lr_min < self.lr:
            raise SonoInputError("--lr-min", f"must be in [0, --lr), got {self.lr_min}")
        if self.val_every < 1:
            raise SonoInputError("--val-every", f"must be at least 1, got {self.val_every}")
        if self.epochs < 1:
            raise SonoInputError("--epochs", f"must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise SonoInputError("--batch-size", f"must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            raise SonoInputError("--lr", f"must be positive, got {self.lr}")
        if self.precision not in PRECISIONS:
            raise SonoInputError("--precision", f"{self.precision!r} is not one of {', '.join(PRECISIONS)}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (``None`` = full precision)."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def autocast(dtype: torch.dtype | None, device: torch.device) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def to_device(batch: dict, device: torch.device) -> dict:
    non_blocking = device.type == "cuda"
    return {
        k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }


class StepModule(nn.Module):
    """``forward(batch) -> loss`` of one stage: the module DDP wraps (gradients sync on backward)."""

    def __init__(self, model: SonoVLM, stage: Stage) -> None:
        super().__init__()
        self.model = model
        self.stage = stage

    def forward(self, batch: dict) -> torch.Tensor:
        return self.stage.loss(self.model, batch)


def cosine_factor(total_steps: int, floor: float = 0.0) -> Callable[[int], float]:
    """Cosine decay of the learning-rate factor from 1 at step 0 to ``floor`` at ``total_steps``
    (``floor = lr_min / lr``: torch's ``CosineAnnealingLR`` with ``eta_min``)."""

    def factor(step: int) -> float:
        cosine = 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
        return floor + (1.0 - floor) * cosine

    return factor


def _progress(iterable: Any, enabled: bool, desc: str = "", **kwargs: Any) -> Any:
    """A bar on the main process only (:func:`sonovlm.progress.progress`)."""
    if not enabled:
        return iterable
    from sonovlm.progress import progress

    return progress(iterable, desc, **kwargs)


class Trainer:
    """Fits ``model`` for ``stage``; call :meth:`fit`, then the stage evaluates the best model.

    Args:
        model: the SonoVLM (already on ``info.device``, stage parameters set trainable).
        stage: what to optimise and how to validate.
        settings: optimisation settings.
        info: process / device.
        out: run folder (written by rank 0 only).
        make_train_loader: ``epoch -> iterable of batches`` (reseeds augmentation and sampler).
        val_loader: validation batches.
    """

    def __init__(
        self,
        model: SonoVLM,
        stage: Stage,
        settings: TrainSettings,
        info: DistInfo,
        out: Path,
        make_train_loader: Callable[[int], Any],
        steps_per_epoch: int,
        val_loader: Any,
    ) -> None:
        self.model = model
        self.stage = stage
        self.settings = settings
        self.info = info
        self.out = out
        self.make_train_loader = make_train_loader
        self.steps_per_epoch = steps_per_epoch
        self.val_loader = val_loader
        self.dtype = autocast_dtype(settings.precision, info.device)
        params = model.trainable_parameters()
        if not params:
            raise SonoInputError(
                "--adapter", f"nothing to train in stage {stage.name} (adapter none, head frozen)"
            )
        self.optimizer = torch.optim.AdamW(
            params, lr=settings.lr, betas=settings.betas, weight_decay=settings.weight_decay
        )
        total_steps = settings.epochs * max(steps_per_epoch, 1)
        self.lr_factor = cosine_factor(total_steps, settings.lr_min / settings.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16)
        step = StepModule(model, stage)
        if info.distributed:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [info.device.index] if info.device.type == "cuda" else None
            # Adapters in blocks after the deepest level the segmentation head reads get no gradient
            # from the segmentation loss, so unused parameters are expected.
            step = DistributedDataParallel(step, device_ids=device_ids, find_unused_parameters=True)
        self.step_module = step
        self.history: list[dict] = []
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.start_epoch = 0
        self.writer = None
        if info.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(out / "tensorboard"))

    # ------------------------------------------------------------------------------- state
    def _state(self, epoch: int) -> dict:
        return {
            "epoch": epoch,
            "stage": self.stage.name,
            "model_config": self.model.config.to_dict(),
            "trainable": {k: v.cpu() for k, v in self.model.trainable_state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "history": self.history,
            "settings": asdict(self.settings),
            # random state, so a resumed run draws what the uninterrupted one would have drawn
            # (augmentation and sampling are reseeded per epoch by the runner)
            "stage_state": self.stage.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": (
                torch.cuda.get_rng_state(self.info.device) if self.info.device.type == "cuda" else None
            ),
        }

    def resume(self) -> None:
        """Continue from ``last_state.pt`` in the run folder (same stage and model config)."""
        path = self.out / LAST_STATE
        if not path.is_file():
            raise SonoInputError(path, "--resume: no saved training state in this run folder")
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state["stage"] != self.stage.name:
            raise SonoInputError(
                path, f"--resume: saved stage {state['stage']!r}, this run is {self.stage.name!r}"
            )
        saved = {k: v for k, v in state["model_config"].items() if k != "version"}
        current = {k: v for k, v in self.model.config.to_dict().items() if k != "version"}
        if saved != current:
            raise SonoInputError(
                path, "--resume: the saved run used another backbone, adapter or head config"
            )
        self.model.load_trainable_state_dict(
            {k: v.to(self.info.device) for k, v in state["trainable"].items()}
        )
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # the schedule follows this run's --epochs (a resumed run may have been given more)
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs, strict=True):
            group["lr"] = base * self.lr_factor(self.scheduler.last_epoch)
        self.scaler.load_state_dict(state["scaler"])
        self.best_value, self.best_epoch = state["best_value"], state["best_epoch"]
        self.bad_epochs = state["bad_epochs"]
        self.history = list(state["history"])
        self.start_epoch = state["epoch"] + 1
        if "stage_state" in state:
            self.stage.load_state_dict(state["stage_state"])
            torch.set_rng_state(state["torch_rng"])
            if state.get("cuda_rng") is not None and self.info.device.type == "cuda":
                torch.cuda.set_rng_state(state["cuda_rng"], self.info.device)
        else:
            log.warning("%s holds no random state (older run): simulated clicks restart from the seed", path)
        log.info(
            "resumed %s after epoch %d (best %s at epoch %s)",
            path,
            state["epoch"],
            self.best_value,
            self.best_epoch,
        )

    def _save_state(self, epoch: int) -> None:
        path = self.out / LAST_STATE
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self._state(epoch), tmp)
        tmp.replace(path)

    def release(self) -> None:
        """Drop the DDP wrapper, optimizer and TensorBoard writer (after :meth:`fit`)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        self.step_module = None
        self.optimizer = None
        self.scheduler = None
        if self.info.distributed:
            import gc

            import torch.distributed as dist

            dist.barrier()
            gc.collect()

    def _save_epoch(self, epoch: int, improved: bool) -> None:
        if improved:
            self.stage.save_best(self.model, self.out / BEST_CHECKPOINT)
        self._save_state(epoch)
        (self.out / HISTORY).write_text(json.dumps(self.history, indent=2) + "\n")

    def _improved(self, value: float) -> bool:
        if value is None or not math.isfinite(value):
            return False
        if self.best_value is None:
            return True
        return value > self.best_value if self.stage.mode == "max" else value < self.best_value

    # ------------------------------------------------------------------------------- loop
    def _train_epoch(self, epoch: int) -> dict:
        self.step_module.train()
        loader = self.make_train_loader(epoch)
        total_loss, total_images, n_batches = 0.0, 0, 0
        start = time.perf_counter()
        bar = _progress(
            loader, self.info.is_main, total=self.steps_per_epoch, desc=f"epoch {epoch + 1}", leave=False
        )
        for batch in bar:
            batch = to_device(batch, self.info.device)
            with autocast(self.dtype, self.info.device):
                loss = self.step_module(batch)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.settings.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.trainable_parameters(), self.settings.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            images = int(batch["pixel_values"].shape[0])
            loss_value = float(loss.detach())
            total_loss += loss_value * images
            total_images += images
            n_batches += 1
            if self.info.is_main and hasattr(bar, "set_postfix"):
                elapsed = time.perf_counter() - start
                bar.set_postfix(
                    loss=f"{loss_value:.4f}", img_s=f"{total_images * self.info.world_size / elapsed:.1f}"
                )
        elapsed = time.perf_counter() - start
        loss_sum, images_sum, seconds_sum = all_reduce_sum(
            self.info, [total_loss, float(total_images), elapsed]
        )
        seconds = seconds_sum / self.info.world_size  # mean wall time of the ranks
        return {
            "train_loss": loss_sum / max(images_sum, 1),
            "train_images": int(images_sum),
            "train_seconds": seconds,
            "images_per_s": images_sum / max(seconds, 1e-9),
        }

    def fit(self) -> dict:
        """Train until ``epochs`` or early stop; returns the summary (best epoch and value, history)."""
        settings = self.settings
        epochs = range(self.start_epoch, settings.epochs)
        for epoch in _progress(
            epochs, self.info.is_main, desc=self.stage.name, initial=self.start_epoch, total=settings.epochs
        ):
            record = {"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"]}
            record.update(self._train_epoch(epoch))
            if (epoch + 1) % settings.val_every and epoch + 1 < settings.epochs:
                record["best"] = False  # not a validation epoch (--val-every)
                self.history.append(record)
                self._log_epoch(record)
                on_main(self.info, self._save_epoch, epoch, False)
                continue
            self.step_module.eval()
            with autocast(self.dtype, self.info.device):
                record.update(
                    {
                        f"val_{k}": v
                        for k, v in self.stage.validate(self.model, self.val_loader, self.info).items()
                    }
                )
            value = record.get(f"val_{self.stage.monitor}")
            improved = self._improved(value)
            if improved:
                self.best_value, self.best_epoch, self.bad_epochs = value, epoch + 1, 0
            else:
                self.bad_epochs += 1
            record["best"] = improved
            self.history.append(record)
            self._log_epoch(record)
            on_main(self.info, self._save_epoch, epoch, improved)
            stop = broadcast(self.info, self.bad_epochs >= settings.patience)
            if stop:
                log.info(
                    "early stop after epoch %d: no better val_%s for %d validations",
                    epoch + 1,
                    self.stage.monitor,
                    settings.patience,
                )
                break
        if self.writer is not None:
            self.writer.flush()
        if self.best_epoch is None:
            # every validation was undefined (NaN): keep the last model so the run still has one
            on_main(self.info, self.stage.save_best, self.model, self.out / BEST_CHECKPOINT)
            self.best_epoch = self.history[-1]["epoch"] if self.history else 0
        return {
            "best_epoch": self.best_epoch,
            f"best_val_{self.stage.monitor}": self.best_value,
            "epochs_run": len(self.history),
            "stopped_early": bool(self.history) and self.history[-1]["epoch"] < settings.epochs,
            "train_images_per_s": float(np.mean([h["images_per_s"] for h in self.history]))
            if self.history
            else None,
        }

    def _log_epoch(self, record: dict) -> None:
        if not self.info.is_main:
            return
        shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
        log.info("%s", shown)
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and value is not None:
                    self.writer.add_scalar(f"{self.stage.name}/{key}", value, record["epoch"])
