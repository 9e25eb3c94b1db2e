"""The paper's stages: contrastive, segmentation, classification, zero-shot."""

from __future__ import annotations

from .classification import ClassificationStage, ZeroShotStage
from .contrastive import ContrastiveStage
from .segmentation import SegmentationStage

#: CLI name -> stage class
STAGES = {
    "contrastive": ContrastiveStage,
    "segmentation": SegmentationStage,
    "classification": ClassificationStage,
    "zero-shot": ZeroShotStage,
}

__all__ = ["STAGES", "ClassificationStage", "ContrastiveStage", "SegmentationStage", "ZeroShotStage"]
