"""Stress the SonoVLM server: concurrent clients mixing auto-segmentation, classification,
next-sample and label saves, bounded in time and requests, loopback only.

    .venv/bin/python scripts/stress.py                      # own server, fresh sample studies
    .venv/bin/python scripts/stress.py --url http://127.0.0.1:8000 --pid 1234 --studies DIR

Without ``--url`` it makes sample studies in a temporary folder, starts a server on them
(``sonovlm.server_launcher``: ``tiny`` backbone, 127.0.0.1, a free port) and stops it at the end.
Phases:

1. **Baseline**: one client, sequential segmentations (the service time of one request).
2. **Load**: ``--clients`` threads for ``--duration`` seconds (or ``--max-requests`` in all),
   each picking segmentation 35 %, classification 25 %, next-sample 25 % and label save 15 %.
   Labels are saved only on the first half of the images, and next-sample is asked with the
   other half unlabelled, so a 404 "nothing left" never happens and every non-2xx reply is a
   failure.
3. **Checks**: zero failed requests; resident memory of the server (its process and children)
   after the load minus after warm-up within ``--rss-growth-mb``; the datastore index is valid
   JSON, lists every image, and every label it names exists and reads as a mask of its image's
   size; ``/datastore/`` still answers.

MONAI Label's endpoints run one request at a time (they are ``async`` functions doing synchronous
work), so under load a request waits for the ones before it: the p50/p95 of the load phase are
queueing times, about ``clients`` × the baseline service time, and are reported as such.

Exit code 0 when every check passes, 1 otherwise; ``--json FILE`` writes the figures.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import requests

REPO = Path(__file__).resolve().parents[1]
OPERATIONS = (("segmentation", 0.35), ("classification", 0.25), ("next_sample", 0.25), ("save_label", 0.15))


# -- requests --------------------------------------------------------------------------------------------


def infer(
    session: requests.Session, url: str, model: str, image_id: str, params: dict, timeout: float
) -> dict:
    """POST /infer/{model}; returns the JSON part (multipart replies are decoded)."""
    from requests_toolbelt.multipart.decoder import MultipartDecoder

    response = session.post(
        f"{url}/infer/{model}",
        params={"image": image_id},
        data={"params": json.dumps(params)},
        timeout=timeout,
    )
    response.raise_for_status()
    kind = response.headers.get("content-type", "")
    if kind.startswith("multipart/"):
        for part in MultipartDecoder(response.content, kind).parts:
            if b"application/json" in part.headers.get(b"Content-Type", b""):
                return json.loads(part.content)
        raise ValueError("multipart reply without a JSON part")
    return response.json()


def ellipse_mask(rows: int, cols: int, rng: random.Random) -> np.ndarray:
    yy, xx = np.mgrid[:rows, :cols]
    cy, cx = rows * rng.uniform(0.35, 0.65), cols * rng.uniform(0.35, 0.65)
    ry, rx = rows * rng.uniform(0.08, 0.2), cols * rng.uniform(0.08, 0.2)
    return (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.uint8)


def save_label(
    session: requests.Session, url: str, image: dict[str, Any], rng: random.Random, timeout: float
) -> dict:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(ellipse_mask(image["rows"], image["cols"], rng) * 255).save(buffer, format="PNG")
    params: dict[str, Any] = {"organ": image["organ"], "client_id": "stress"}
    if image["frames"] > 1:
        params["frame"] = image["frames"] // 2
    if rng.random() < 0.5:
        params["pathology"] = rng.choice(["benign", "malignant"])
    response = session.put(
        f"{url}/datastore/label",
        params={"image": image["id"], "tag": "final"},
        files={"label": ("label.png", buffer.getvalue(), "image/png")},
        data={"params": json.dumps(params)},
        timeout=timeout,
    )
    response.raise_for_status()
    return response.json()


def next_sample(session: requests.Session, url: str, client: str, timeout: float) -> dict:
    strategy = random.choice(["random", "first"])
    response = session.post(
        f"{url}/activelearning/{strategy}",
        json={"client_id": client},
        params={"client_id": client},
        timeout=timeout,
    )
    response.raise_for_status()
    return response.json()


# -- the run ---------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50_s": percentile(values, 50),
        "p95_s": percentile(values, 95),
        "max_s": max(values) if values else None,
        "mean_s": statistics.fmean(values) if values else None,
    }


def rss_mb(pid: int | None) -> float | None:
    """Resident memory of ``pid`` and its children, MiB (``None`` without a PID)."""
    if pid is None:
        return None
    import psutil

    try:
        process = psutil.Process(pid)
        total = process.memory_info().rss
        for child in process.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.NoSuchProcess:
                pass
    except psutil.NoSuchProcess:
        return None
    return total / 2**20


def images_of(url: str, timeout: float) -> list[dict[str, Any]]:
    """Every datastore image with its size (from one segmentation each: also the warm-up)."""
    listing = requests.get(f"{url}/datastore/", params={"output": "all"}, timeout=timeout).json()
    session = requests.Session()
    images = []
    for image_id in sorted(listing["objects"]):
        reply = infer(session, url, "segmentation", image_id, {"result_extension": ".png"}, timeout)
        images.append(
            {
                "id": image_id,
                "rows": int(reply["rows"]),
                "cols": int(reply["cols"]),
                "frames": int(reply.get("n_frames", 1)),
                "organ": reply["organ"],
            }
        )
    return images


def load_phase(args: argparse.Namespace, url: str, images: list[dict[str, Any]]) -> dict[str, Any]:
    half = max(1, len(images) // 2)
    to_label, others = images[:half], images[half:] or images
    latencies: dict[str, list[float]] = defaultdict(list)
    failures: list[dict[str, Any]] = []
    lock = threading.Lock()
    issued = [0]
    deadline = time.monotonic() + args.duration

    def client(number: int) -> None:
        rng = random.Random(args.seed * 1000 + number)
        session = requests.Session()
        name = f"stress-{number}"
        while time.monotonic() < deadline:
            with lock:
                if issued[0] >= args.max_requests:
                    return
                issued[0] += 1
            operation = rng.choices([o for o, _ in OPERATIONS], weights=[w for _, w in OPERATIONS])[0]
            start = time.monotonic()
            try:
                if operation == "segmentation":
                    image = rng.choice(others)
                    reply = infer(
                        session, url, "segmentation", image["id"], {"result_extension": ".png"}, args.timeout
                    )
                    assert reply.get("model_version"), "no model_version in the reply"
                elif operation == "classification":
                    image = rng.choice(images)
                    reply = infer(session, url, "classification", image["id"], {}, args.timeout)
                    assert abs(sum(p["score"] for p in reply["prediction"]) - 1) < 1e-4, (
                        "scores do not sum to 1"
                    )
                elif operation == "next_sample":
                    reply = next_sample(session, url, name, args.timeout)
                    assert reply.get("id"), "no id"
                else:
                    save_label(session, url, rng.choice(to_label), rng, args.timeout)
            except Exception as exc:  # every failure is counted and shown, none stops the run
                with lock:
                    failures.append({"operation": operation, "error": f"{type(exc).__name__}: {exc}"[:300]})
                continue
            with lock:
                latencies[operation].append(time.monotonic() - start)

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(args.duration + args.timeout + 30)
    elapsed = time.monotonic() - started
    everything = [v for values in latencies.values() for v in values]
    return {
        "clients": args.clients,
        "seconds": elapsed,
        "requests": len(everything) + len(failures),
        "failed": len(failures),
        "failures": failures[:20],
        "throughput_per_s": len(everything) / elapsed if elapsed else None,
        "all": summary(everything),
        "by_operation": {op: summary(values) for op, values in sorted(latencies.items())},
        "labelled_images": [i["id"] for i in to_label],
    }


def check_index(studies: Path | None, url: str, images: list[dict[str, Any]], timeout: float) -> list[str]:
    """Problems with the datastore afterwards (empty when intact)."""
    problems = []
    try:
        listing = requests.get(f"{url}/datastore/", params={"output": "all"}, timeout=timeout).json()
        listed = set(listing["objects"])
    except (requests.RequestException, ValueError, KeyError) as exc:
        return [f"/datastore/ does not answer: {exc}"]
    missing = {i["id"] for i in images} - listed
    if missing:
        problems.append(f"images no longer listed: {sorted(missing)}")
    if studies is None:
        return problems
    sys.path.insert(0, str(REPO / "lib"))
    from sonovlm.io import load_mask

    index_path = studies / "datastore_v2.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError) as exc:
        return [*problems, f"{index_path} unreadable: {exc}"]
    sizes = {i["id"]: (i["rows"], i["cols"]) for i in images}
    for image_id, obj in index.get("objects", {}).items():
        for tag, label in obj.get("labels", {}).items():
            path = studies / "labels" / tag / f"{image_id}{label.get('ext', '')}"
            if not path.exists():
                problems.append(f"label file missing: {path}")
                continue
            try:
                load_mask(path, sizes.get(image_id))
            except Exception as exc:  # any reader failure is a damaged label
                problems.append(f"label {path} unreadable: {exc}")
    leftovers = [p.name for p in studies.rglob("*.tmp*")]
    if leftovers:
        problems.append(f"temporary files left behind: {leftovers[:5]}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server (127.0.0.1 only); default: start one")
    parser.add_argument("--pid", type=int, help="that server's PID, for its memory")
    parser.add_argument(
        "--studies", type=Path, help="studies folder (copied when this script starts the server)"
    )
    parser.add_argument(
        "--count", type=int, default=12, help="sample studies to make when --studies is not given"
    )
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of load")
    parser.add_argument("--max-requests", type=int, default=5000, help="bound on requests in the load phase")
    parser.add_argument("--baseline", type=int, default=10, help="sequential segmentations before the load")
    parser.add_argument("--timeout", type=float, default=120.0, help="per request, seconds")
    parser.add_argument("--rss-growth-mb", type=float, default=256.0, help="allowed resident memory growth")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)

    if args.url and not args.url.startswith(("http://127.0.0.1", "http://localhost", "http://[::1]")):
        parser.error("--url must be a loopback address: this script does not load other machines")
    server = None
    studies = args.studies
    if args.url:
        url, pid = args.url.rstrip("/"), args.pid
    else:
        import shutil

        sys.path.insert(0, str(REPO / "lib"))
        from sonovlm.sample_data import write_sample_studies
        from sonovlm.server_launcher import start_server

        work = Path(tempfile.mkdtemp(prefix="sonovlm-stress-"))
        if studies is None:
            studies = work / "studies"
            write_sample_studies(studies, count=args.count, seed=args.seed)
        else:
            studies = Path(shutil.copytree(studies, work / "studies"))
        print(f"starting a server on {studies} (backbone {args.backbone}) ...", flush=True)
        server = start_server(
            REPO / "monailabel_app",
            studies,
            {"backbone": args.backbone, "auto_scoring": "false"},
            work_dir=work / "server",
        )
        url, pid = server.url, server.pid
    try:
        images = images_of(url, args.timeout)
        print(f"{len(images)} images; baseline ({args.baseline} sequential segmentations) ...", flush=True)
        session = requests.Session()
        baseline = []
        for i in range(args.baseline):
            image = images[i % len(images)]
            start = time.monotonic()
            infer(session, url, "segmentation", image["id"], {"result_extension": ".png"}, args.timeout)
            baseline.append(time.monotonic() - start)
        rss_before = rss_mb(pid)
        print(f"load: {args.clients} clients for {args.duration:.0f} s ...", flush=True)
        load = load_phase(args, url, images)
        rss_after = rss_mb(pid)
        problems = check_index(
            studies if server is not None or args.studies else None, url, images, args.timeout
        )
    finally:
        if server is not None:
            server.stop()
            print(f"server log: {server.log_path}")

    growth = None if rss_before is None or rss_after is None else rss_after - rss_before
    checks = {
        "no_failed_requests": load["failed"] == 0,
        "rss_growth_within_bound": growth is None or growth <= args.rss_growth_mb,
        "datastore_intact": not problems,
    }
    report = {
        "url": url,
        "images": len(images),
        "baseline_segmentation": summary(baseline),
        "load": load,
        "rss_mb": {
            "after_warmup": rss_before,
            "after_load": rss_after,
            "growth": growth,
            "bound": args.rss_growth_mb,
        },
        "datastore_problems": problems,
        "checks": checks,
        "note": "MONAI Label serves one request at a time: load-phase latencies include queueing behind "
        "the other clients' requests (about clients x the baseline service time).",
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    base = report["baseline_segmentation"]
    print(f"baseline segmentation: p50 {base['p50_s']:.3f} s, p95 {base['p95_s']:.3f} s (one client)")
    print(
        f"load: {load['requests']} requests in {load['seconds']:.0f} s by {load['clients']} clients, "
        f"{load['failed']} failed, {load['throughput_per_s']:.2f} req/s"
    )
    for operation, figures in load["by_operation"].items():
        p50, p95 = figures["p50_s"], figures["p95_s"]
        print(f"  {operation:15s} n={figures['n']:4d}  p50 {p50:.3f} s  p95 {p95:.3f} s")
    if growth is not None:
        print(f"server RSS: {rss_before:.0f} MiB after warm-up, {rss_after:.0f} MiB after load ", end="")
        print(f"({growth:+.0f} MiB, bound {args.rss_growth_mb:.0f})")
    for failure in load["failures"][:5]:
        print(f"  failed {failure['operation']}: {failure['error']}")
    for problem in problems:
        print(f"  datastore: {problem}")
    print("checks: " + ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in checks.items()))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
