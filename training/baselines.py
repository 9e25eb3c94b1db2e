"""Baselines trained and scored by the same pipeline as SonoVLM (``--model``).

Same splits (``--train-ratio`` / ``--shots`` included), the same model-space preprocessing and
augmentation, the same training loop (AdamW, cosine schedule, early stopping), loss, temperature
calibration, test evaluation on the image's own grid, metrics, report and run folder:

=================  ==============  ===========================================================
``--model``        task            what trains
=================  ==============  ===========================================================
``sonovlm``        every stage     SonoVLM: adapter and heads (the default)
``unet``           segmentation    MONAI ``UNet`` (2D, channels 16-256, four stride-2 levels,
                                   two residual units, batch norm) from scratch on the grey
                                   model-space image ``(B, 1, S, S)`` in [0, 1]
``resnet18``       classification  MONAI ``resnet18`` (2D, one input channel, stride-2 stem as
                                   torchvision's) from scratch on the same grey image
``linear-probe``   both            the frozen backbone (no adapter); segmentation: a 1x1
                                   convolution over the last block's patch tokens (after the
                                   tower's final LayerNorm), ``(B, 2, g, g)`` logits upsampled
                                   bilinearly to ``S``; classification: one linear layer on
                                   the pooled image embedding (the visual projection of the
                                   class token, not L2-normalised)
=================  ==============  ===========================================================

``S`` is the backbone's input size (``--backbone``; 224 for CLIP ViT-B/16, 64 for ``tiny``), so
a baseline sees the pixels SonoVLM sees. The paper's own baselines (jinggqu/NextGen-UIA,
``scripts/baselines.sh``) are a UNet of its own (16-256 channels, from scratch) for segmentation
and an ImageNet-pretrained torchvision ResNet-18 for classification; ``resnet18`` here starts
from random weights (nothing is downloaded), see the README's departures table.

A baseline model offers the part of :class:`~sonovlm.model.SonoVLM`'s interface the stages, the
trainer and the runner call (``encode_image``, ``segment_logits``, ``classify_logits``,
``cls_head.probabilities``/``calibrate``, ``organ_text``, trainable state, ``config.to_dict()``,
``preprocess_config``); the baseline stages add how it is frozen and saved. Text conditioning
and simulated interactions do not apply: ``organ_text`` has width 0 and the interaction
fraction is 0. ``best.safetensors`` of a baseline run holds the trained weights (format
``sonovlm-training-baseline``); it is not a server checkpoint (``export`` refuses it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from sonovlm.errors import ModelLoadError, SonoInputError
from sonovlm.model import ORGANS, AdapterConfig, PreprocessConfig
from sonovlm.model.heads import ClassificationHead
from torch import nn

from .stages.classification import ClassificationStage
from .stages.segmentation import SegmentationStage

#: ``--model`` choices -> the tasks they have a head for.
MODEL_TASKS: dict[str, tuple[str, ...]] = {
    "sonovlm": ("segmentation", "classification"),
    "unet": ("segmentation",),
    "resnet18": ("classification",),
    "linear-probe": ("segmentation", "classification"),
}
MODELS = tuple(MODEL_TASKS)
BASELINES = tuple(m for m in MODELS if m != "sonovlm")
#: The multi-seed driver's models per task when ``--models`` is not given.
DEFAULT_MODELS: dict[str, tuple[str, ...]] = {
    "segmentation": ("sonovlm", "unet", "linear-probe"),
    "classification": ("sonovlm", "resnet18", "linear-probe"),
}
#: Options that only mean something for SonoVLM: an error with a baseline when given, dropped for
#: the baselines by the multi-seed driver. ``(attribute, value when not given)``.
SONOVLM_ONLY: dict[str, Any] = {
    "adapter": None,
    "init_from": None,
    "freeze_adapter": False,
    "prompt_bank": None,
    "decoder": None,
    "classifier": None,
    "interactive_fraction": None,
    "lora_rank": None,
    "lora_alpha": None,
    "lora_dropout": None,
    "lora_targets": None,
    "rslora": None,
    "hybrid_variant": None,
}
CHECKPOINT_FORMAT = "sonovlm-training-baseline"
#: MONAI UNet settings of ``--model unet`` (channels as the reference's UNet: 16 to 256).
UNET_SETTINGS: dict[str, Any] = {
    "channels": [16, 32, 64, 128, 256],
    "strides": [2, 2, 2, 2],
    "num_res_units": 2,
    "norm": "batch",
}


def model_of(args: argparse.Namespace) -> str:
    """The run's ``--model`` (``sonovlm`` when the command has none)."""
    return getattr(args, "model", None) or "sonovlm"


