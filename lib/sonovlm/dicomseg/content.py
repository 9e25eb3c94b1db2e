"""What a SEG says about its one segment apart from the pixels: :class:`SegmentContent`,
:class:`SegAlgorithm` and the constants both SEG builders (:mod:`.writer`, :mod:`.cine`) share.

It imports neither builder, so they can both import it without a circle.
"""

from __future__ import annotations

from dataclasses import dataclass

from .coding import OrganCoding

#: Series Number of the SEG series SonoVLM writes (one new series per SEG).
SEG_SERIES_NUMBER = 9701

#: Manufacturer and model name in the Enhanced General Equipment module.
MANUFACTURER = "SonoVLM"

#: Content Label (VR CS) of a submitted label and of a model result.
CONTENT_LABEL_MANUAL = "SONOVLM_LABEL"
CONTENT_LABEL_AUTOMATIC = "SONOVLM_AUTO"


@dataclass(frozen=True)
class SegAlgorithm:
    """The model that produced an automatic segmentation.

    Attributes:
        name: algorithm name (``SonoVLM``).
        version: the served model's version (checkpoint id and time).
    """

    name: str = "SonoVLM"
    version: str = "untrained"


@dataclass(frozen=True)
class SegmentContent:
    """Everything about the one segment apart from its pixels (shared by both builders)."""

    coding: OrganCoding
    findings: str
    algorithm: SegAlgorithm | None
    content_creator: str | None

    @property
    def content_label(self) -> str:
        return CONTENT_LABEL_AUTOMATIC if self.algorithm else CONTENT_LABEL_MANUAL

    @property
    def creator_pn(self) -> str | None:
        """Content Creator's Name (VR PN): a user name as a one-component name (trailing ``^``)."""
        if not self.content_creator:
            return None
        name = str(self.content_creator).strip()[:60]
        return name if "^" in name else f"{name}^"

    @property
    def content_description(self) -> str:
        kind = "automatic segmentation" if self.algorithm else "label"
        return f"{self.coding.description} {kind}"[:64]
