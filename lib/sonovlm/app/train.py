"""``POST /train/segmentation`` and ``POST /train/classification``: MONAI Label trainers of the one model.

Both are :class:`BasicTrainTask` subclasses run in MONAI Label's training subprocess (never
``run_sync``: that trains inside the server and blocks every request). Changed from MONAI Label:

* the network is the served model (published checkpoint, else ``weights``, else the fresh model);
  segmentation trains the adapter and the segmentation head, classification only the
  classification head (so a classifier run cannot change the served masks);
* segmentation trains with simulated interactions: a share ``interactive_fraction`` (default
  0.5) of the batches gets a jittered box, a degraded previous mask and corrective clicks in the
  error regions (:func:`sonovlm.model.click_simulation.training_prompt_maps`), the rest none, so one
  network serves automatic and interactive (``interactive``/``propagate``) use;
* the augmentation is ``python -m training``'s (:mod:`sonovlm.model.augment`, request param
  ``augment``: ``all`` by default — ultrasound artefacts then geometry —, ``ultrasound``,
  ``geometric``, ``reference`` or ``none``) on the same model-space grey image and scan mask,
  so a model retrained from Slicer is trained like the published one;
* no ``CheckpointSaver`` (it writes the whole network, backbone included) and no MLflow handler
  (``tracking`` is off: MONAI 1.6.1's MLflow handler rejects file URIs);
* TensorBoard events where MONAI Label writes them, ``{model_dir}/runs/{task}/{name}/events_{run_id}``
  (``name`` is the request's, default ``train_01``): MONAI's ``TensorBoardStatsHandler`` for the
  loss per iteration (``train_loss``) and the metrics per epoch (``train_mean_dice``,
  ``val_mean_dice``; ``train_acc``, ``val_acc``, ``val_auc``), plus ``train_loss_epoch`` and
  ``learning_rate`` per epoch, and for segmentation a ``TensorBoardImageHandler`` of the first
  validation image, its label and the prediction per epoch. One writer, flushed every epoch;
* at the end, the figures ``python -m training`` draws (:mod:`sonovlm.figures`) in
  ``{model_dir}/runs/{task}/{name}/figures_{run_id}/``: ``training_curves.png``, and on the
  validation images with the candidate weights ``overlays.png`` (segmentation: best, median and
  worst case by Dice, predicted as the server predicts) or ``roc_curve.png`` (classification);
* ``train_stats`` holds per-epoch learning rate, training loss and validation Dice
  (segmentation) or accuracy and AUC (classification), the events and figures folders
  (relative to ``model_dir``), written atomically;
* publishing is the app's own (:mod:`sonovlm.app.model_store`): at the end, the best epoch is
  compared with the served model on the same validation images and published only if it is better
  (the first model is published when nothing trained is served); the stats say why not otherwise.
  A kill (``DELETE /train/``) at any time leaves the served model current and intact;
* torch threads are capped (``train_threads``, default all cores but one) so the server keeps
  answering; CUDA runs with mixed precision.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.handlers import (
    ROCAUC,
    ConfusionMatrix,
    MeanDice,
    TensorBoardImageHandler,
    from_engine,
)
from monai.transforms import Activationsd, AsDiscreted, CopyItemsd
from monailabel.tasks.train.basic_train import Context
from torch import nn

from .. import figures
from ..organs import PATHOLOGIES
from .config import AppConfig
from .model_store import ModelStore
from .train_base import SonoTrainer, _first_item, _SegmentationOutput
from .train_data import (
    DEFAULT_INTERACTIVE_FRACTION,
    prepare_segmentation_batch,
)

logger = logging.getLogger(__name__)


class SegmentationTrainer(SonoTrainer):
    """Adapter and segmentation head on the final labels (one item per annotated frame)."""

    task = "segmentation"
    output_key = "seg_logits"
    key_metric = "val_mean_dice"
    no_items_message = "no image has a final label yet: save labels (PUT /datastore/label) first"

    def items(self, datastore) -> list[dict[str, Any]]:
        return datastore.segmentation_items()

    def __init__(self, app_config: AppConfig, store: ModelStore) -> None:
        super().__init__(app_config, store, "Train the adapter and segmentation head on the final labels")
        self._config["interactive_fraction"] = DEFAULT_INTERACTIVE_FRACTION

    train_prepare_batch = staticmethod(prepare_segmentation_batch)

    def task_output(self, model: nn.Module, context: Context) -> nn.Module:
        fraction = float(context.request.get("interactive_fraction", DEFAULT_INTERACTIVE_FRACTION))
        return _SegmentationOutput(model, fraction)

    def select_trainable(self, model: nn.Module) -> None:
        for param in model.cls_head.parameters():
            param.requires_grad_(False)

    def loss_function(self, context: Context):
        from ..model import segmentation_loss

        return segmentation_loss()

    def train_post_transforms(self, context: Context):
        return [
            Activationsd(keys="pred", softmax=True),
            AsDiscreted(keys=("pred", "label"), argmax=(True, False), to_onehot=2),
        ]

    def val_handlers(self, context: Context):
        return [
            *super().val_handlers(context),
            TensorBoardImageHandler(
                summary_writer=self.summary_writer(context),
                batch_transform=lambda batch: (
                    [_first_item(batch, "image")[:1]],  # one grey channel of the model input
                    [_first_item(batch, "label")[-1:]],  # the lesion channel
                ),
                output_transform=lambda output: [_first_item(output, "pred")[-1:]],
                max_channels=1,
            ),
        ]

    def train_key_metric(self, context: Context):
        return {
            "train_mean_dice": MeanDice(
                output_transform=from_engine(["pred", "label"]), include_background=False
            )
        }

    def val_key_metric(self, context: Context):
        return {
            self.key_metric: MeanDice(
                output_transform=from_engine(["pred", "label"]), include_background=False
            )
        }

    def evaluate(self, context: Context) -> tuple[float, dict[str, Any]]:
        from monai.metrics import DiceMetric

        outputs, labels = self._predict(context)
        metric = DiceMetric(include_background=False, reduction="mean", ignore_empty=False)
        for logits, label in zip(outputs, labels, strict=True):
            prediction = torch.nn.functional.one_hot(logits.argmax(1), 2).permute(0, 3, 1, 2)
            target = torch.nn.functional.one_hot(label[:, 0].long(), 2).permute(0, 3, 1, 2)
            metric(prediction, target)
        dice = float(metric.aggregate().item())
        return dice, {self.key_metric: dice}

    def validation_figures(self, context: Context, folder: Path) -> list[Path | None]:
        """``overlays.png``: best, median and worst validation case by Dice, as the server predicts."""
        from monai.metrics import DiceMetric

        from ..io import load_image
        from ..model import Predictor
        from .labels import read_stored_label

        outputs, labels, ids = self._predict(context, with_ids=True)
        items = list(context.val_datalist)
        if ids != [item["image_id"] for item in items]:
            raise RuntimeError("the validation loader's order differs from the validation list")
        metric = DiceMetric(include_background=False, reduction="none", ignore_empty=False)
        dice: list[float] = []
        for logits, label in zip(outputs, labels, strict=True):
            prediction = torch.nn.functional.one_hot(logits.argmax(1), 2).permute(0, 3, 1, 2)
            target = torch.nn.functional.one_hot(label[:, 0].long(), 2).permute(0, 3, 1, 2)
            dice += [float(v) for v in metric(prediction, target)[:, 0]]
        records = [
            {
                "name": item["image_id"] + (f" frame {item['frame']}" if item.get("label_frame") else ""),
                "dice": value,
                "item": item,
            }
            for item, value in zip(items, dice, strict=True)
        ]
        predictor = Predictor(self._model, device=context.device)

        def render(record: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            item = record["item"]
            image = load_image(item["image"])
            stored = read_stored_label(item["label"], image.n_frames)
            truth = stored if stored.ndim == 2 else stored[item["label_frame"]]
            result = predictor.segment(image, item["organ"], frame=item.get("frame"))
            return image.grey(result.frame), truth != 0, result.mask != 0

        picks = figures.pick_overlay_cases(records)
        return [figures.plot_overlays(picks, render, folder / "overlays.png")]


class ClassificationTrainer(SonoTrainer):
    """Classification head (zero-shot mixing, learned layer, temperature) on known pathologies."""

    task = "classification"
    output_key = "cls_logits"
    key_metric = "val_acc"
    no_items_message = "no image has a known pathology and organ yet (label params or cases.csv)"

    def __init__(self, app_config: AppConfig, store: ModelStore) -> None:
        super().__init__(
            app_config, store, "Train the benign/malignant head on images with a known pathology"
        )

    def items(self, datastore) -> list[dict[str, Any]]:
        return datastore.classification_items()

    def select_trainable(self, model: nn.Module) -> None:
        for param in model.parameters():
            param.requires_grad_(False)
        model.cls_head.linear.requires_grad_(True)
        model.cls_head.norm.requires_grad_(True)
        model.cls_head.zero_shot_weight.requires_grad_(True)

    def loss_function(self, context: Context):
        from ..model import classification_loss

        return classification_loss()

    def train_post_transforms(self, context: Context):
        return [
            Activationsd(keys="pred", softmax=True),
            CopyItemsd(keys=("pred", "label"), names=("pred_onehot", "label_onehot")),
            AsDiscreted(keys=("pred_onehot", "label_onehot"), argmax=(True, False), to_onehot=2),
        ]

    def _accuracy(self) -> ConfusionMatrix:
        return ConfusionMatrix(
            include_background=True,
            metric_name="accuracy",
            output_transform=from_engine(["pred_onehot", "label_onehot"]),
        )

    def train_key_metric(self, context: Context):
        return {"train_acc": self._accuracy()}

    def val_key_metric(self, context: Context):
        return {self.key_metric: self._accuracy()}

    def val_additional_metrics(self, context: Context):
        return {"val_auc": ROCAUC(output_transform=from_engine(["pred", "label_onehot"]))}

    def before_publish(self, context: Context) -> None:
        """Fit the temperature on the validation logits (calibration; accuracy is unchanged)."""
        outputs, labels = self._predict(context)
        logits, targets = torch.cat(outputs), torch.cat(labels)[:, 0]
        if len(targets) >= 2:
            temperature = self._model.cls_head.calibrate(logits, targets)
            logger.info("Classification temperature %.3f", temperature)

    def evaluate(self, context: Context) -> tuple[float, dict[str, Any]]:
        from monai.metrics import ROCAUCMetric

        outputs, labels = self._predict(context)
        logits, targets = torch.cat(outputs), torch.cat(labels)[:, 0].long()
        probabilities = self._model.cls_head.probabilities(logits)
        accuracy = float((probabilities.argmax(1) == targets).float().mean())
        auc = None
        if len(set(targets.tolist())) == 2:
            metric = ROCAUCMetric()
            metric(probabilities, torch.nn.functional.one_hot(targets, 2))
            auc = float(metric.aggregate())
        # Accuracy decides; AUC breaks ties (a tiny validation set ties often).
        score = accuracy + (auc if auc is not None else 0.0) * 1e-3
        return score, {self.key_metric: accuracy, "val_auc": auc}

    def validation_figures(self, context: Context, folder: Path) -> list[Path | None]:
        """``roc_curve.png`` of the malignant probability on the validation images (both classes needed)."""
        outputs, labels = self._predict(context)
        logits, targets = torch.cat(outputs), torch.cat(labels)[:, 0].long()
        malignant = PATHOLOGIES.index("malignant")
        probabilities = self._model.cls_head.probabilities(logits)[:, malignant]
        path = figures.plot_roc(
            (targets == malignant).int().tolist(), probabilities.tolist(), folder / "roc_curve.png"
        )
        if path is None:
            logger.info("No ROC curve: the validation images hold one pathology only")
        return [path]


__all__ = ["ClassificationTrainer", "SegmentationTrainer"]