def is_baseline(args: argparse.Namespace) -> bool:
    return model_of(args) != "sonovlm"


def option_name(attribute: str) -> str:
    return "--" + attribute.replace("_", "-")


def check_args(args: argparse.Namespace) -> None:
    """Before ``--paper`` fills the defaults: a baseline with a SonoVLM-only option, or with a task
    it has no head for, is an error naming the option."""
    model = model_of(args)
    if model not in MODEL_TASKS:
        raise SonoInputError("--model", f"{model!r} is not one of {', '.join(MODELS)}")
    if model == "sonovlm":
        return
    task = args.command
    if task not in MODEL_TASKS[model]:
        others = [m for m, tasks in MODEL_TASKS.items() if task in tasks and m != "sonovlm"]
        raise SonoInputError(
            "--model", f"{model} has no {task} head; {task} baselines: {', '.join(others) or 'none'}"
        )
    for attribute, unset in SONOVLM_ONLY.items():
        value = getattr(args, attribute, unset)
        if value == unset or (attribute == "adapter" and value == "none"):
            continue
        if attribute == "interactive_fraction" and value == 0:
            continue
        raise SonoInputError(option_name(attribute), f"is a SonoVLM option; --model {model} does not take it")


def drop_sonovlm_options(args: argparse.Namespace) -> list[str]:
    """Reset the SonoVLM-only options of ``args`` in place (for a baseline); returns those reset."""
    dropped = []
    for attribute, unset in SONOVLM_ONLY.items():
        if hasattr(args, attribute) and getattr(args, attribute) != unset:
            dropped.append(option_name(attribute))
            setattr(args, attribute, unset)
    return dropped


# --------------------------------------------------------------------------------------- models
@dataclass
class BaselineConfig:
    """What a baseline is: enough to rebuild it (``to_dict`` goes into ``run.json`` and the saved
    training state, which ``--resume`` checks)."""

    model: str
    image_size: int
    preprocess: PreprocessConfig
    backbone: str | None = None
    network: dict[str, Any] = field(default_factory=dict)
    adapter: AdapterConfig = field(default_factory=lambda: AdapterConfig(kind="none"))
    version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "image_size": self.image_size,
            "preprocess": self.preprocess.to_dict(),
            "backbone": self.backbone,
            "network": dict(self.network),
            "adapter": self.adapter.kind,
            "version": self.version,
        }


