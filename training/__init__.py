"""SonoVLM training and evaluation pipeline (``python -m training ...``).

Stages after Qu et al. 2025 ("Adapting Vision-Language Foundation Model for Next Generation
Medical Ultrasound Image Analysis", public code jinggqu/NextGen-UIA): contrastive adapter tuning
on image-caption pairs, segmentation, classification, zero-shot classification; plus dataset
converters (``prepare``), run comparison (``compare``) and export of a checkpoint the server loads
(``export``). The model is :mod:`sonovlm.model`, the same code the server runs; nothing here
copies it.
"""

from __future__ import annotations
