"""``python -m training multiseed``: one stage per model and seed, then mean ± std over seeds.

::

    python -m training multiseed --seeds 0 1 2 --out runs/busi-seg -- \\
        segmentation --data-root data --dataset BUSI --backbone openai/clip-vit-base-patch16 --epochs 200

runs the stage once per model (``--models``; default SonoVLM and two baselines: ``unet`` and
``linear-probe`` for segmentation, ``resnet18`` and ``linear-probe`` for classification) and
per seed into ``OUT/{model}/seed_{s}/`` (ordinary run folders), on the same splits: ``--seed``
seeds initialisation, sampling, augmentation and any ``--train-ratio``/``--shots`` subset, the
layout's train/val/test lists stay as they are. Then it writes ``OUT/comparison.md`` (and
``.csv``, ``.json``): per model the mean ± sample standard deviation (n − 1) over seeds of each
seed's test-set mean (Dice, IoU, HD95, ASD; AUC, accuracy, precision, recall, F1), pooled and per
dataset.

The stage options after ``--`` are the stage's own (``python -m training STAGE --help``) except
``--seed``, ``--out``, ``--model`` and ``--resume``, which the driver sets. SonoVLM-only options
(``--adapter``, ``--init-from``, ``--lora-*``, ...) apply to the SonoVLM runs and are dropped for
the baselines (logged). A finished run (``metrics.json`` present) is kept, a run with saved
training state is resumed, so the same command continues an interrupted driver; ``OUT/multiseed.json``
records the command, and another command on the same ``OUT`` is an error. Runs go one after
the other in this process.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import logging
import math
from pathlib import Path
from typing import Any

from sonovlm.errors import SonoInputError

from .baselines import DEFAULT_MODELS, MODEL_TASKS, MODELS, drop_sonovlm_options
from .report import METRICS_FILE, metric_keys, model_label, write_json

log = logging.getLogger("training")
DRIVER_FILE = "multiseed.json"
COMPARISON = "comparison"
_SENTINEL_OUT = "\0multiseed-out"
_SENTINEL_SEED = -(2**62)
TASKS = ("segmentation", "classification")


def add_multiseed_parser(commands: Any) -> None:
    """The ``multiseed`` subcommand."""
    sub = commands.add_parser(
        "multiseed",
        help="a stage per model and seed, then mean ± std over seeds (SonoVLM and baselines)",
        description="Run STAGE for each model and seed into OUT/{model}/seed_{s}/ and write "
        "OUT/comparison.md/.csv/.json (mean ± std over seeds). Stage options follow '--'.",
    )
    sub.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="default 0 1 2")
    sub.add_argument(
        "--models",
        nargs="+",
        choices=MODELS,
        help="default: sonovlm unet linear-probe (segmentation), sonovlm resnet18 linear-probe "
        "(classification)",
    )
    sub.add_argument("--out", required=True, help="driver folder")
    sub.add_argument(
        "stage_args",
        nargs=argparse.REMAINDER,
        metavar="-- STAGE ...",
        help="segmentation or classification and its options (not --seed/--out/--model/--resume)",
    )
    sub.set_defaults(func=run_multiseed)


def parse_stage_args(stage_args: list[str]) -> argparse.Namespace:
    """The stage's options, parsed by the stage's own parser (without --seed/--out/--model)."""
    from .cli import build_parser

    argv = list(stage_args)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv or argv[0] not in TASKS:
        raise SonoInputError("multiseed", "give the stage after '--': segmentation or classification")
    stage, rest = argv[0], argv[1:]
    args = build_parser().parse_args([stage, "--out", _SENTINEL_OUT, "--seed", str(_SENTINEL_SEED), *rest])
    for option, given in (
        ("--out", args.out != _SENTINEL_OUT),
        ("--seed", args.seed != _SENTINEL_SEED),
        ("--model", args.model is not None),
        ("--resume", args.resume),
    ):
        if given:
            raise SonoInputError(option, "the multi-seed driver sets it; leave it out of the stage options")
    return args


def _check_driver_folder(out: Path, record: dict) -> None:
    path = out / DRIVER_FILE
    if path.is_file():
        before = json.loads(path.read_text())
        same = {k: before.get(k) for k in ("stage_args", "seeds", "models")}
        now = {k: record[k] for k in ("stage_args", "seeds", "models")}
        if same != now:
            raise SonoInputError(
                out,
                f"holds a multi-seed run of another command ({before.get('stage_args')}); "
                "choose another --out",
            )
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, record)


def run_multiseed(args: argparse.Namespace) -> int:
    """The driver: every (model, seed) run, then the comparison table."""
    from .cli import _run_stage

    stage_args = list(args.stage_args)
    if stage_args and stage_args[0] == "--":
        stage_args = stage_args[1:]
    base = parse_stage_args(stage_args)
    task = base.command
    models = list(dict.fromkeys(args.models or DEFAULT_MODELS[task]))
    for model in models:
        if task not in MODEL_TASKS[model]:
            raise SonoInputError("--models", f"{model} has no {task} head")
    seeds = list(dict.fromkeys(args.seeds))
    out = Path(args.out)
    _check_driver_folder(out, {"stage_args": stage_args, "seeds": seeds, "models": models, "task": task})
    runs: dict[str, dict[int, Path]] = {}
    for model in models:
        for seed in seeds:
            run_dir = out / model / f"seed_{seed}"
            runs.setdefault(model, {})[seed] = run_dir
            if (run_dir / METRICS_FILE).is_file():
                log.info("multiseed: %s seed %d already finished (%s), kept", model, seed, run_dir)
                continue
            run_args = copy.deepcopy(base)
            run_args.model, run_args.seed, run_args.out = model, seed, str(run_dir)
            if (run_dir / "run.json").is_file():
                if not (run_dir / "last_state.pt").is_file():
                    raise SonoInputError(
                        run_dir, "an unfinished run without saved training state: delete it and run again"
                    )
                run_args.resume = True
            if model != "sonovlm":
                dropped = drop_sonovlm_options(run_args)
                if dropped:
                    log.info("multiseed: %s runs without the SonoVLM options %s", model, " ".join(dropped))
            print(f"multiseed: {model} seed {seed} -> {run_dir}", flush=True)
            try:
                code = _run_stage(run_args)
            finally:
                _close_log_files()
            if code:
                return code
    table = write_comparison(out, task, runs)
    print(table, end="")
    return 0


def _close_log_files() -> None:
    """Close the run's ``train.log`` (each run opens its own; many runs share this process)."""
    for handler in list(log.handlers):
        if isinstance(handler, logging.FileHandler):
            handler.close()
            log.removeHandler(handler)