class TemperatureScaling(nn.Module):
    """``probabilities`` and ``calibrate`` of SonoVLM's classification head (temperature scaling on
    validation logits, :meth:`~sonovlm.model.heads.ClassificationHead.calibrate`), for baselines.

    Args:
        linear_in: width of a linear layer applied in :meth:`forward` (the linear probe), or None.
    """

    def __init__(self, linear_in: int | None = None) -> None:
        super().__init__()
        self.linear = nn.Linear(linear_in, 2) if linear_in else None
        self.register_buffer("temperature", torch.tensor(1.0))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, linear_in)`` -> ``(B, 2)`` logits (the linear probe's layer)."""
        if self.linear is None:
            raise RuntimeError("this head has no linear layer")
        return self.linear(features)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """``(B, 2)`` calibrated probabilities of ``(B, 2)`` logits."""
        return torch.softmax(logits / self.temperature, dim=-1)

    @torch.no_grad()
    def calibrate(self, logits: torch.Tensor, labels: torch.Tensor) -> float:
        """Fit the temperature on ``(N, 2)`` logits and ``(N,)`` labels as SonoVLM's head does."""
        return ClassificationHead.calibrate(self, logits, labels)  # type: ignore[arg-type]


class BaselineModel(nn.Module):
    """Common part: identity, trainable state, saving. Subclasses build ``self.net`` or heads."""

    kind = "baseline"

    def __init__(self, config: BaselineConfig, backbone_info: dict[str, Any]) -> None:
        super().__init__()
        self.config = config
        self.backbone_info = dict(backbone_info)
        # No text conditioning: a width-0 buffer keeps the stages' ``organ_text[organ_id]``.
        self.register_buffer("organ_text", torch.zeros(len(ORGANS), 0), persistent=False)
        self.cls_head = TemperatureScaling()

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return self.config.preprocess

    def trained_modules(self, task: str) -> list[nn.Module]:
        """Modules whose parameters train for ``task``."""
        raise NotImplementedError

    def saved_modules(self) -> dict[str, nn.Module]:
        """``prefix -> module`` whose state (parameters and buffers) a checkpoint holds."""
        raise NotImplementedError

    def configure_stage(self, task: str) -> None:
        self.requires_grad_(False)
        for module in self.trained_modules(task):
            module.requires_grad_(True)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def parameter_counts(self) -> dict[str, int]:
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.trainable_parameters())
        saved = sum(p.numel() for m in self.saved_modules().values() for p in m.parameters())
        return {"total": total, "trainable": trainable, "heads": saved}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        state = {}
        for prefix, module in self.saved_modules().items():
            for key, tensor in module.state_dict().items():
                state[f"{prefix}.{key}"] = tensor.detach()
        return state

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = self.trainable_state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ModelLoadError(
                f"weights do not fit this {self.kind} baseline: "
                f"missing {missing[:4]}, unexpected {unexpected[:4]}"
            )
        for prefix, module in self.saved_modules().items():
            n = len(prefix) + 1
            module.load_state_dict({k[n:]: v for k, v in state.items() if k.startswith(prefix + ".")})

    def state_hash(self) -> str:
        digest = hashlib.sha256()
        for key, tensor in sorted(self.trainable_state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
        return digest.hexdigest()

    @property
    def version(self) -> str:
        return self.config.version or f"{self.kind}-init-{self.state_hash()[:12]}"

    def save(self, path: Path) -> str:
        """Write the trained weights to ``path`` (safetensors, atomically); returns the version."""
        from safetensors.torch import save_file

        version = f"{self.kind}-{self.state_hash()[:12]}"
        self.config.version = version
        tensors = {k: v.cpu().contiguous().clone() for k, v in self.trainable_state_dict().items()}
        metadata = {
            "format": CHECKPOINT_FORMAT,
            "config": json.dumps(self.config.to_dict()),
            "backbone_info": json.dumps(self.backbone_info),
            "version": version,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=metadata)
        tmp.replace(path)
        return version

    def _grey(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` pipeline input (grey replicated, mean 0, std 1) -> ``(B, 1, S, S)``."""
        return pixel_values[:, :1].to(next(self.parameters()).dtype)


class UNetBaseline(BaselineModel):
    """MONAI ``UNet`` on the grey model-space image; ``(B, 2, S, S)`` logits."""

    kind = "unet"

    def __init__(self, config: BaselineConfig) -> None:
        from monai.networks.nets import UNet

        super().__init__(config, {"name": "MONAI UNet", "untrained": False, "source": "from scratch"})
        network = config.network
        self.net = UNet(
            spatial_dims=2,
            in_channels=1,
            out_channels=2,
            channels=tuple(network["channels"]),
            strides=tuple(network["strides"]),
            num_res_units=network["num_res_units"],
            norm=network["norm"],
        )

    def trained_modules(self, task: str) -> list[nn.Module]:
        return [self.net]

    def saved_modules(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self._grey(pixel_values)

    def segment_logits(
        self, features: torch.Tensor, text_embeddings: Any = None, interaction: Any = None
    ) -> torch.Tensor:
        if interaction is not None:
            raise SonoInputError("--interactive-fraction", "the UNet baseline takes no prompts")
        return self.net(features)


class ResNetBaseline(BaselineModel):
    """MONAI ``resnet18`` (2D) on the grey model-space image; ``(B, 2)`` logits."""

    kind = "resnet18"

    def __init__(self, config: BaselineConfig) -> None:
        from monai.networks.nets import resnet18

        super().__init__(config, {"name": "MONAI ResNet-18", "untrained": False, "source": "from scratch"})
        self.net = resnet18(
            spatial_dims=2, n_input_channels=1, num_classes=2, conv1_t_stride=2, shortcut_type="B"
        )

    def trained_modules(self, task: str) -> list[nn.Module]:
        return [self.net]

    def saved_modules(self) -> dict[str, nn.Module]:
        return {"net": self.net, "cls_head": self.cls_head}

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self._grey(pixel_values)

    def classify_logits(self, features: torch.Tensor, organ_ids: Any = None) -> torch.Tensor:
        return self.net(features)


@dataclass
class ProbeFeatures:
    """Frozen-backbone features: ``patches (B, D, g, g)`` and ``embedding (B, E)``."""

    patches: torch.Tensor
    embedding: torch.Tensor


class LinearProbe(BaselineModel):
    """The frozen backbone with a 1x1-conv segmentation head and a linear classification head."""

    kind = "linear-probe"

    def __init__(self, config: BaselineConfig, backbone: Any) -> None:
        super().__init__(config, backbone.info)
        self.clip = backbone.clip
        self.clip.requires_grad_(False)
        self.grid = backbone.grid_size
        self.seg_head = nn.Conv2d(backbone.vision_width, 2, kernel_size=1)
        self.cls_head = TemperatureScaling(backbone.embed_dim)
        reference = self.clip.visual_projection.weight
        self.seg_head.to(device=reference.device, dtype=reference.dtype)
        self.cls_head.to(device=reference.device, dtype=reference.dtype)

    def trained_modules(self, task: str) -> list[nn.Module]:
        return [self.seg_head] if task == "segmentation" else [self.cls_head]

    def saved_modules(self) -> dict[str, nn.Module]:
        return {"seg_head": self.seg_head, "cls_head": self.cls_head}

    def encode_image(self, pixel_values: torch.Tensor) -> ProbeFeatures:
        reference = self.clip.visual_projection.weight
        pixel_values = pixel_values.to(device=reference.device, dtype=reference.dtype)
        vision = self.clip.vision_model
        output = vision(pixel_values=pixel_values)
        tokens = vision.post_layernorm(output.last_hidden_state[:, 1:])  # (B, g*g, D)
        batch, count, width = tokens.shape
        if count != self.grid * self.grid:
            raise ModelLoadError(f"backbone gave {count} patch tokens, expected {self.grid}^2")
        patches = tokens.transpose(1, 2).reshape(batch, width, self.grid, self.grid)
        return ProbeFeatures(patches=patches, embedding=self.clip.visual_projection(output.pooler_output))

    def segment_logits(
        self, features: ProbeFeatures, text_embeddings: Any = None, interaction: Any = None
    ) -> torch.Tensor:
        if interaction is not None:
            raise SonoInputError("--interactive-fraction", "the linear probe takes no prompts")
        logits = self.seg_head(features.patches)
        size = self.config.image_size
        return F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)

    def classify_logits(self, features: ProbeFeatures, organ_ids: Any = None) -> torch.Tensor:
        return self.cls_head(features.embedding)


def backbone_image_size(name: str | None) -> int:
    """Input side ``S`` of backbone ``name`` (a preset without building it; else loaded once)."""
    from sonovlm.model import PRESETS, load_backbone

    if name in PRESETS:
        return int(PRESETS[name]["vision_config"]["image_size"])
    return load_backbone(name).image_size


def build_baseline(args: argparse.Namespace) -> BaselineModel:
    """The ``--model`` baseline for a resolved ``args`` (``--backbone`` gives ``S``; ``--preprocess
    reference`` takes the whole frame for every model)."""
    from sonovlm.model import DEFAULT_BACKBONE, load_backbone

    from .paper import reference_preprocess

    model = model_of(args)
    name = args.backbone or DEFAULT_BACKBONE
    reference = getattr(args, "preprocess", None) == "reference"
    if model == "linear-probe":
        backbone = load_backbone(name)
        size = backbone.image_size
        mean, std = backbone.image_mean, backbone.image_std
        preprocess = (
            reference_preprocess(size)
            if reference
            else PreprocessConfig(image_size=size, image_mean=mean, image_std=std)
        )
        config = BaselineConfig(model=model, image_size=size, preprocess=preprocess, backbone=str(name))
        return LinearProbe(config, backbone)
    size = backbone_image_size(name)
    # the grey image in [0, 1] (mean 0, std 1): the networks learn their own normalisation
    preprocess = PreprocessConfig(
        image_size=size, image_mean=(0.0, 0.0, 0.0), image_std=(1.0, 1.0, 1.0), crop_to_region=not reference
    )
    if model == "unet":
        if size % 16:
            raise SonoInputError("--backbone", f"UNet needs a model-space size divisible by 16, not {size}")
        network = dict(UNET_SETTINGS)
        config = BaselineConfig(model=model, image_size=size, preprocess=preprocess, network=network)
        return UNetBaseline(config)
    if model == "resnet18":
        network = {"monai": "resnet18", "stem_stride": 2}
        config = BaselineConfig(model=model, image_size=size, preprocess=preprocess, network=network)
        return ResNetBaseline(config)
    raise SonoInputError("--model", f"{model!r} is not a baseline ({', '.join(BASELINES)})")


# --------------------------------------------------------------------------------------- stages
class _BaselineStageMixin:
    task: str

    def configure(self, model: BaselineModel, freeze_adapter: bool = False) -> None:
        model.configure_stage(self.task)

    def save_best(self, model: BaselineModel, path: Path) -> str:
        return model.save(path)


class BaselineSegmentationStage(_BaselineStageMixin, SegmentationStage):
    """The segmentation stage (loss, validation, test) for a baseline: no simulated interactions."""

    def __init__(self, seed: int = 0, loss: str = "sonovlm") -> None:
        super().__init__(seed=seed, interactive_fraction=0.0, loss=loss)


class BaselineClassificationStage(_BaselineStageMixin, ClassificationStage):
    """The classification stage (focal loss, calibration, test) for a baseline."""


def build_baseline_stage(args: argparse.Namespace) -> SegmentationStage | ClassificationStage:
    loss = getattr(args, "loss", None) or "sonovlm"
    if args.command == "segmentation":
        return BaselineSegmentationStage(seed=args.seed, loss=loss)
    return BaselineClassificationStage(loss=loss)


def overlay_renderer(model: BaselineModel, by_name: dict) -> Any:
    """``record -> (grey frame, truth, prediction)`` for a segmentation baseline, through the
    pipeline's own preprocessing and :func:`~training.stages.segmentation.lesion_probability`."""
    from sonovlm.io import load_image
    from sonovlm.model import from_model_space
    from sonovlm.model.inference import MASK_THRESHOLD

    from .data.datasets import FinaliseInputd, LoadCased, collate
    from .stages.segmentation import lesion_probability

    config = model.preprocess_config
    load, finalise = LoadCased(config, keep_frame=True), FinaliseInputd(config)
    device = next(model.parameters()).device

    @torch.no_grad()
    def render(record: dict) -> tuple:
        case = by_name[record["name"]]
        item = finalise(load(case))
        batch = collate([item])
        tensors = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        probability = lesion_probability(model, tensors)
        prediction = from_model_space(probability[0].cpu(), batch["geometry"][0]) >= MASK_THRESHOLD
        image = load_image(case.image)
        return image.grey(image.n_frames // 2), item["frame_mask"] != 0, prediction.numpy()

    return render
