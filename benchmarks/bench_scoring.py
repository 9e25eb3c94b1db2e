"""Active-learning scoring benchmark (issue 17 item 3): images per second, and clicks while it scores.

``python -m benchmarks.bench_scoring [--count 200] [--threads 2] [--batch 8]``

In one run, on one machine, on the studies folder of ``sonovlm sample-data DIR --count COUNT
--seed 3`` (``--studies``: a copy of that folder), ``--backbone`` (``vit-b16``: the exact ViT-B/16
geometry, random weights) with ``--adapter`` (``mona``), ``--precision`` (``auto``, what the
server serves by default) and ``--threads`` (2) torch threads:

1. **Throughput in this process** on the first ``--images`` images (every one scored with
   uncertainty, ``--samples`` dropout passes, and embedding; decoding included):

   * ``one at a time``: what the scorer did before batching, per image ``load_image``,
     :meth:`Predictor.embedding` and :meth:`Predictor.uncertainty` (one backbone forward each);
   * ``batched``: ``--batch`` images decoded, :meth:`Predictor.prepare_scoring` and one
     :meth:`Predictor.score_batch` (one backbone forward per batch).

   ``--repeats`` rounds, the two interleaved in each (load on the machine hits both alike);
   medians of images/s. Target: batched >= 4 images/s.

2. **Through a server** (:func:`sonovlm.server_launcher.start_server`, ``--conf threads`` the same,
   scoring ``--server-delay`` s after start-up), for each ``--server-batches`` value of ``--conf
   scoring_batch``: clicks with :class:`monailabel.client.MONAILabelClient` on ``/infer/interactive``
   (one foreground point, the stock Slicer plugin's params) on one image whose features are cached,
   ``--clicks`` while the server is idle (before the pass; the pass must not have started), then
   one after another while its start-up scoring pass over the whole folder runs (clicks that began
   and ended inside it), then ``--clicks`` idle again; p50 and p95 of each, and the pass's images/s
   (its own ``elapsed_s``; clicks take the model meanwhile). Target: click p50 during scoring
   <= 100 ms. ``--server-lib`` serves the ``sonovlm`` of another checkout's ``lib`` folder (the
   figures before a change, from the same run).

The 1-minute load average is recorded before and after: other work on the machine slows every
figure. A benchmark, not a test: it prints a table (JSON with ``--json``) and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
APP_DIR = REPO / "monailabel_app"
#: Targets (issue 17 item 3).
TARGET_IMAGES_PER_S = 4.0
TARGET_CLICK_P50_MS = 100.0
#: The organ every in-process image is scored for.
ORGAN = "thyroid_nodule"


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def sample_studies(directory: Path, count: int, seed: int = 3) -> Path:
    """``sonovlm sample-data DIRECTORY --count COUNT --seed SEED`` (kept when already there)."""
    from sonovlm.sample_data import write_sample_studies

    if not (directory / "cases.csv").exists():
        write_sample_studies(directory, count=count, seed=seed)
    return directory


def _image_files(studies: Path) -> list[Path]:
    return sorted(studies.glob("*.dcm"))


# -------------------------------------------------------------------------------- in this process
def throughput(
    files: list[Path],
    backbone: str,
    adapter: str,
    precision: str,
    batch: int,
    samples: int,
    repeats: int,
) -> dict[str, Any]:
    """Part 1: images/s one at a time and batched, ``repeats`` interleaved rounds, medians."""
    import torch
    from sonovlm.io import load_image
    from sonovlm.model import Predictor, load_model

    predictor = Predictor(load_model(backbone=backbone, adapter=adapter), "cpu", precision=precision)

    def one_at_a_time(paths: list[Path]) -> float:
        start = time.perf_counter()
        for path in paths:
            image = load_image(path)
            predictor.embedding(image)
            predictor.uncertainty(image, ORGAN, samples=samples)
        elapsed = time.perf_counter() - start
        predictor.clear_cache()
        return len(paths) / elapsed

    def batched(paths: list[Path]) -> float:
        start = time.perf_counter()
        for first in range(0, len(paths), batch):
            items = [(load_image(p), ORGAN, False) for p in paths[first : first + batch]]
            predictor.score_batch(predictor.prepare_scoring(items), samples=samples)
        return len(paths) / (time.perf_counter() - start)

    torch.manual_seed(0)
    one_at_a_time(files[:1])  # warm-up: lazy imports, first-call allocations
    batched(files[:batch])
    rounds: dict[str, list[float]] = {"one_at_a_time": [], "batched": []}
    load_before = _load()
    for _ in range(repeats):
        rounds["one_at_a_time"].append(one_at_a_time(files))
        rounds["batched"].append(batched(files))
    medians = {name: statistics.median(values) for name, values in rounds.items()}
    return {
        "images": len(files),
        "batch": batch,
        "samples": samples,
        "precision": predictor.precision.to_dict(),
        "images_per_s": {name: round(value, 2) for name, value in medians.items()},
        "rounds": {name: [round(v, 2) for v in values] for name, values in rounds.items()},
        "speed_up": round(medians["batched"] / medians["one_at_a_time"], 2),
        "load_before": load_before,
        "load_after": _load(),
    }


# -------------------------------------------------------------------------------- through a server
def _scoring_status(url: str) -> dict[str, Any]:
    from .bench_server import _get_json

    return _get_json(f"{url}/info/").get("sonovlm", {}).get("scoring", {})


def _click_params(studies: Path, image_id: str, index: int) -> dict[str, Any]:
    from sonovlm.io import load_image

    image = load_image(studies / f"{image_id}.dcm")
    x0, y0, x1, y1 = image.imaging_bbox()
    x = (x0 + x1) // 2 + (index % 5 - 2) * max(1, (x1 - x0) // 20)
    y = (y0 + y1) // 2 + (index % 3 - 1) * max(1, (y1 - y0) // 20)
    return {"foreground": [[int(x), int(y), 0]], "background": [], "label": "lymph_node"}


def _click_ms(client: Any, image_id: str, params: dict[str, Any]) -> float:
    start = time.perf_counter()
    mask, _ = client.infer("interactive", image_id, params)
    elapsed = (time.perf_counter() - start) * 1000.0
    if not mask:
        raise RuntimeError("the server sent no mask")
    os.unlink(mask)
    return elapsed


def _summary(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50_ms": None if not values else round(statistics.median(values), 1),
        "p95_ms": None if not values else round(_percentile(values, 0.95), 1),
    }


def server_run(
    studies: Path,
    work: Path,
    backbone: str,
    adapter: str,
    precision: str,
    threads: int,
    scoring_batch: int,
    samples: int,
    clicks: int,
    delay_s: float,
    server_lib: Path | None = None,
) -> dict[str, Any]:
    """Part 2 for one ``--conf scoring_batch``: idle clicks, clicks during the pass, idle again."""
    from monailabel.client import MONAILabelClient
    from sonovlm.server_launcher import start_server

    conf = {
        "backbone": backbone,
        "adapter": adapter,
        "precision": precision,
        "threads": threads,
        "scoring_delay_s": delay_s,
        "scoring_batch": scoring_batch,
        "uncertainty_samples": samples,
    }
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if server_lib is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(server_lib.resolve()), os.environ.get("PYTHONPATH", "")])
    server = start_server(APP_DIR, studies, conf, env, work_dir=work, timeout=900.0)
    try:
        client = MONAILabelClient(server.url, tmpdir=str(work), client_id="bench-scoring")
        image_id = sorted(client.datastore()["objects"])[0]
        params = [_click_params(studies, image_id, i) for i in range(15)]
        _click_ms(client, image_id, params[0])  # first click: decode and backbone, then cached
        idle_before = [_click_ms(client, image_id, params[i % 15]) for i in range(clicks)]
        after_idle = _scoring_status(server.url)
        if after_idle.get("state") == "running" or after_idle.get("images_total"):
            raise RuntimeError(
                f"the scoring pass started before the {clicks} idle clicks ended: raise --server-delay"
            )
        deadline = time.monotonic() + delay_s + 600.0
        while True:
            status = _scoring_status(server.url)
            if status.get("state") == "running" or status.get("images_total"):
                break  # running, or already over (a fast model between two looks)
            if time.monotonic() > deadline:
                raise RuntimeError(f"no scoring pass started: {status}")
            time.sleep(0.05)
        during: list[float] = []
        index = 0
        while status.get("state") == "running":
            elapsed = _click_ms(client, image_id, params[index % 15])
            index += 1
            status = _scoring_status(server.url)
            if status.get("state") != "running":
                break
            during.append(elapsed)
        while _scoring_status(server.url).get("state") != "idle":
            time.sleep(0.2)
        status = _scoring_status(server.url)
        idle_after = [_click_ms(client, image_id, params[i % 15]) for i in range(clicks)]
        images, seconds = status.get("images_total", 0), status.get("elapsed_s") or 0.0
        return {
            "scoring_batch": scoring_batch,
            "server_lib": str(server_lib) if server_lib else None,
            "pass_images": images,
            "pass_s": seconds,
            "pass_images_per_s": round(images / seconds, 2) if seconds else None,
            "last_error": status.get("last_error"),
            "click_idle": _summary(idle_before + idle_after),
            "click_idle_before": _summary(idle_before),
            "click_idle_after": _summary(idle_after),
            "click_during_scoring": _summary(during),
            "load_after": _load(),
        }
    finally:
        server.stop()


# -------------------------------------------------------------------------------- report
def _table(result: dict[str, Any]) -> str:
    lines = [
        f"Active-learning scoring, {result['backbone']} + {result['adapter']}, {result['threads']} threads, "
        f"{result['studies_count']} studies; load average {result['load_before']} -> {result['load_after']}",
    ]
    part = result.get("in_process")
    if part:
        lines += [
            "",
            f"In process, {part['images']} images, {part['samples']} dropout passes, precision "
            f"{part['precision']['resolved']}:",
            f"| {'':24} | {'images/s (median)':>18} | {'rounds':>24} |",
            f"| {'one at a time':24} | {part['images_per_s']['one_at_a_time']:>18} | "
            f"{str(part['rounds']['one_at_a_time']):>24} |",
            f"| {'batched (batch ' + str(part['batch']) + ')':24} | {part['images_per_s']['batched']:>18} | "
            f"{str(part['rounds']['batched']):>24} |",
            f"speed-up {part['speed_up']}x; target batched >= {TARGET_IMAGES_PER_S} images/s",
        ]
    runs = result.get("server") or []
    if runs:
        lines += [
            "",
            "Through the server (interactive clicks with MONAILabelClient, features cached):",
            f"| {'scoring_batch':>13} | {'pass images/s':>13} | {'idle p50/p95 ms (n)':>22} | "
            f"{'during scoring p50/p95 ms (n)':>30} |",
        ]
        for run in runs:
            idle, during = run["click_idle"], run["click_during_scoring"]
            label = str(run["scoring_batch"]) + (" (server-lib)" if run["server_lib"] else "")
            idle_text = f"{idle['p50_ms']} / {idle['p95_ms']} ({idle['n']})"
            during_text = f"{during['p50_ms']} / {during['p95_ms']} ({during['n']})"
            lines.append(
                f"| {label:>13} | {run['pass_images_per_s']!s:>13} | {idle_text:>22} | {during_text:>30} |"
            )
        lines.append(f"target: click p50 during scoring <= {TARGET_CLICK_P50_MS} ms")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="sonovlm-bench-scoring-") as tmp:
        if args.studies:  # a copy: each server run starts without scores and leaves none behind
            studies = Path(tmp) / "studies"
            shutil.copytree(args.studies, studies, ignore=shutil.ignore_patterns(".sonovlm"))
        else:
            studies = sample_studies(Path(tmp) / "studies", args.count)
        files = _image_files(studies)
        result: dict[str, Any] = {
            "backbone": args.backbone,
            "adapter": args.adapter,
            "threads": args.threads,
            "studies": str(studies),
            "studies_count": len(files),
            "load_before": _load(),
            "cpu_count": os.cpu_count(),
        }
        if args.images:
            result["in_process"] = throughput(
                files[: args.images],
                args.backbone,
                args.adapter,
                args.precision,
                args.batch,
                args.samples,
                args.repeats,
            )
        result["server"] = []
        if not args.skip_server:
            libs: list[Path | None] = [None] + ([args.server_lib] if args.server_lib else [])
            for lib in libs:
                batches = args.server_batches if lib is None else [args.server_batches[-1]]
                for scoring_batch in batches:
                    work = Path(tmp) / f"server-{scoring_batch}-{'lib' if lib else 'here'}"
                    work.mkdir()
                    shutil.rmtree(studies / ".sonovlm" / "scores", ignore_errors=True)  # a full pass
                    result["server"].append(
                        server_run(
                            studies,
                            work,
                            args.backbone,
                            args.adapter,
                            args.precision,
                            args.threads,
                            scoring_batch,
                            args.samples,
                            args.clicks,
                            args.server_delay,
                            lib,
                        )
                    )
        result["load_after"] = _load()
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_scoring", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--studies", type=Path, help="studies folder to copy and use (default: sample data generated)"
    )
    parser.add_argument("--count", type=int, default=200, help="sample studies generated (default 200)")
    parser.add_argument("--backbone", default="vit-b16", help="preset, hub id or directory (default vit-b16)")
    parser.add_argument("--adapter", default="mona", help="adapter of the fresh model (default mona)")
    parser.add_argument("--precision", default="auto", help="auto (default), fp32, bf16 or int8")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, here and in the server")
    parser.add_argument("--batch", type=int, default=8, help="in-process batch size (default 8)")
    parser.add_argument("--samples", type=int, default=8, help="dropout passes per image (default 8)")
    parser.add_argument(
        "--images", type=int, default=48, help="images of the in-process part (default 48; 0 skips it)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="in-process rounds (default 3)")
    parser.add_argument(
        "--server-batches",
        type=int,
        nargs="+",
        default=[1, 8],
        help="--conf scoring_batch values, one server each (default 1 8)",
    )
    parser.add_argument("--clicks", type=int, default=20, help="idle clicks before and after (default 20)")
    parser.add_argument(
        "--server-delay",
        type=float,
        default=20.0,
        help="--conf scoring_delay_s: seconds from start-up to the pass (default 20)",
    )
    parser.add_argument(
        "--server-lib",
        type=Path,
        help="also serve the sonovlm of this lib folder (another checkout), last --server-batches value",
    )
    parser.add_argument("--skip-server", action="store_true", help="only the in-process part")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    for name in ("count", "threads", "batch", "samples", "repeats", "clicks"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    result = run(args)
    print(json.dumps(result, indent=2) if args.json else _table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
