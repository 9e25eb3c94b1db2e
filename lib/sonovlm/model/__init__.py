"""The adapted vision-language model: CLIP backbone, adapters, prompts, task heads, checkpoints.

Public API:

* :func:`load_backbone` / :class:`Backbone` (hub id, local directory, or the untrained presets
  ``tiny`` and ``vit-b16``; :data:`DEFAULT_BACKBONE`);
* :class:`AdapterConfig` (``lora``, ``mona``, ``hybrid``, ``none``), :class:`HeadConfig`,
  :class:`PreprocessConfig`, :class:`ModelConfig`;
* :class:`SonoVLM`, the one model every caller uses (training forward, trainable parameters,
  cached text embeddings), and :data:`ORGANS` (the order of ``organ_ids``);
* :func:`save_checkpoint` / :func:`load_checkpoint` (one safetensors file, atomic writes);
* :class:`Predictor` with :class:`SegmentationResult` / :class:`ClassificationResult`, and
  :func:`load_model` (what ``--backbone/--adapter/--weights`` mean);
* :func:`preprocess_pair` (training pairs in serving's geometry), :func:`segmentation_loss` and
  :func:`classification_loss` (MONAI DiceCE and Focal);
* :func:`load_clip_tokenizer`, :func:`load_prompt_bank` / :class:`PromptBank`.

Importing this package imports torch and transformers; the CLI imports it inside its commands.
"""

from __future__ import annotations

from .adapters import AdapterConfig
from .backbone import DEFAULT_BACKBONE, PRESETS, Backbone, load_backbone
from .checkpoint import load_checkpoint, read_checkpoint_metadata, save_checkpoint, set_checkpoint_card
from .heads import ClassificationHead, HeadConfig, SegmentationHead, classification_loss, segmentation_loss
from .inference import ClassificationResult, FrameFeatures, Predictor, SegmentationResult, load_model
from .preprocess import FrameGeometry, PreprocessConfig, from_model_space, preprocess_frame, preprocess_pair
from .prompts import PromptBank, load_prompt_bank
from .sonovlm_model import ORGANS, ModelConfig, SonoVLM, VisionFeatures
from .tokenizer import load_clip_tokenizer

__all__ = [
    "DEFAULT_BACKBONE",
    "ORGANS",
    "PRESETS",
    "AdapterConfig",
    "Backbone",
    "ClassificationHead",
    "ClassificationResult",
    "FrameFeatures",
    "FrameGeometry",
    "HeadConfig",
    "ModelConfig",
    "Predictor",
    "PreprocessConfig",
    "PromptBank",
    "SegmentationHead",
    "SegmentationResult",
    "SonoVLM",
    "VisionFeatures",
    "classification_loss",
    "from_model_space",
    "load_backbone",
    "load_checkpoint",
    "load_clip_tokenizer",
    "load_model",
    "load_prompt_bank",
    "preprocess_frame",
    "preprocess_pair",
    "read_checkpoint_metadata",
    "save_checkpoint",
    "set_checkpoint_card",
    "segmentation_loss",
]
