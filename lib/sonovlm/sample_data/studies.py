"""A MONAI Label studies folder of simulated cases, and ``cases.csv`` that describes it.

Layout (what MONAI Label 0.8.5's ``LocalDatastore`` expects; the image id is the file name without
its extension, a label has the image's id and its own extension)::

    DIR/sample_001.dcm             simulated US DICOM (the app adds "*.dcm" to the datastore's
    DIR/sample_002.dcm             MONAI_LABEL_DATASTORE_FILE_EXT, whose default lacks it)
    DIR/labels/final/sample_001.png  lesion mask, rows x cols uint8, value = organ label value
    DIR/cases.csv                  id,organ,pathology,labelled  (labelled: true / false)

Case ``i`` (0-based) is organ ``i % 3`` (lymph_node, breast_lesion, thyroid_nodule), pathology
``(i // 3) % 2`` (benign, malignant) and is labelled when ``(i + i // 6)`` is even: every block of
12 cases holds each organ × pathology once labelled and once not, and any prefix is about half
labelled. Each case draws from its own random stream ``numpy.random.default_rng([seed, i])``, so
``--count 6`` writes the first 6 cases of ``--count 24`` byte for byte.

Existing data is never overwritten: a folder that already holds ``cases.csv``, a ``*.dcm`` file or
anything under ``labels/`` is refused with :class:`~sonovlm.errors.SonoInputError`; other files
(a ``.gitkeep``, say) are left alone.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SonoInputError
from ..io import save_mask
from ..organs import ORGAN_LABELS, PATHOLOGIES
from ..progress import progress
from .dicom import DicomIdentity, write_ultrasound_dicom
from .simulate import simulate_case

CASES_CSV = "cases.csv"
CASES_COLUMNS: tuple[str, ...] = ("id", "organ", "pathology", "labelled")
LABELS_DIR = Path("labels") / "final"
IMAGE_EXTENSION = ".dcm"
LABEL_EXTENSION = ".png"
MAX_COUNT = 9999
_ORGANS = tuple(ORGAN_LABELS)
_DESCRIPTIONS = {
    "lymph_node": "Simulated lymph node ultrasound",
    "breast_lesion": "Simulated breast ultrasound",
    "thyroid_nodule": "Simulated thyroid ultrasound",
}


@dataclass(frozen=True)
class Case:
    """One case of a studies folder.

    Attributes:
        id: the image id (file name without extension).
        organ: key of :data:`sonovlm.organs.ORGAN_LABELS`.
        pathology: ``benign`` or ``malignant``.
        labelled: whether a final label exists.
        image_path: the DICOM file.
        label_path: the mask PNG in ``labels/final``, or ``None`` when unlabelled.
    """

    id: str
    organ: str
    pathology: str
    labelled: bool
    image_path: Path
    label_path: Path | None


def case_plan(index: int) -> tuple[str, str, bool]:
    """``(organ, pathology, labelled)`` of case ``index`` (0-based); see the module docstring."""
    return _ORGANS[index % 3], PATHOLOGIES[(index // 3) % 2], (index + index // 6) % 2 == 0


def write_sample_studies(
    directory: str | os.PathLike, count: int = 24, seed: int = 0, label_every_case: bool = False
) -> list[Case]:
    """Write ``count`` simulated cases into ``directory`` (created if absent).

    Args:
        directory: the studies folder; must not already hold studies (see the module docstring).
        count: number of cases, 1 .. 9999.
        seed: non-negative integer; the same seed gives byte-identical files.
        label_every_case: write a final label for every case (a training set) instead of the
            plan's half (a studies folder to annotate). Images are the same either way.

    Returns:
        The cases written, in id order.

    Raises:
        SonoInputError: bad ``count`` or ``seed``, ``directory`` is a file or already holds studies.
    """
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
        raise SonoInputError("count", f"must be an integer from 1 to {MAX_COUNT}, got {count!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise SonoInputError("seed", f"must be an integer from 0 to 2**63 - 1, got {seed!r}")
    root = Path(directory)
    _refuse_existing_studies(root)
    (root / LABELS_DIR).mkdir(parents=True, exist_ok=True)

    width = max(3, len(str(count)))
    cases: list[Case] = []
    for index in progress(range(count), "sample studies", unit="study"):
        organ, pathology, labelled = case_plan(index)
        labelled = labelled or label_every_case
        case_id = f"sample_{index + 1:0{width}d}"
        rng = np.random.default_rng([seed, index])
        image, mask, meta = simulate_case(rng, organ, pathology, annotation=case_id.upper())
        identity = DicomIdentity.derive(
            patient_id=f"SONOVLM-{seed}-{index + 1:0{width}d}",
            entropy=["sonovlm-sample-data", str(seed), case_id],
        )
        image_path = root / f"{case_id}{IMAGE_EXTENSION}"
        write_ultrasound_dicom(image_path, image, meta, identity, _DESCRIPTIONS[organ])
        label_path = None
        if labelled:
            label_path = root / LABELS_DIR / f"{case_id}{LABEL_EXTENSION}"
            save_mask(label_path, mask)
        cases.append(Case(case_id, organ, pathology, labelled, image_path, label_path))

    # cases.csv last: its presence marks a complete folder.
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CASES_COLUMNS)
    for case in cases:
        writer.writerow([case.id, case.organ, case.pathology, "true" if case.labelled else "false"])
    (root / CASES_CSV).write_text(buffer.getvalue(), encoding="utf-8")
    return cases


def read_cases(directory: str | os.PathLike) -> list[Case]:
    """Read ``directory/cases.csv`` (columns ``id,organ,pathology,labelled``, any order).

    ``labelled`` is ``true`` or ``false``. The image is ``<id>.dcm`` and the label
    ``labels/final/<id>.png`` (paths are given whether or not the files exist).

    Raises:
        SonoInputError: the file is missing, lacks a column, or has an unknown organ, pathology or
            labelled value, or an id repeated.
    """
    root = Path(directory)
    path = root / CASES_CSV
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SonoInputError(
            path, "not found (a studies folder written by `sonovlm sample-data` has one)"
        ) from None
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in CASES_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise SonoInputError(
            path, f"missing column(s) {', '.join(missing)}; expected {','.join(CASES_COLUMNS)}"
        )
    cases: list[Case] = []
    seen: set[str] = set()
    for line, row in enumerate(reader, start=2):
        case_id, organ, pathology = row["id"].strip(), row["organ"].strip(), row["pathology"].strip()
        labelled = row["labelled"].strip().lower()
        if not case_id or case_id in seen:
            raise SonoInputError(path, f"line {line}: empty or repeated id {case_id!r}")
        if organ not in ORGAN_LABELS:
            raise SonoInputError(
                path, f"line {line}: unknown organ {organ!r} (known: {', '.join(ORGAN_LABELS)})"
            )
        if pathology not in PATHOLOGIES:
            raise SonoInputError(
                path, f"line {line}: unknown pathology {pathology!r} (known: {', '.join(PATHOLOGIES)})"
            )
        if labelled not in ("true", "false"):
            raise SonoInputError(
                path, f"line {line}: labelled must be true or false, got {row['labelled']!r}"
            )
        seen.add(case_id)
        is_labelled = labelled == "true"
        cases.append(
            Case(
                id=case_id,
                organ=organ,
                pathology=pathology,
                labelled=is_labelled,
                image_path=root / f"{case_id}{IMAGE_EXTENSION}",
                label_path=root / LABELS_DIR / f"{case_id}{LABEL_EXTENSION}" if is_labelled else None,
            )
        )
    return cases


def _refuse_existing_studies(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise SonoInputError(root, "exists and is not a folder")
    if not root.exists():
        return
    found = []
    if (root / CASES_CSV).exists():
        found.append(CASES_CSV)
    dicoms = sorted(p.name for p in root.glob(f"*{IMAGE_EXTENSION}"))
    if dicoms:
        found.append(f"{len(dicoms)} DICOM file(s)")
    labels = root / "labels"
    if labels.is_dir() and any(p.is_file() for p in labels.rglob("*")):
        found.append("labels/")
    if found:
        raise SonoInputError(
            root,
            f"already holds studies ({', '.join(found)}); "
            "sample-data never overwrites: choose a new or empty folder",
        )
