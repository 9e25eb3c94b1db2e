"""What both server trainers share (:mod:`sonovlm.app.train` says what they change from MONAI
Label): :class:`SonoTrainer`, a :class:`BasicTrainTask` over the served model, with the engines,
handlers, TensorBoard writer, stats, figures and the compare-then-publish step.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Events
from ignite.handlers import EarlyStopping
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import (
    LrScheduleHandler,
    StatsHandler,
    TensorBoardStatsHandler,
    ValidationHandler,
    from_engine,
    stopping_fn_from_metric,
)
from monai.inferers import SimpleInferer
from monailabel.tasks.train.basic_train import BasicTrainTask, Context
from torch import nn

from .. import figures
from ..errors import SonoInputError
from ..model.augment import train_transforms
from .atomic import write_json_atomic
from .compat import TrainTaskCompat
from .config import AppConfig
from .model_store import ModelStore
from .train_data import (
    DEFAULT_AUGMENT,
    DEFAULT_TRAIN_CONFIG,
    FinaliseTrainingItem,
    LoadTrainingItem,
    _check_train_request,
    prepare_organ_batch,
    split_by_image,
)

logger = logging.getLogger(__name__)


class _TaskOutput(nn.Module):
    """The model's forward reduced to one task's logits (what MONAI's engines expect)."""

    def __init__(self, model: nn.Module, key: str) -> None:
        super().__init__()
        self.model = model
        self.key = key

    def forward(self, pixel_values: torch.Tensor, organ_ids: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values, organ_ids=organ_ids)[self.key]


class _SegmentationOutput(nn.Module):
    """Segmentation logits; in training, with ``targets``, a share of the batches is interactive.

    Args:
        model: the :class:`~sonovlm.model.SonoVLM` being trained.
        interactive_fraction: share of training batches given simulated prompts.
        seed: seed of the prompt simulation.
    """

    def __init__(self, model: nn.Module, interactive_fraction: float, seed: int = 0) -> None:
        super().__init__()
        self.model = model
        self.interactive_fraction = interactive_fraction
        self.rng = np.random.default_rng(seed)
        self.interactive_batches = 0

    def forward(
        self, pixel_values: torch.Tensor, organ_ids: torch.Tensor, targets: torch.Tensor | None = None
    ) -> torch.Tensor:
        from ..model.click_simulation import training_prompt_maps

        model = self.model
        features = model.encode_image(pixel_values)
        organ_ids = torch.as_tensor(organ_ids, device=model.organ_text.device).long().reshape(-1)
        condition = model.organ_text[organ_ids]
        maps = None
        if self.training and targets is not None:
            maps = training_prompt_maps(
                model, features, condition, targets, self.rng, self.interactive_fraction
            )
            self.interactive_batches += maps is not None
        return model.segment_logits(features, condition, maps)


class SonoTrainer(TrainTaskCompat, BasicTrainTask):
    """Shared trainer logic; subclasses set the task and its metrics."""

    task = ""
    output_key = ""
    key_metric = ""

    def __init__(self, app_config: AppConfig, store: ModelStore, description: str) -> None:
        self.app_config = app_config
        self.store = store
        super().__init__(
            model_dir=str(Path(store.model_dir) / "runs" / self.task),
            description=description,
            config=dict(DEFAULT_TRAIN_CONFIG),
            amp=torch.cuda.is_available(),
            stats_path=str(store.stats_path(self.task)),
            n_saved=1,
            tracking=None,
        )
        for key in ("pretrained", "multi_gpu", "gpus", "tracking_uri", "tracking_experiment_name"):
            self._config.pop(key, None)
        self._config.update({"dataset": "CacheDataset", "dataloader": "ThreadDataLoader", "tracking": "none"})
        self._model: Any = None
        self._base: dict[str, Any] = {}
        self._base_state: dict[str, torch.Tensor] = {}
        self._epochs: list[dict[str, Any]] = []
        self._best: tuple[float, dict[str, torch.Tensor]] | None = None

    def config(self) -> dict[str, Any]:
        return self._config

    def stats(self) -> dict[str, Any]:
        """The last run's statistics; a run killed mid-way (``DELETE /train/``) shows as stopped."""
        stats = super().stats()
        if stats.get("state") == "running" and not _training_process_running():
            stats["state"] = "stopped"
            stats["note"] = (
                "the run ended before publishing (stopped or failed); the served model is unchanged"
            )
        return stats

    # -- run ---------------------------------------------------------------------------------------

    def __call__(self, request: dict[str, Any], datastore) -> dict[str, Any]:
        torch.set_num_threads(self.app_config.train_threads)
        request = {**self._config, **request, "multi_gpu": False, "pretrained": False}
        _check_train_request(request)
        logger.info("Training %s with %d thread(s)", self.task, torch.get_num_threads())
        return super().__call__(request, datastore)

    def pre_process(self, request: dict[str, Any], datastore) -> list[dict[str, Any]]:
        items = self.items(datastore)
        if not items:
            raise SonoInputError("training", self.no_items_message)
        logger.info("%d training item(s) for %s", len(items), self.task)
        return items

    def items(self, datastore) -> list[dict[str, Any]]:
        raise NotImplementedError

    no_items_message = ""

    def partition_datalist(self, context: Context, shuffle: bool = False):
        train, val = split_by_image(context.datalist, float(context.request.get("val_split", 0.0)))
        logger.info("Split by image: %d training item(s), %d validation item(s)", len(train), len(val))
        return train, val

    def training_device(self, context: Context) -> torch.device:
        return torch.device(self.app_config.resolved_device())

    def network(self, context: Context) -> nn.Module:
        from .model_access import load_training_model

        self._model, self._base = load_training_model(self.app_config, self.store, context.device)
        self._base_state = {
            k: v.detach().cpu().clone() for k, v in self._model.trainable_state_dict().items()
        }
        self.select_trainable(self._model)
        counts = sum(p.numel() for p in self._model.parameters() if p.requires_grad)
        logger.info(
            "Base model %s (%s); %d trainable parameters", self._base["version"], self._base["source"], counts
        )
        return self.task_output(self._model, context)

    def task_output(self, model: nn.Module, context: Context) -> nn.Module:
        """The network MONAI's engines run: the model reduced to this task's logits."""
        return _TaskOutput(model, self.output_key)

    #: ``prepare_batch`` of the training engine (validation always uses :func:`prepare_organ_batch`).
    train_prepare_batch = staticmethod(prepare_organ_batch)

    def select_trainable(self, model: nn.Module) -> None:
        raise NotImplementedError

    def optimizer(self, context: Context):
        params = [p for p in context.network.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=float(context.request["learning_rate"]))

    def lr_scheduler_handler(self, context: Context):
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            context.optimizer, T_max=max(1, context.max_epochs)
        )
        return LrScheduleHandler(scheduler, print_lr=False)

    def train_inferer(self, context: Context):
        return SimpleInferer()

    def val_inferer(self, context: Context):
        return SimpleInferer()

    def train_pre_transforms(self, context: Context):
        """Load, the ultrasound + geometric augmentation ``python -m training`` uses, normalise."""
        config = self._model.preprocess_config
        steps: list[Any] = [LoadTrainingItem(config, self.task)]
        mode = context.request.get("augment", DEFAULT_AUGMENT)
        if mode != "none":
            steps.append(train_transforms(mode))
        return [*steps, FinaliseTrainingItem(config)]

    def val_pre_transforms(self, context: Context):
        config = self._model.preprocess_config
        return [LoadTrainingItem(config, self.task), FinaliseTrainingItem(config)]

    def summary_writer(self, context: Context):
        """The run's one TensorBoard writer on ``context.events_dir`` (MONAI Label's events folder)."""
        writer = getattr(context, "summary_writer", None)
        if writer is None:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=context.events_dir)
            context.summary_writer = writer
            logger.info("TensorBoard events in %s", context.events_dir)
        return writer

    def train_handlers(self, context: Context):
        loss = from_engine(["loss"], first=True)
        handlers: list[Any] = [
            self.lr_scheduler_handler(context),
            StatsHandler(tag_name="train_loss", output_transform=loss),
            TensorBoardStatsHandler(
                summary_writer=self.summary_writer(context), tag_name="train_loss", output_transform=loss
            ),
        ]
        if context.evaluator:
            handlers.append(ValidationHandler(1, validator=context.evaluator, epoch_level=True))
        return handlers

    def val_handlers(self, context: Context):
        return [
            StatsHandler(output_transform=lambda x: None, iteration_log=False),
            TensorBoardStatsHandler(
                summary_writer=self.summary_writer(context),
                output_transform=lambda x: None,
                iteration_log=False,
            ),
        ]

    def build_evaluator(self, context: Context):
        if not context.val_datalist:
            return None
        return SupervisedEvaluator(
            device=context.device,
            val_data_loader=self.val_data_loader(context),
            network=context.network,
            inferer=self.val_inferer(context),
            prepare_batch=prepare_organ_batch,
            postprocessing=self.checked_transforms(self.val_post_transforms(context), "Validation", "post"),
            key_val_metric=self.val_key_metric(context),
            additional_metrics=self.val_additional_metrics(context),
            val_handlers=self.val_handlers(context),
            amp=self.amp,
        )

    def build_trainer(self, context: Context):
        return SupervisedTrainer(
            device=context.device,
            max_epochs=context.max_epochs,
            train_data_loader=self.train_data_loader(context),
            network=context.network,
            optimizer=context.optimizer,
            loss_function=self.loss_function(context),
            inferer=self.train_inferer(context),
            prepare_batch=self.train_prepare_batch,
            amp=self.amp,
            postprocessing=self.checked_transforms(self.train_post_transforms(context), "Training", "post"),
            key_train_metric=self.train_key_metric(context),
            train_handlers=self.train_handlers(context),
        )

    def finalize(self, context: Context) -> None:
        self._epochs = []
        self._best = None
        self._losses: list[float] = []
        self._lr: float | None = None
        context.trainer.add_event_handler(Events.EPOCH_STARTED, lambda _: self._epoch_started(context))
        context.trainer.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        source = context.evaluator or context.trainer
        source.add_event_handler(Events.EPOCH_COMPLETED, lambda _: self._epoch_completed(context))
        context.trainer.add_event_handler(Events.COMPLETED, lambda _: self._publish(context))
        patience = int(context.request.get("early_stop_patience", 0))
        if patience > 0 and context.evaluator:
            context.evaluator.add_event_handler(
                Events.EPOCH_COMPLETED,
                EarlyStopping(patience, stopping_fn_from_metric(self.key_metric), trainer=context.trainer),
            )
        self._write_stats(context, {"state": "running"})

    # -- per epoch ---------------------------------------------------------------------------------

    def _epoch_started(self, context: Context) -> None:
        self._losses.clear()
        self._lr = float(context.optimizer.param_groups[0]["lr"])  # the rate this epoch trains with

    def _iteration_completed(self, engine) -> None:
        output = engine.state.output
        loss = (output[0] if isinstance(output, list) else output)["loss"]
        self._losses.append(float(loss))

    def _epoch_completed(self, context: Context) -> None:
        trainer, evaluator = context.trainer, context.evaluator
        record: dict[str, Any] = {"epoch": trainer.state.epoch, "lr": self._lr}
        if self._losses:
            record["train_loss"] = sum(self._losses) / len(self._losses)
        for name, value in trainer.state.metrics.items():
            record[name] = _finite(value)
        interactive = getattr(context.network, "interactive_batches", None)
        if interactive is not None:  # cumulative count of batches trained with simulated prompts
            record["interactive_batches"] = int(interactive)
        if evaluator is not None:
            for name, value in evaluator.state.metrics.items():
                record[name] = _finite(value)
        self._epochs.append(record)
        writer = self.summary_writer(context)
        if self._lr is not None:
            writer.add_scalar("learning_rate", self._lr, record["epoch"])
        if "train_loss" in record:
            writer.add_scalar("train_loss_epoch", record["train_loss"], record["epoch"])
        writer.flush()
        score = record.get(self.key_metric) if evaluator is not None else float(trainer.state.epoch)
        score = -math.inf if score is None else score
        if self._best is None or score > self._best[0]:
            state = {k: v.detach().cpu().clone() for k, v in self._model.trainable_state_dict().items()}
            self._best = (score, state)
        self._write_stats(context, {"state": "running"})

    def _write_stats(self, context: Context, extra: dict[str, Any]) -> None:
        stats = {
            "task": self.task,
            "run_id": context.run_id,
            "start_ts": int(context.start_ts),
            "elapsed_s": round(time.time() - context.start_ts, 1),
            "epoch": len(self._epochs),
            "max_epochs": context.max_epochs,
            "train_items": len(context.train_datalist or []),
            "val_items": len(context.val_datalist or []),
            "key_metric": self.key_metric,
            "device": str(context.device),
            "amp": bool(self.amp and context.device.type == "cuda"),
            "augment": context.request.get("augment", DEFAULT_AUGMENT),
            "best_metric": self._best[0] if self._best and math.isfinite(self._best[0]) else None,
            "base_model": self._base,
            "events_dir": self._relative(context.events_dir),
            "epochs": self._epochs,
            **extra,
        }
        write_json_atomic(self._stats_path, stats)

    def _relative(self, path: str | Path) -> str:
        """``path`` relative to the model dir when inside it (what ``train_stats`` shows)."""
        path = Path(path)
        try:
            return path.relative_to(self.store.model_dir).as_posix()
        except ValueError:
            return str(path)

    # -- publish -----------------------------------------------------------------------------------

    def evaluate(self, context: Context) -> tuple[float, dict[str, Any]]:
        """``(score, metrics)`` of the model's current weights on the validation items."""
        raise NotImplementedError

    def _publish(self, context: Context) -> None:
        from ..model import save_checkpoint

        model = self._model
        candidate = (
            self._best[1]
            if self._best
            else {k: v.detach().cpu() for k, v in model.trainable_state_dict().items()}
        )
        served = self.store.current()
        decision: dict[str, Any] = {"published": False, "served_version": served.version if served else None}
        trained_served = served is not None or self.app_config.weights is not None

        if context.val_datalist:
            served_state = self._served_state(served)
            if served_state is not None:
                model.load_trainable_state_dict(served_state)
                served_score, served_metrics = self.evaluate(context)
            else:
                served_score, served_metrics = -math.inf, {}
            model.load_trainable_state_dict(candidate)
            self.before_publish(context)
            score, metrics = self.evaluate(context)
            decision.update({"candidate": metrics, "served": served_metrics})
            if not trained_served:
                decision["reason"] = "first trained model (nothing trained was served)"
                decision["published"] = True
            elif score > served_score:
                decision["reason"] = (
                    f"{self.key_metric} {score:.4f} beats the served model's {served_score:.4f}"
                )
                decision["published"] = True
            else:
                decision["reason"] = (
                    f"{self.key_metric} {score:.4f} does not beat the served model's {served_score:.4f} "
                    f"on the same {len(context.val_datalist)} validation item(s)"
                )
        else:
            model.load_trainable_state_dict(candidate)
            if not trained_served:
                decision["reason"] = "first trained model (nothing trained was served); no validation images"
                decision["published"] = True
            else:
                decision["reason"] = (
                    "no validation images to compare with the served model (label more images)"
                )
            metrics = {}

        if decision["published"]:
            entry = self.store.publish(
                lambda path: save_checkpoint(model, path), source=f"train:{self.task}", metrics=metrics
            )
            decision["version"] = entry.version
        logger.info("Publish decision: %s", decision)
        drawn = self._write_figures(context)
        self._write_stats(context, {"state": "done", "publish": decision, **drawn})
        writer = getattr(context, "summary_writer", None)
        if writer is not None:
            writer.close()

    # -- figures -----------------------------------------------------------------------------------

    def _write_figures(self, context: Context) -> dict[str, Any]:
        """The run's figures (module notes) with the candidate weights loaded; the stats' entries.

        A figure that cannot be drawn does not undo the publish decision: the error is logged
        and recorded as ``figures_error``.
        """
        folder = Path(context.output_dir) / f"figures_{context.run_id}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            drawn = [
                figures.plot_training_curves(
                    self._epochs, self.key_metric.removeprefix("val_"), folder / "training_curves.png"
                )
            ]
            if context.val_datalist:
                drawn += self.validation_figures(context, folder)
        except Exception as exc:  # noqa: BLE001 - recorded in the stats, the run's result stands
            logger.exception("Figures of run %s could not be drawn", context.run_id)
            return {"figures_dir": self._relative(folder), "figures_error": f"{type(exc).__name__}: {exc}"}
        names = sorted(path.name for path in drawn if path is not None)
        logger.info("Figures in %s: %s", folder, ", ".join(names))
        return {"figures_dir": self._relative(folder), "figures": names}

    def validation_figures(self, context: Context, folder: Path) -> list[Path | None]:
        """Figures of the candidate on the validation images (ROC, overlays); paths written."""
        return []

    def before_publish(self, context: Context) -> None:
        """Hook run on the candidate weights before they are scored and saved."""

    def _served_state(self, served) -> dict[str, torch.Tensor] | None:
        """Trainable state of the served model, for scoring it on the same images.

        That is the state training started from, unless another model was published or rolled
        back to meanwhile; ``None`` when the served checkpoint does not fit this model.
        """
        from .model_access import checkpoint_state

        if (served.version if served else None) == self._base.get("published_version"):
            return self._base_state
        return checkpoint_state(served.path, self._model)

    def _predict(self, context: Context, with_ids: bool = False) -> tuple[list, ...]:
        """Run the network over the validation loader: per-batch (logits, labels[, image ids])."""
        loader = self.val_data_loader(context)
        outputs, labels, ids = [], [], []
        context.network.eval()
        with torch.no_grad():
            for batch in loader:
                image, label, args, _ = prepare_organ_batch(batch, context.device)
                outputs.append(context.network(image, *args).float().cpu())
                labels.append(label.cpu())
                ids.extend(str(i) for i in batch["image_id"])
        return (outputs, labels, ids) if with_ids else (outputs, labels)


def _training_process_running() -> bool:
    """Whether MONAI Label has a training subprocess running (only meaningful in the server)."""
    from monailabel.utils.async_tasks.utils import processes

    return any(process.poll() is None for process in processes("train").values())


def _first_item(data: Any, key: str) -> Any:
    """``key`` of the first item of a batch, collated (dict of batched values) or decollated (list)."""
    return data[key][0] if isinstance(data, dict) else data[0][key]


def _finite(value: Any) -> Any:
    if torch.is_tensor(value):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