# ------------------------------------------------------------------------------------ the table
def table_keys(task: str) -> tuple[str, ...]:
    """The table's metrics: the task's keys, AUC first for classification (the paper's metric)."""
    keys = metric_keys(task)
    return ("auc", *(k for k in keys if k != "auc")) if "auc" in keys else keys


def _mean_std(values: list[float]) -> dict[str, Any]:
    n = len(values)
    mean = sum(values) / n if n else None
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "n": n, "values": values}


def _cell(stats: dict[str, Any], key: str) -> str:
    if not stats["n"]:
        return "—"
    digits = 2 if key in ("hd95", "asd") else 3
    text = f"{stats['mean']:.{digits}f}"
    if stats["std"] is None:
        return text + " (1 seed)"
    return f"{text} ± {stats['std']:.{digits}f}"


def seed_statistics(task: str, runs: dict[str, dict[int, Path]]) -> dict[str, Any]:
    """Per model: the label, the runs and ``{scope: {metric: mean/std/n/values}}`` over seeds, where
    ``scope`` is ``all`` (the pooled test set) or a dataset name. A metric a run could not compute
    (``None``, e.g. AUC on a one-class test split) is left out of that metric's seeds."""
    keys = table_keys(task)
    result: dict[str, Any] = {}
    for model, by_seed in runs.items():
        per_scope: dict[str, dict[str, list[float]]] = {}
        labels, units, untrained = set(), set(), False
        for _seed, run_dir in sorted(by_seed.items()):
            path = run_dir / METRICS_FILE
            if not path.is_file():
                raise SonoInputError(run_dir, f"no {METRICS_FILE}: the run did not finish")
            metrics = json.loads(path.read_text())
            if metrics.get("task") != task:
                raise SonoInputError(run_dir, f"a {metrics.get('task')} run in a {task} comparison")
            label = model_label(metrics)
            labels.add(f"SonoVLM ({label})" if model == "sonovlm" else label)
            units.add(metrics.get("distance_unit"))
            untrained = untrained or bool(metrics.get("untrained_backbone"))
            scopes = {"all": metrics, **(metrics.get("per_dataset") or {})}
            for scope, summary in scopes.items():
                for key in keys:
                    value = summary.get(key)
                    if value is not None:
                        per_scope.setdefault(scope, {}).setdefault(key, []).append(float(value))
        result[model] = {
            "label": " / ".join(sorted(labels)),
            "runs": {str(seed): str(path) for seed, path in sorted(by_seed.items())},
            "seeds": sorted(by_seed),
            "distance_unit": " / ".join(sorted(u for u in units if u)) or None,
            "untrained_backbone": untrained,
            "metrics": {
                scope: {key: _mean_std(values.get(key, [])) for key in keys}
                for scope, values in per_scope.items()
            },
        }
    return result


