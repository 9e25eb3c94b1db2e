"""Server replies turned into what the panel shows: models and versions, choices for the combo
boxes, classification probabilities and prompts, training progress. No Qt, no Slicer."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .client import CLASSIFICATION_MODEL, SEGMENTATION_MODEL, STRATEGIES
from .organs import ORGAN_DISPLAY_NAMES, ORGAN_LABELS

#: Training task states of MONAI Label (``GET /train/``).
RUNNING_STATES = ("SUBMITTED", "RUNNING")


@dataclass(frozen=True)
class ServerSummary:
    """What the panel shows of ``/info``.

    Attributes:
        name: the app's name.
        models: inference task names.
        model_version: the served model version (``None`` before any model is loaded).
        backbone: the backbone the server names (``"... (untrained)"`` for a preset).
        organs: organ choices of the segmentation task, ``auto`` first when offered.
        strategies: next-sample strategies, in the panel's order.
        trainers: models that can be trained.
    """

    name: str
    models: list
    model_version: str | None
    backbone: str | None
    organs: list
    strategies: list
    trainers: list

    def text(self) -> str:
        version = self.model_version or "none loaded"
        lines = [f"{self.name}: models {', '.join(self.models) or 'none'}", f"Model version: {version}"]
        if self.backbone:
            lines.append(f"Backbone: {self.backbone}")
        return "\n".join(lines)


def server_summary(info: dict[str, Any]) -> ServerSummary:
    """Summarise ``GET /info/``."""
    models = info.get("models") or {}
    segmentation = models.get(SEGMENTATION_MODEL) or {}
    task = segmentation or next(iter(models.values()), {})
    sonovlm = info.get("sonovlm") or {}
    version = task.get("model_version") or sonovlm.get("model_version")
    backbone = task.get("backbone") or sonovlm.get("backbone")
    if isinstance(backbone, dict):
        backbone = backbone.get("name") or backbone.get("id") or str(backbone)

    organs = list(ORGAN_LABELS)
    offered = (segmentation.get("config") or {}).get("organ")
    if isinstance(offered, list) and offered:
        organs = [str(o) for o in offered]
    elif isinstance(segmentation.get("labels"), dict) and segmentation["labels"]:
        organs = [k for k, _ in sorted(segmentation["labels"].items(), key=lambda item: item[1])]

    served = list((info.get("strategies") or {}).keys())
    strategies = [s for s in STRATEGIES if s in served] + [s for s in served if s not in STRATEGIES]
    return ServerSummary(
        name=str(info.get("name") or "MONAI Label server"),
        models=list(models.keys()),
        model_version=str(version) if version else None,
        backbone=str(backbone) if backbone else None,
        organs=organs,
        strategies=strategies,
        trainers=list((info.get("trainers") or {}).keys()),
    )


def organ_label_text(organ: str) -> str:
    """Text of an organ choice in the combo box."""
    if organ == "auto":
        return "Auto (the image's recorded organ)"
    return ORGAN_DISPLAY_NAMES.get(organ, organ.replace("_", " ").capitalize())


@dataclass(frozen=True)
class ClassificationSummary:
    """A classification reply for the panel.

    Attributes:
        probabilities: ``[(label, score)]``, most likely first; scores sum to 1.
        organ: the organ the server classified for.
        prompts: ``[(label, prompt text)]`` that drove the zero-shot part.
        model_version: the model that answered.
    """

    probabilities: list
    organ: str | None
    prompts: list
    model_version: str | None

    def text(self) -> str:
        lines = [f"{label}: {score * 100:.0f} %" for label, score in self.probabilities]
        if self.prompts:
            lines.append("Prompts:")
            lines.extend(f"  {label}: {prompt}" for label, prompt in self.prompts)
        if self.model_version:
            lines.append(f"Model version: {self.model_version}")
        return "\n".join(lines)


def classification_summary(result: dict[str, Any]) -> ClassificationSummary:
    """Summarise a ``classification`` reply (``prediction``, ``organ``, ``prompts``...).

    Raises:
        ValueError: the reply has no ``prediction`` list.
    """
    prediction = result.get("prediction")
    if not isinstance(prediction, list) or not prediction:
        raise ValueError(f"the classification reply has no prediction: {result!r}")
    probabilities = sorted(
        ((str(p["label"]), float(p["score"])) for p in prediction), key=lambda item: item[1], reverse=True
    )
    return ClassificationSummary(
        probabilities=probabilities,
        organ=result.get("organ"),
        prompts=_prompt_lines(result.get("prompts")),
        model_version=result.get("model_version"),
    )


def _prompt_lines(prompts: Any) -> list:
    """``[(label, text)]`` from the prompts as the server gives them (dict per class or list)."""
    if not prompts:
        return []
    if isinstance(prompts, dict):
        lines = []
        for label, texts in prompts.items():
            for text in texts if isinstance(texts, (list, tuple)) else [texts]:
                lines.append((str(label), str(text)))
        return lines
    if isinstance(prompts, (list, tuple)):
        return [
            ("", str(p)) if not isinstance(p, dict) else (str(p.get("label", "")), str(p.get("text", p)))
            for p in prompts
        ]
    return [("", str(prompts))]


@dataclass(frozen=True)
class TrainingProgress:
    """Training state for the progress bar.

    Attributes:
        state: ``IDLE`` (none ran), or MONAI Label's ``SUBMITTED``/``RUNNING``/``DONE``/
            ``ERROR``/``STOPPED``.
        model: the model being (or last) trained.
        epoch, total_epochs: of the current run, when its stats are in.
        percent: 0-100 for the progress bar.
        metric: the latest validation metric as text (``"Dice 0.81"``), or ``""``.
        note: what the server said about the run's end (published or why not), or ``""``.
    """

    state: str
    model: str | None
    epoch: int | None
    total_epochs: int | None
    percent: int
    metric: str
    note: str = ""

    @property
    def running(self) -> bool:
        return self.state in RUNNING_STATES

    def text(self) -> str:
        parts = [self.state.capitalize()]
        if self.model:
            parts.append(self.model)
        if self.epoch is not None and self.total_epochs:
            parts.append(f"epoch {self.epoch}/{self.total_epochs}")
        if self.metric:
            parts.append(self.metric)
        text = " · ".join(parts)
        return f"{text}\n{self.note}" if self.note else text


def training_progress(task: dict[str, Any] | None, train_stats: dict[str, Any] | None) -> TrainingProgress:
    """Combine ``GET /train/`` (the task) and ``/info``'s ``train_stats`` into progress.

    ``train_stats`` is keyed by model; a model's stats belong to the current run only when they
    started no earlier than the task (the file keeps the previous run's numbers until the first
    epoch of a new one ends).
    """
    if not task:
        return TrainingProgress("IDLE", None, None, None, 0, "")
    state = str(task.get("status") or "UNKNOWN").upper()
    request = task.get("request") or {}
    model = request.get("model") if isinstance(request, dict) else None
    stats = (train_stats or {}).get(model) if model else None
    if stats and not _stats_of_task(stats, task):
        stats = None

    epoch = total = None
    metric = note = ""
    if stats:
        note = _note(stats)
        epoch = _int(stats.get("epoch", stats.get("current_epoch")))
        total = _int(stats.get("total_epochs", stats.get("max_epochs")))
        metric = _metric_text(model, stats)
    if state == "DONE":
        percent = 100
    elif epoch is not None and total:
        percent = max(0, min(100, round(100 * epoch / total)))
    else:
        percent = 0
    return TrainingProgress(state, model, epoch, total, percent, metric, note)


def _note(stats: dict[str, Any]) -> str:
    publish = stats.get("publish")
    if isinstance(publish, dict) and publish.get("reason"):
        verdict = f"published {publish.get('version')}" if publish.get("published") else "not published"
        return f"{verdict}: {publish['reason']}"
    return str(stats.get("note") or "")


def _stats_of_task(stats: dict[str, Any], task: dict[str, Any]) -> bool:
    started = stats.get("start_ts")
    task_start = task.get("start_ts")
    if started is None or not task_start:
        return True
    try:
        task_epoch = time.mktime(time.strptime(str(task_start), "%Y-%m-%d %H:%M:%S"))
    except ValueError:
        return True
    return float(started) >= task_epoch - 2.0  # the subprocess starts after the task is logged


#: Display names of validation metrics in train stats.
METRIC_NAMES = {"val_mean_dice": "Dice", "val_acc": "accuracy", "val_auc": "AUC"}


def _metric_text(model: str | None, stats: dict[str, Any]) -> str:
    """The latest validation metric: the SonoVLM app's per-epoch records (``epochs`` with its
    ``key_metric``, plus AUC for the classifier), else MONAI Label's ``eval`` metrics, else the
    best metric."""
    epochs = stats.get("epochs")
    if isinstance(epochs, list) and epochs and isinstance(epochs[-1], dict):
        key = stats.get("key_metric")
        keys = ([key] if key else []) + [k for k in ("val_auc",) if k != key]
        parts = [
            f"{METRIC_NAMES.get(k, k)} {float(epochs[-1][k]):.3f}"
            for k in keys
            if isinstance(epochs[-1].get(k), (int, float))
        ]
        if parts:
            return ", ".join(parts)
    name = "accuracy" if model == CLASSIFICATION_MODEL else "Dice"
    evaluation = stats.get("eval") or {}
    metrics = evaluation.get("metrics") or {}
    key = evaluation.get("key_metric_name")
    value = metrics.get(key) if key else None
    if value is None and metrics:
        value = next(iter(metrics.values()))
    if value is None:
        value = stats.get("best_metric")
        name = f"best {name}"
    if isinstance(value, (list, tuple)) and value:
        value = value[-1]
    try:
        return f"{name} {float(value):.3f}"
    except (TypeError, ValueError):
        return ""


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None
