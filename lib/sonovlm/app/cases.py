"""Organ and pathology per image from a studies folder's ``cases.csv``.

``sonovlm sample-data`` writes ``cases.csv`` with columns ``id,organ,pathology,labelled``; ``id`` is
the image id (the file name without its extension). Empty cells mean unknown.
"""

from __future__ import annotations

import csv
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from ..organs import ORGAN_LABELS, PATHOLOGIES
from .atomic import file_signature

logger = logging.getLogger(__name__)

CASES_FILE = "cases.csv"


@dataclass(frozen=True)
class CaseInfo:
    """What ``cases.csv`` records for one image (``None`` = unknown)."""

    organ: str | None
    pathology: str | None


def read_cases(path: str | os.PathLike) -> dict[str, CaseInfo]:
    """Read ``cases.csv``; rows with an unknown organ or pathology keep that field as ``None``."""
    cases: dict[str, CaseInfo] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            image_id = (row.get("id") or "").strip()
            if not image_id:
                continue
            organ = (row.get("organ") or "").strip() or None
            pathology = (row.get("pathology") or "").strip().lower() or None
            if organ is not None and organ not in ORGAN_LABELS:
                logger.warning("%s: unknown organ %r for %s ignored", path, organ, image_id)
                organ = None
            if pathology is not None and pathology not in PATHOLOGIES:
                logger.warning("%s: unknown pathology %r for %s ignored", path, pathology, image_id)
                pathology = None
            cases[image_id] = CaseInfo(organ=organ, pathology=pathology)
    return cases


class CaseTable:
    """``cases.csv`` of a studies folder, re-read when the file changes."""

    def __init__(self, studies_dir: str | os.PathLike) -> None:
        self.path = Path(studies_dir) / CASES_FILE
        self._signature: tuple[int, int, int] | None = None
        self._cases: dict[str, CaseInfo] = {}
        self._lock = threading.Lock()

    def get(self, image_id: str) -> CaseInfo | None:
        with self._lock:
            signature = file_signature(self.path)
            if signature != self._signature:
                self._cases = read_cases(self.path) if signature is not None else {}
                self._signature = signature
            return self._cases.get(image_id)
