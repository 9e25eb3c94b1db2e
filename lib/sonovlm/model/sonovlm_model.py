"""SonoVLM: the frozen CLIP backbone, its adapter, cached prompt embeddings and the two task heads.

One module, one code path: the server, the CLI, training and the benchmarks all go through
:class:`SonoVLM`. Its :class:`ModelConfig` describes it completely (backbone, adapter, prompt bank,
preprocessing, heads, version) and travels in every checkpoint.

Text is encoded once: the organ target descriptions and the class prompts of the prompt bank are run
through the (frozen, never adapted) text tower when the model is built and kept as buffers
(``organ_text``, ``class_text``), which checkpoints carry; free-text prompts are encoded on demand
through a small LRU cache.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelLoadError, SonoInputError
from ..organs import ORGAN_LABELS, PATHOLOGIES, organ_label
from .adapters import (
    AdapterConfig,
    adapter_state_dict,
    attach_adapter,
    load_adapter_state_dict,
    merge_adapter,
    unmerge_adapter,
)
from .backbone import DEFAULT_BACKBONE, Backbone, geometry_info, load_backbone
from .heads import (
    ClassificationHead,
    HeadConfig,
    ReferenceClassificationHead,
    ReferenceSegmentationHead,
    SegmentationHead,
)
from .preprocess import PreprocessConfig, mask_to_model_space, preprocess_frame, preprocess_pair
from .prompts import DEFAULT_PROMPT_BANK, PromptBank, load_prompt_bank
from .tokenizer import CONTEXT_LENGTH, load_clip_tokenizer

#: Organs in the order of the ``organ_text`` / ``class_text`` buffers and of ``organ_ids``.
ORGANS: tuple[str, ...] = tuple(ORGAN_LABELS)

#: Free-text prompt embeddings kept per model.
PROMPT_CACHE_SIZE = 64

#: Seed of the adapter's and heads' initial weights.
INIT_SEED = 0

#: Trainable-state keys a checkpoint may lack (saved before these parts existed); they keep a
#: state without effect: the interaction encoder's output layers at zero.
OPTIONAL_STATE_PREFIXES: tuple[str, ...] = ("seg_head.interaction.",)


def _is_output_layer(key: str) -> bool:
    return key.startswith(("seg_head.interaction.fine_out.", "seg_head.interaction.coarse_out."))


def build_segmentation_head(config: HeadConfig, backbone: Backbone, n_levels: int) -> nn.Module:
    """The segmentation head ``config.decoder`` names, sized for ``backbone``."""
    width = config.resolved_width(backbone.vision_width)
    if config.decoder == "reference":
        return ReferenceSegmentationHead(
            backbone.vision_width, backbone.grid_size, backbone.patch_size, n_levels, width
        )
    return SegmentationHead(
        vision_width=backbone.vision_width,
        text_dim=backbone.embed_dim,
        grid=backbone.grid_size,
        patch_size=backbone.patch_size,
        n_levels=n_levels,
        width=width,
        decoder_channels=config.decoder_channels,
        dropout=config.dropout,
    )


def build_classification_head(config: HeadConfig, backbone: Backbone, n_levels: int) -> nn.Module:
    """The classification head ``config.classifier`` names, sized for ``backbone``."""
    if config.classifier == "sonovlm":
        return ClassificationHead(backbone.embed_dim, dropout=config.dropout)
    width = config.resolved_width(backbone.vision_width)
    return ReferenceClassificationHead(
        backbone.vision_width, backbone.grid_size, n_levels, width, config.classifier
    )


@dataclass
class ModelConfig:
    """Everything that defines a SonoVLM model (stored as JSON in every checkpoint).

    Attributes:
        backbone: preset name (``tiny``, ``vit-b16``), hub id or local directory.
        adapter: the vision adapter (``lora``, ``mona``, ``hybrid``, ``none``) and its sizes.
        prompt_bank: packaged bank name or bank file the text embeddings come from.
        prompt_hash: content hash of that bank (filled in when the model is built).
        preprocess: frame -> model input; ``None`` = derived from the backbone (its input size,
            mean and std) when the model is built.
        heads: sizes of the task heads.
        version: version id, set when a checkpoint is saved (``None`` for a model never saved).
    """

    backbone: str = DEFAULT_BACKBONE
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    prompt_bank: str = DEFAULT_PROMPT_BANK
    prompt_hash: str | None = None
    preprocess: PreprocessConfig | None = None
    heads: HeadConfig = field(default_factory=HeadConfig)
    version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone,
            "adapter": self.adapter.to_dict(),
            "prompt_bank": self.prompt_bank,
            "prompt_hash": self.prompt_hash,
            "preprocess": self.preprocess.to_dict() if self.preprocess is not None else None,
            "heads": self.heads.to_dict(),
            "version": self.version,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; SonoInputError for unknown keys or invalid values."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise SonoInputError("model config", f"unknown keys {sorted(unknown)}")
        data = dict(data)
        if "adapter" in data:
            data["adapter"] = AdapterConfig.from_dict(data["adapter"])
        if data.get("preprocess") is not None:
            data["preprocess"] = PreprocessConfig.from_dict(data["preprocess"])
        if "heads" in data:
            data["heads"] = HeadConfig.from_dict(data["heads"])
        return cls(**data)


@dataclass
class VisionFeatures:
    """What the adapted vision tower gives for a batch (computed once per frame).

    Attributes:
        levels: hidden states ``(B, 1 + grid**2, vision_width)`` of the head's blocks, shallow to deep.
        embedding: adapted image embedding ``(B, embed_dim)``, L2-normalised.
    """

    levels: list[torch.Tensor]
    embedding: torch.Tensor


class SonoVLM(nn.Module):
    """The assembled model.

    Args:
        config: what to build. ``config.preprocess`` and ``config.prompt_hash`` are filled in.
        backbone: an already loaded backbone (else ``config.backbone`` is loaded). It is changed in
            place (frozen, adapter injected): do not share it between models.
        prompt_bank: the bank (else ``config.prompt_bank`` is loaded).
        encode_prompts: compute the text buffers now; ``False`` when a checkpoint fills them.

    Training API: :meth:`forward` on ``(B, 3, S, S)`` pixels with ``organ_ids`` (or text embeddings)
    returns ``seg_logits (B, 2, S, S)`` and ``cls_logits (B, 2)``; :meth:`trainable_parameters`;
    :meth:`preprocess_pair` for datasets; losses in :mod:`sonovlm.model.heads`.
    """

    def __init__(
        self,
        config: ModelConfig | None = None,
        backbone: Backbone | None = None,
        prompt_bank: PromptBank | None = None,
        encode_prompts: bool = True,
    ) -> None:
        super().__init__()
        config = replace(config) if config is not None else ModelConfig()
        if backbone is None:
            backbone = load_backbone(config.backbone)
        else:
            config.backbone = str(backbone.info["name"])  # what a checkpoint must reload
        self.backbone_info: dict[str, Any] = dict(backbone.info)
        #: What the model is for and what it learnt from (a checkpoint's ``model_card``), or None.
        self.model_card: dict[str, Any] | None = None
        self.clip = backbone.clip
        self.clip.requires_grad_(False)
        self.adapter_merged = False

        default_preprocess = PreprocessConfig(
            image_size=backbone.image_size, image_mean=backbone.image_mean, image_std=backbone.image_std
        )
        if config.preprocess is None:
            config.preprocess = default_preprocess
        elif config.preprocess.image_size != backbone.image_size:
            raise ModelLoadError(
                f"preprocessing resizes to {config.preprocess.image_size} px but backbone "
                f"{backbone.info['name']!r} takes {backbone.image_size} px"
            )

        self.levels = config.heads.resolved_levels(backbone.vision_layers)
        # Recorded, so a checkpoint says which blocks its head was trained on (a later change of
        # the default rule cannot silently move them).
        config.heads = replace(config.heads, levels=self.levels)
        # Seeded: the same config builds the same untrained model (peft draws LoRA's A at random).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(INIT_SEED)
            attach_adapter(self.clip, config.adapter)
            self.seg_head = build_segmentation_head(config.heads, backbone, len(self.levels))
            self.cls_head = build_classification_head(config.heads, backbone, len(self.levels))
        reference = self.clip.visual_projection.weight
        self.seg_head.to(device=reference.device, dtype=reference.dtype)
        self.cls_head.to(device=reference.device, dtype=reference.dtype)

        self.prompt_bank = prompt_bank if prompt_bank is not None else load_prompt_bank(config.prompt_bank)
        config.prompt_hash = self.prompt_bank.content_hash
        dim = backbone.embed_dim
        self.register_buffer("organ_text", torch.zeros(len(ORGANS), dim, device=reference.device))
        self.register_buffer(
            "class_text", torch.zeros(len(ORGANS), len(PATHOLOGIES), dim, device=reference.device)
        )
        self.config = config
        self._tokenizer: Any = None
        self._prompt_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._prompt_lock = threading.Lock()
        if encode_prompts:
            self.encode_prompt_bank()
        self.eval()

    # ----------------------------------------------------------------------------------- text
    @property
    def tokenizer(self) -> Any:
        """The backbone's CLIP tokenizer (``backbone_info["tokenizer"]``), loaded on first use."""
        if self._tokenizer is None:
            source = self.backbone_info.get("tokenizer", self.backbone_info["name"])
            self._tokenizer = load_clip_tokenizer(source)
        return self._tokenizer

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Text embeddings ``(N, embed_dim)``, L2-normalised, through the frozen text tower."""
        from .backbone import text_features

        tokens = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=CONTEXT_LENGTH, return_tensors="pt"
        )
        device = self.organ_text.device
        features = text_features(
            self.clip, tokens["input_ids"].to(device), tokens["attention_mask"].to(device)
        )
        return F.normalize(features.float(), dim=-1).to(self.organ_text.dtype)

    @torch.no_grad()
    def encode_prompt_bank(self) -> None:
        """Fill ``organ_text`` (target descriptions) and ``class_text`` (mean class prompt per organ)."""
        bank = self.prompt_bank
        texts: list[str] = []
        for organ in ORGANS:
            texts.append(bank.target(organ))
            for prompts in bank.class_prompts(organ).values():
                texts.extend(prompts)
        embeddings = iter(self.encode_texts(texts))  # one batch: the text tower runs once
        for index, organ in enumerate(ORGANS):
            self.organ_text[index] = next(embeddings)
            for class_index, prompts in enumerate(bank.class_prompts(organ).values()):
                mean = torch.stack([next(embeddings) for _ in prompts]).mean(dim=0)
                self.class_text[index, class_index] = F.normalize(mean, dim=-1)
        self._prompt_cache.clear()

    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """Embedding ``(embed_dim,)`` of a free-text prompt (LRU-cached).

        Raises:
            SonoInputError: empty prompt, or longer than CLIP's 77-token context.
        """
        text = " ".join(str(prompt).split())
        if not text:
            raise SonoInputError("prompt", "empty prompt")
        with self._prompt_lock:
            cached = self._prompt_cache.get(text)
            if cached is not None:
                self._prompt_cache.move_to_end(text)
                return cached
        count = len(self.tokenizer(text, truncation=False, verbose=False)["input_ids"])
        if count > CONTEXT_LENGTH:
            raise SonoInputError(
                "prompt", f"{count} tokens; CLIP reads at most {CONTEXT_LENGTH} (start and end included)"
            )
        embedding = self.encode_texts([text])[0]
        with self._prompt_lock:
            self._prompt_cache[text] = embedding
            while len(self._prompt_cache) > PROMPT_CACHE_SIZE:
                self._prompt_cache.popitem(last=False)
        return embedding

    @staticmethod
    def organ_index(organ: str) -> int:
        """Row of ``organ`` in the text buffers; SonoInputError for an unknown organ."""
        organ_label(organ)
        return ORGANS.index(organ)

    def organ_ids(self, organs: list[str]) -> torch.Tensor:
        """``(B,)`` long tensor of organ rows for a batch of organ names."""
        return torch.tensor([self.organ_index(o) for o in organs], device=self.organ_text.device)

    # ---------------------------------------------------------------------------------- image
    @property
    def preprocess_config(self) -> PreprocessConfig:
        assert self.config.preprocess is not None
        return self.config.preprocess

    def preprocess_frame(self, image: Any, frame: int | None = None) -> tuple[torch.Tensor, Any]:
        """``(pixel_values (3, S, S), geometry)`` of one frame (middle frame when None)."""
        return preprocess_frame(image, frame, self.preprocess_config)

    def preprocess_pair(
        self, image: Any, mask: np.ndarray, frame: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training pair ``(pixel_values (3, S, S), mask (1, S, S) of 0/1)``, serving's geometry."""
        return preprocess_pair(image, mask, frame, self.preprocess_config)

    def mask_to_model_space(self, mask: np.ndarray, geometry: Any) -> torch.Tensor:
        return mask_to_model_space(mask, geometry)

    def encode_image(self, pixel_values: torch.Tensor) -> VisionFeatures:
        """Run the adapted vision tower once: multi-level hidden states and the image embedding."""
        reference = self.clip.visual_projection.weight
        pixel_values = pixel_values.to(device=reference.device, dtype=reference.dtype)
        output = self.clip.vision_model(pixel_values=pixel_values, output_hidden_states=True)
        levels = [output.hidden_states[level] for level in self.levels]
        embedding = F.normalize(self.clip.visual_projection(output.pooler_output), dim=-1)
        return VisionFeatures(levels=levels, embedding=embedding)

    def logit_scale(self) -> torch.Tensor:
        """CLIP's (frozen) logit scale ``exp(t)``, capped at 100 as in CLIP."""
        return self.clip.logit_scale.exp().clamp(max=100.0)

    # ---------------------------------------------------------------------------------- heads
    def segment_logits(
        self,
        features: VisionFeatures,
        text_embeddings: torch.Tensor,
        interaction: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(B, 2, S, S)`` segmentation logits conditioned on ``(B, D)`` or ``(D,)`` text embeddings
        and, optionally, on ``(B, 4, S, S)`` interaction prompt maps (:mod:`.interaction`)."""
        if interaction is not None:
            interaction = interaction.to(self.organ_text.device)
        return self.seg_head(features.levels, text_embeddings, interaction)

    def classify_logits(self, features: VisionFeatures, organ_ids: torch.Tensor) -> torch.Tensor:
        """``(B, 2)`` uncalibrated benign/malignant logits; class prompts chosen by ``organ_ids``."""
        if isinstance(self.cls_head, ReferenceClassificationHead):  # pooled patch tokens, no text
            return self.cls_head(features.levels)
        return self.cls_head(features.embedding, self.class_text[organ_ids], self.logit_scale())

    def forward(
        self,
        pixel_values: torch.Tensor,
        organ_ids: torch.Tensor | None = None,
        text_embeddings: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Batch forward for training and evaluation.

        Args:
            pixel_values: ``(B, 3, S, S)`` from :meth:`preprocess_frame` / :meth:`preprocess_pair`.
            organ_ids: ``(B,)`` rows of :data:`ORGANS`; condition the segmentation head (unless
                ``text_embeddings`` is given) and pick the class prompts.
            text_embeddings: ``(B, D)`` L2-normalised text conditions (free-text prompts).

        Returns:
            ``seg_logits (B, 2, S, S)``, ``image_embedding (B, D)`` and, with ``organ_ids``,
            ``cls_logits (B, 2)``.
        """
        if organ_ids is None and text_embeddings is None:
            raise ValueError("forward needs organ_ids or text_embeddings")
        features = self.encode_image(pixel_values)
        if organ_ids is not None:
            organ_ids = torch.as_tensor(organ_ids, device=self.organ_text.device).long().reshape(-1)
        condition = text_embeddings if text_embeddings is not None else self.organ_text[organ_ids]
        out = {"seg_logits": self.segment_logits(features, condition), "image_embedding": features.embedding}
        if organ_ids is not None:
            out["cls_logits"] = self.classify_logits(features, organ_ids)
        return out

    # ------------------------------------------------------------------------------ training
    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters that train: the adapter's and the heads' (the backbone is frozen)."""
        return [p for p in self.parameters() if p.requires_grad]

    def parameter_counts(self) -> dict[str, int]:
        """``total`` (both towers, adapter, heads), ``trainable``, ``heads`` parameter counts."""
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.trainable_parameters())
        heads = sum(p.numel() for m in (self.seg_head, self.cls_head) for p in m.parameters())
        return {"total": total, "trainable": trainable, "heads": heads}

    def merge_adapter(self) -> None:
        """Fold LoRA into the backbone for faster inference (no-op for other adapters)."""
        merge_adapter(self.clip)
        self.adapter_merged = self.config.adapter.kind == "lora"

    def unmerge_adapter(self) -> None:
        unmerge_adapter(self.clip)
        self.adapter_merged = False

    # ---------------------------------------------------------------------------- checkpoint
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What a checkpoint holds: adapter and head weights, temperature, cached text embeddings."""
        # A merged LoRA still holds its A/B factors, so what is saved is the same either way.
        state: dict[str, torch.Tensor] = {}
        for key, tensor in adapter_state_dict(self.clip).items():
            state[f"adapter.{key}"] = tensor
        for prefix, module in (("seg_head", self.seg_head), ("cls_head", self.cls_head)):
            for key, tensor in module.state_dict().items():
                state[f"{prefix}.{key}"] = tensor
        state["text.organ_text"] = self.organ_text
        state["text.class_text"] = self.class_text
        return {key: tensor.detach() for key, tensor in state.items()}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`trainable_state_dict`; ModelLoadError names missing/unexpected keys."""
        expected = self.trainable_state_dict()
        optional = {k: v for k, v in expected.items() if k.startswith(OPTIONAL_STATE_PREFIXES)}
        if not any(k in state for k in optional):
            # Saved before the interaction encoder existed: zero output layers, so it has no effect.
            # (A checkpoint holding part of it is still reported as missing the rest.)
            fill = {k: torch.zeros_like(v) if _is_output_layer(k) else v for k, v in optional.items()}
            state = {**state, **fill}
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        shapes = sorted(
            f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
            for k in set(expected) & set(state)
            if tuple(state[k].shape) != tuple(expected[k].shape)
        )
        if missing or unexpected or shapes:
            problems = [
                f"{what} {items[:4]}{' ...' if len(items) > 4 else ''}"
                for what, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes))
                if items
            ]
            raise ModelLoadError("weights do not fit this model: " + "; ".join(problems))
        merged = self.adapter_merged
        if merged:  # LoRA factors load into the unmerged layers, then fold in again
            self.unmerge_adapter()
        load_adapter_state_dict(
            self.clip, {k[len("adapter.") :]: v for k, v in state.items() if k.startswith("adapter.")}
        )
        if merged:
            self.merge_adapter()
        for prefix, module in (("seg_head", self.seg_head), ("cls_head", self.cls_head)):
            n = len(prefix) + 1
            module.load_state_dict({k[n:]: v for k, v in state.items() if k.startswith(prefix + ".")})
        with torch.no_grad():
            self.organ_text.copy_(state["text.organ_text"])
            self.class_text.copy_(state["text.class_text"])
        self._prompt_cache.clear()

    def state_hash(self) -> str:
        """sha256 (hex) of the trainable state: equal for equal weights, whatever the process."""
        digest = hashlib.sha256()
        for key, tensor in sorted(self.trainable_state_dict().items()):
            digest.update(key.encode())
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
        return digest.hexdigest()

    @property
    def version(self) -> str:
        """The checkpoint's version id, or ``init-<hash>`` for a model never saved."""
        return self.config.version or f"init-{self.state_hash()[:12]}"

    def geometry(self) -> dict[str, Any]:
        """The backbone geometry a checkpoint must be loaded onto."""
        return geometry_info(self.clip)

    def describe(self) -> dict[str, Any]:
        """JSON summary for ``model-info`` and the server's ``/info``."""
        return {
            "backbone": self.backbone_info["name"],
            "backbone_info": dict(self.backbone_info),
            "untrained": bool(self.backbone_info.get("untrained", False)),
            "adapter": self.config.adapter.kind,
            "prompt_bank": self.prompt_bank.ident,
            "version": self.version,
            "model_card": dict(self.model_card) if self.model_card else None,
            "levels": list(self.levels),
            "parameters": self.parameter_counts(),
            "preprocess": self.preprocess_config.to_dict(),
        }
