"""``python -m training demo-check``: the demo model, judged through a running server.

Writes held-out simulated studies (seed ``sonovlm.demo_model.EVAL_SEED``, every case labelled),
starts ``monailabel start_server`` on them with ``--conf weights demo`` (or uses ``--url``), asks
for an auto-segment (organ ``auto``: the organ recorded in the DICOM) and a classification of
every case through MONAI Label's own client, exactly as the Slicer plugin would, and reports:

* Dice of the returned mask against the simulator's truth, per organ (mean, min, n);
* classification accuracy and AUC (malignant score), per organ and overall;
* the ``model_card`` of every reply (it must say phantoms, not clinical);
* ``--figure PNG``: one case per organ (the median Dice of each), truth green, server mask red.

The README's picture is ``python -m training demo-check --figure docs/demo_contours.png``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sonovlm.server_launcher import RunningServer

REPO = Path(__file__).resolve().parents[1]
#: Held-out studies written by default (a multiple of 6: every organ x pathology equally often).
DEFAULT_COUNT = 36


def evaluate(url: str, studies: Path, cases: list) -> dict:
    """Auto-segment and classify every case of ``studies`` through the server at ``url``.

    Args:
        url: server root, no trailing slash.
        studies: the studies folder the server serves.
        cases: its :class:`sonovlm.sample_data.Case` list (ids, organs, pathologies, labels).

    Returns:
        ``{"per_case": [...], "dice_per_organ": {organ: {mean, min, n}}, "classification":
        {...}, "model_cards": [distinct cards]}``; each per-case record holds the mask path too.
    """
    from monai.metrics import compute_roc_auc
    from monailabel.client import MONAILabelClient
    from sonovlm.io import load_image
    from sonovlm.io.mask import read_mask

    client = MONAILabelClient(url, tmpdir=str(studies.parent / "replies"))
    (studies.parent / "replies").mkdir(exist_ok=True)
    records, cards = [], []
    for case in cases:
        image = load_image(case.image_path)
        mask_path, reply = client.infer("segmentation", case.id, {"result_extension": ".nrrd"})
        _, cls_reply = client.infer("classification", case.id, {})
        if isinstance(cls_reply, bytes):  # MONAI Label 0.8.5's client parses only str bodies
            cls_reply = json.loads(cls_reply)
        predicted = read_mask(mask_path, (image.height, image.width)) != 0
        truth = read_mask(case.label_path, (image.height, image.width)) != 0
        total = predicted.sum() + truth.sum()
        dice = 1.0 if total == 0 else float(2.0 * (predicted & truth).sum() / total)
        scores = {p["label"]: p["score"] for p in cls_reply["prediction"]}
        for card in (reply.get("model_card"), cls_reply.get("model_card")):
            if card not in cards:
                cards.append(card)
        records.append({
            "id": case.id, "organ": case.organ, "pathology": case.pathology, "dice": dice,
            "organ_served": reply["organ"], "mask_path": str(mask_path),
            "malignant_score": float(scores["malignant"]), "predicted_pathology": cls_reply["label"],
        })
    dice_per_organ = {}
    classification: dict[str, dict] = {}
    for organ in sorted({r["organ"] for r in records}):
        group = [r for r in records if r["organ"] == organ]
        values = [r["dice"] for r in group]
        dice_per_organ[organ] = {"mean": round(float(np.mean(values)), 4), "min": round(min(values), 4),
                                 "n": len(values)}
        classification[organ] = _classification_summary(group, compute_roc_auc)
    classification["all"] = _classification_summary(records, compute_roc_auc)
    return {"per_case": records, "dice_per_organ": dice_per_organ, "classification": classification,
            "model_cards": cards}


def _classification_summary(group: list[dict], compute_roc_auc) -> dict:
    import torch

    labels = [1 if r["pathology"] == "malignant" else 0 for r in group]
    accuracy = float(np.mean([r["predicted_pathology"] == r["pathology"] for r in group]))
    auc = None
    if 0 < sum(labels) < len(labels):
        scores = torch.tensor([r["malignant_score"] for r in group])
        auc = float(compute_roc_auc(scores, torch.tensor(labels)))
    return {"accuracy": round(accuracy, 4), "auc": None if auc is None else round(auc, 4), "n": len(group)}


def plot_figure(result: dict, cases: list, path: Path) -> Path:
    """One case per organ (its median Dice): the frame, truth (green) and the server's mask (red)."""
    from sonovlm.io import load_image
    from sonovlm.io.mask import read_mask

    from .report import plot_overlays

    by_id = {c.id: c for c in cases}
    picks = []
    for organ in result["dice_per_organ"]:
        group = sorted((r for r in result["per_case"] if r["organ"] == organ), key=lambda r: r["dice"])
        record = group[len(group) // 2]
        picks.append((organ.replace("_", " "), {**record, "name": record["id"]}))

    def render(record: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        image = load_image(by_id[record["id"]].image_path)
        shape = (image.height, image.width)
        x0, y0, x1, y1 = image.imaging_bbox()
        grey = np.asarray(image.frames[0])
        grey = grey.mean(axis=-1) if grey.ndim == 3 else grey
        truth = read_mask(by_id[record["id"]].label_path, shape) != 0
        predicted = read_mask(record["mask_path"], shape) != 0
        return grey[y0:y1, x0:x1], truth[y0:y1, x0:x1], predicted[y0:y1, x0:x1]

    path.parent.mkdir(parents=True, exist_ok=True)
    plot_overlays(picks, render, path)
    return path


def run_demo_check(args: argparse.Namespace) -> int:
    """CLI entry: write the held-out studies, serve the demo model on them, report (JSON)."""
    from sonovlm.demo_model import DEMO_WEIGHTS_ALIAS, EVAL_SEED
    from sonovlm.sample_data import write_sample_studies

    work = Path(tempfile.mkdtemp(prefix="sonovlm-demo-check-"))
    server = None
    try:
        studies = work / "studies"
        cases = write_sample_studies(studies, count=args.count, seed=EVAL_SEED, label_every_case=True)
        url = args.url
        if url is None:
            server = serve(studies, work, {"weights": DEMO_WEIGHTS_ALIAS, "threads": args.threads})
            url = server.url
        result = evaluate(url.rstrip("/"), studies, cases)
        if args.figure:
            plot_figure(result, cases, Path(args.figure))
        summary = {k: v for k, v in result.items() if k != "per_case"}
        summary["studies"] = {"count": args.count, "seed": EVAL_SEED}
        print(json.dumps(summary, indent=2))
        return 0
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


def serve(studies: Path, work: Path, conf: dict, timeout_s: float = 300.0) -> RunningServer:
    """A server of the repository's ``monailabel_app`` on ``studies`` (127.0.0.1, scoring off;
    app copy, model dir and ``server.log`` in ``work``), ready; ``server.stop()`` ends it."""
    from sonovlm.server_launcher import start_server

    conf = {"auto_scoring": "false", **conf}
    return start_server(REPO / "monailabel_app", studies, conf, work_dir=work, timeout=timeout_s)

