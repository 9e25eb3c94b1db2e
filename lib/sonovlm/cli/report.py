"""``sonovlm report STUDIES --out FILE.csv``: one row per image of a server's studies folder.

Columns: ``image_id``, ``file``, ``organ``, ``pathology`` (from the final label, the image info,
then ``cases.csv``), ``labelled``, the latest classification the server gave
(``classification``, ``malignant_score``, ``classification_model_version``), and measurements
(``measurement_source``: ``label`` when a final label exists, else ``model`` for the latest
auto-segmentation, else empty; ``frame``, ``calibrated``, ``area_mm2``, ``long_axis_mm``,
``short_axis_mm``, ``axis_ratio``, ``taller_than_wide`` and the pixel twins ``area_px``,
``long_axis_px``, ``short_axis_px``). Reads the folder only; the server need not run.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_MEASURED = (
    "calibrated",
    "area_mm2",
    "long_axis_mm",
    "short_axis_mm",
    "axis_ratio",
    "taller_than_wide",
    "area_px",
    "long_axis_px",
    "short_axis_px",
)

COLUMNS: tuple[str, ...] = (
    "image_id",
    "file",
    "organ",
    "pathology",
    "labelled",
    "classification",
    "malignant_score",
    "classification_model_version",
    "measurement_source",
    "frame",
    *_MEASURED,
)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="CSV of organ, pathology, latest classification and measurements per image",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("studies", type=Path, metavar="STUDIES", help="the server's --studies folder")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE.csv", help="CSV file to write")
    parser.set_defaults(func=run)


def _image_files(studies: Path) -> dict[str, str]:
    """``image_id -> file name`` of the images a server would list (same patterns and id rule)."""
    from ..app.datastore import image_patterns

    patterns = image_patterns()
    found: dict[str, str] = {}
    for name in sorted(os.listdir(studies)):
        if not (studies / name).is_file():
            continue
        matching = [p.replace("*", "") for p in patterns if fnmatch.fnmatch(name, p)]
        if matching:
            ext = max(matching, key=len)
            found[name[: -len(ext)]] = name
    return found


def _index(studies: Path) -> dict[str, Any]:
    from ..app.atomic import read_json

    data = read_json(studies / "datastore_v2.json", default=None) or {}
    return data.get("objects", {})


def _final_label(studies: Path, image_id: str, entry: dict[str, Any]) -> tuple[Path | None, dict[str, Any]]:
    final = entry.get("labels", {}).get("final")
    if final:
        return studies / "labels" / "final" / f"{image_id}{final.get('ext', '')}", dict(final.get("info", {}))
    candidates = sorted((studies / "labels" / "final").glob(f"{image_id}.*"))
    return (candidates[0] if candidates else None), {}


def _label_measurement(label_path: Path, image, info: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
    import numpy as np

    from ..app.infer import lesion_measurements
    from ..app.labels import read_stored_label

    mask = read_stored_label(label_path, image.n_frames)
    if mask.ndim == 2:
        frame = int(info.get("frame", 0))
    else:  # a whole cine: the annotated frame with the largest lesion
        frames = info.get("annotated_frames") or list(range(mask.shape[0]))
        frame = max(frames, key=lambda f: int(np.count_nonzero(mask[f])))
        mask = mask[frame]
    measured = lesion_measurements(image, mask)
    return (frame, measured) if measured else None


def image_row(studies: Path, image_id: str, file_name: str, entry: dict[str, Any], cases, results) -> dict:
    """The report row of one image."""
    from ..io import load_image

    label_path, label_info = _final_label(studies, image_id, entry)
    image_info = entry.get("image", {}).get("info", {})
    case = cases.get(image_id)

    def recorded(key: str) -> str | None:
        for info in (label_info, image_info):
            if info.get(key):
                return str(info[key])
        return getattr(case, key) if case else None

    row: dict[str, Any] = {
        "image_id": image_id,
        "file": file_name,
        "organ": recorded("organ"),
        "pathology": recorded("pathology"),
        "labelled": label_path is not None and label_path.exists(),
    }
    latest = results.latest(image_id)
    classification = latest.get("classification")
    if classification:
        scores = {p["label"]: p["score"] for p in classification.get("prediction", [])}
        row["classification"] = classification.get("label")
        row["malignant_score"] = scores.get("malignant")
        row["classification_model_version"] = classification.get("model_version")

    measured: tuple[int, dict[str, Any]] | None = None
    source = None
    if row["labelled"]:
        image = load_image(studies / file_name)
        measured, source = _label_measurement(label_path, image, label_info), "label"
    elif latest.get("segmentation", {}).get("measurements"):
        segmentation = latest["segmentation"]
        measured, source = (segmentation.get("frame"), segmentation["measurements"]), "model"
    if measured:
        frame, values = measured
        row["measurement_source"] = source
        row["frame"] = frame
        row.update({k: values.get(k) for k in _MEASURED})
    return row


def run(args: argparse.Namespace) -> int:
    from ..app.cases import CaseTable
    from ..app.datastore import STATE_DIR
    from ..app.results import ResultLog
    from ..errors import SonoInputError

    studies: Path = args.studies
    if not studies.is_dir():
        raise SonoInputError(studies, "no such studies folder")
    if not args.out.parent.is_dir():
        raise SonoInputError(args.out, "the folder to write into does not exist")
    index = _index(studies)
    cases = CaseTable(studies)
    results = ResultLog(studies / STATE_DIR / "results")
    rows = []
    for image_id, file_name in _image_files(studies).items():
        try:
            rows.append(image_row(studies, image_id, file_name, index.get(image_id, {}), cases, results))
        except SonoInputError as exc:
            logger.warning("skipping %s: %s", image_id, exc)
            rows.append({"image_id": image_id, "file": file_name})
    with open(args.out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in COLUMNS})
    print(f"{len(rows)} image(s) -> {args.out}")
    return 0
