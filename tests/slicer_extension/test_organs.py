"""The extension's organ and pathology vocabularies equal the server's (they cannot import it:
Slicer's Python has no ``sonovlm`` package)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from sonovlm.organs import ORGAN_LABELS as SERVER_ORGAN_LABELS
from sonovlm.organs import PATHOLOGIES
from SonoVLMLib.organs import ORGAN_COLOURS, ORGAN_DISPLAY_NAMES, ORGAN_LABELS

UI = Path(__file__).resolve().parents[2] / "slicer_extension/SonoVLM/Resources/UI/SonoVLM.ui"


def test_organ_labels_equal_the_servers():
    assert ORGAN_LABELS == dict(SERVER_ORGAN_LABELS)
    assert set(ORGAN_DISPLAY_NAMES) == set(ORGAN_COLOURS) == set(ORGAN_LABELS)


def test_pathology_choices_in_the_panel_are_unknown_then_the_servers():
    combo = next(w for w in ET.parse(UI).iter("widget") if w.get("name") == "pathologyComboBox")
    items = [item.find("property/string").text for item in combo.findall("item")]
    assert items == ["unknown", *PATHOLOGIES]