def comparison_markdown(task: str, stats: dict[str, Any], seeds: list[int]) -> str:
    """The Markdown table: pooled test metrics per model, then the main metrics per dataset."""
    keys = table_keys(task)
    unit = next((s["distance_unit"] for s in stats.values() if s["distance_unit"]), None)
    headers = [k.upper() + (f" ({unit})" if k in ("hd95", "asd") and unit else "") for k in keys]
    lines = [
        f"## {task}: test metrics, mean ± std over seeds {', '.join(map(str, seeds))}",
        "",
        "| model | seeds | " + " | ".join(headers) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for stat in stats.values():
        pooled = stat["metrics"].get("all", {})
        cells = [_cell(pooled[k], k) if k in pooled else "—" for k in keys]
        lines.append(f"| {stat['label']} | {len(stat['seeds'])} | " + " | ".join(cells) + " |")
    datasets = sorted({d for s in stats.values() for d in s["metrics"] if d != "all"})
    if len(datasets) > 1:
        main = ("dice",) if task == "segmentation" else ("auc", "accuracy")
        for key in main:
            lines += [
                "",
                f"### {key.upper()} per dataset (mean ± std over seeds)",
                "",
                "| model | " + " | ".join(datasets) + " |",
                "|---|" + "---|" * len(datasets),
            ]
            for stat in stats.values():
                cells = [
                    _cell(stat["metrics"][d][key], key) if d in stat["metrics"] else "—" for d in datasets
                ]
                lines.append(f"| {stat['label']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Each seed's value is the test-set mean of that run (its 95 % bootstrap interval is in the "
        "run's results.md); ± is the sample standard deviation over seeds (n − 1).",
    ]
    if any(s["untrained_backbone"] for s in stats.values()):
        lines += ["", "**Untrained backbone preset: these numbers say nothing about a real model.**"]
    return "\n".join(lines) + "\n"


def write_comparison(out: Path, task: str, runs: dict[str, dict[int, Path]]) -> str:
    """``OUT/comparison.md``, ``.csv`` and ``.json``; returns the Markdown."""
    stats = seed_statistics(task, runs)
    seeds = sorted({s for by_seed in runs.values() for s in by_seed})
    text = comparison_markdown(task, stats, seeds)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{COMPARISON}.md").write_text(text, encoding="utf-8")
    write_json(out / f"{COMPARISON}.json", {"task": task, "seeds": seeds, "models": stats})
    with (out / f"{COMPARISON}.csv").open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["model", "label", "scope", "metric", "mean", "std", "n_seeds", "values"])
        for model, stat in stats.items():
            for scope, metrics in stat["metrics"].items():
                for key, cell in metrics.items():
                    writer.writerow(
                        [
                            model,
                            stat["label"],
                            scope,
                            key,
                            cell["mean"],
                            cell["std"],
                            cell["n"],
                            ";".join(f"{v:.6g}" for v in cell["values"]),
                        ]
                    )
    return text
