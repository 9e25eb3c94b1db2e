"""``python -m training compare RUN_DIR...``: the paper-style table across runs.

Rows are backbone × adapter, or the baseline (``--model``), plus the stage and the few-shot ratio
or ``--shots`` when the train split was cut; columns the datasets; a run on pooled datasets fills
each of its datasets' columns from its per-dataset results (its row is marked "pooled"). Each
cell is the test-set mean with its 95 % bootstrap interval. Runs of different tasks give one
table per task. Two runs for the same cell are an error (name the runs of one table only; the
multi-seed driver, ``python -m training multiseed``, gives mean ± std over seeds).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from sonovlm.errors import SonoInputError

from .report import METRICS_FILE, format_value, model_label

DEFAULT_METRIC = {"segmentation": "dice", "classification": "auc"}


def load_run(run: Path) -> tuple[dict, dict]:
    """``(metrics.json, run.json)`` of a run folder."""
    metrics_path = run / METRICS_FILE
    if not metrics_path.is_file():
        raise SonoInputError(run, f"no {METRICS_FILE}: not a finished run folder")
    metrics = json.loads(metrics_path.read_text())
    run_path = run / "run.json"
    run_info = json.loads(run_path.read_text()) if run_path.is_file() else {}
    return metrics, run_info


def _row_label(metrics: dict, run_info: dict, pooled: bool) -> str:
    label = model_label(metrics)
    if metrics.get("stage") not in ("segmentation", "classification"):
        label += f" ({metrics['stage']})"
    settings = run_info.get("settings", {})
    ratio = settings.get("train_ratio", 1.0)
    if settings.get("shots"):
        label += f" [{settings['shots']}-shot]"
    elif ratio and ratio < 1:
        label += f" [{ratio:.0%} train]"
    if pooled:
        label += " (pooled)"
    return label


def compare_runs(runs: list[Path], metric: str | None = None, out: Path | None = None) -> str:
    """Markdown table(s) of ``runs``; with ``out`` also written there (and a CSV beside it)."""
    tables: dict[str, dict[str, dict[str, str]]] = {}
    sources: dict[tuple[str, str, str], Path] = {}
    csv_rows: list[dict] = []
    for run in runs:
        metrics, run_info = load_run(run)
        task = metrics.get("task")
        if task not in DEFAULT_METRIC:
            raise SonoInputError(
                run, f"task {task!r} has no comparison table (segmentation or classification)"
            )
        key = metric or DEFAULT_METRIC[task]
        per_dataset = metrics.get("per_dataset") or {}
        pooled = len(per_dataset) > 1
        row = _row_label(metrics, run_info, pooled)
        cells = per_dataset if per_dataset else {"+".join(metrics["datasets"]): metrics}
        for dataset, summary in cells.items():
            if key not in summary:
                raise SonoInputError(run, f"metric {key!r} not in its results (task {task})")
            cell = (task, row, dataset)
            if cell in sources:
                raise SonoInputError(run, f"same table cell ({row}, {dataset}) as {sources[cell]}")
            sources[cell] = run
            tables.setdefault(f"{task}:{key}", {}).setdefault(row, {})[dataset] = format_value(summary, key)
            csv_rows.append(
                {
                    "task": task,
                    "metric": key,
                    "row": row,
                    "dataset": dataset,
                    "value": summary.get(key),
                    "ci_low": (summary.get(f"{key}_ci95") or [None, None])[0],
                    "ci_high": (summary.get(f"{key}_ci95") or [None, None])[1],
                    "n_cases": summary.get("n_cases"),
                    "run": str(run),
                }
            )
    parts = []
    for name, rows in tables.items():
        task, key = name.split(":")
        datasets = sorted({d for cells in rows.values() for d in cells})
        lines = [
            f"## {task}: {key} (test mean [95 % bootstrap interval])",
            "",
            "| model | " + " | ".join(datasets) + " |",
            "|---|" + "---|" * len(datasets),
        ]
        for row in sorted(rows):
            lines.append(f"| {row} | " + " | ".join(rows[row].get(d, "—") for d in datasets) + " |")
        parts.append("\n".join(lines) + "\n")
    text = "\n".join(parts)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        with out.with_suffix(".csv").open("w", newline="", encoding="utf-8") as stream:
            writer = csv.DictWriter(stream, fieldnames=list(csv_rows[0]))
            writer.writeheader()
            writer.writerows(csv_rows)
    return text
