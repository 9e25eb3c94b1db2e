"""Organs (lesion kinds) SonoVLM knows, and their mask label values."""

from __future__ import annotations

from .errors import SonoInputError

#: Mask pixel value per organ. A mask's non-zero pixels carry its organ's value.
ORGAN_LABELS: dict[str, int] = {"lymph_node": 1, "breast_lesion": 2, "thyroid_nodule": 3}

#: Pathology classes, in the order classifiers return them.
PATHOLOGIES: tuple[str, ...] = ("benign", "malignant")


def organ_label(organ: str) -> int:
    """Label value of ``organ``; raises :class:`SonoInputError` for an unknown organ."""
    try:
        return ORGAN_LABELS[organ]
    except KeyError:
        known = ", ".join(ORGAN_LABELS)
        raise SonoInputError("organ", f"unknown organ {organ!r} (known: {known})") from None
