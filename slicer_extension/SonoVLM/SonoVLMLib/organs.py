"""Organs (lesion kinds) the extension offers, with their segment names and fixed colours.

Label values must equal the server's (``sonovlm.organs.ORGAN_LABELS``;
``tests/slicer_extension/test_organs.py`` checks it). The pathology choices live in the panel's
``.ui`` (``unknown`` sends none), and the same test checks them against the server's.
Colours are fixed per organ so that a sonographer recognises the target at a glance.
"""

from __future__ import annotations

#: Mask pixel value per organ, as the server writes it.
ORGAN_LABELS = {"lymph_node": 1, "breast_lesion": 2, "thyroid_nodule": 3}

#: Name shown in the organ list and given to the segment.
ORGAN_DISPLAY_NAMES = {
    "lymph_node": "Lymph node",
    "breast_lesion": "Breast lesion",
    "thyroid_nodule": "Thyroid nodule",
}

#: Segment colour per organ, RGB in [0, 1].
ORGAN_COLOURS = {
    "lymph_node": (0.20, 0.75, 0.35),
    "breast_lesion": (0.90, 0.30, 0.55),
    "thyroid_nodule": (0.98, 0.70, 0.15),
}

#: Segment tag that records which organ a segment is (its name may be edited by the user).
ORGAN_TAG = "SonoVLM.organ"

#: Segment tag that records the frame a segment was made on (cine loops).
FRAME_TAG = "SonoVLM.frame"


def segment_name(organ: str) -> str:
    """Segment name for ``organ`` (its display name)."""
    return ORGAN_DISPLAY_NAMES[_known(organ)]


def segment_colour(organ: str) -> tuple:
    """Fixed segment colour of ``organ``, ``(r, g, b)`` in [0, 1]."""
    return ORGAN_COLOURS[_known(organ)]


def _known(organ: str) -> str:
    if organ not in ORGAN_LABELS:
        raise ValueError(f"unknown organ {organ!r} (known: {', '.join(ORGAN_LABELS)})")
    return organ
