"""Live scanning throughput over OpenIGTLink (``python benchmarks/bench_live.py``, or
``python -m benchmarks.bench_live``).

For each backbone preset (``tiny``: 64 px; ``vit-b16``: the exact ViT-B/16 geometry, 224 px,
with deterministic random weights: the speed of a real ViT-B/16, not its answers) the whole
live path runs on 127.0.0.1 as it would at the scanner:

    simulated PLUS server (pyigtl, ``sonovlm sample-data`` lymph node B-mode frames, 400 x 480,
    ``--sender-fps``)  ->  sonovlm.live.LiveService (the ``sonovlm live`` pipeline: latest frame,
    model, single-lesion post-processing, measurement)  ->  an OpenIGTLink viewer client.

Figures, over ``--seconds`` after a warm-up:

* ``fps``: labelmaps the viewer received per second;
* ``e2e p50 / p95``: end to end, from the moment the simulator stamped and sent a frame (its
  OpenIGTLink timestamp) to the moment the viewer had read the labelmap carrying that timestamp;
* ``service p50``: inside ``sonovlm live``, from the frame read to its labelmap handed to the
  sender;
* ``model p50``: the :meth:`sonovlm.model.Predictor.segment` calls inside it (preprocess,
  backbone, head, back to the frame's size); the rest of ``service`` is the single-lesion
  post-processing (MONAI), the measurement and packing the labelmap;
* ``dropped``: share of frames that arrived while the model was busy (replaced, never queued).

The simulator, ``LiveService`` and the viewer share one process (and its GIL), as three
programs on one machine would share its cores. The machine matters: the 1-minute load average
and CPU count are printed with the figures.
A benchmark, not a test: it prints a table (JSON with ``--json``) and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: python benchmarks/bench_live.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PRESETS = ("tiny", "vit-b16")
ORGAN = "lymph_node"


def _percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _frames(count: int):
    from sonovlm.live.simulator import frames_from_studies
    from sonovlm.sample_data import write_sample_studies

    with tempfile.TemporaryDirectory(prefix="bench-live-") as folder:
        write_sample_studies(folder, count=max(3, 3 * count), seed=0)
        frames = frames_from_studies(folder, organ=ORGAN)
    # One depth, as one scan: frames of another spacing would count as geometry changes.
    spacing = frames[0][1]
    return [frame for frame in frames if frame[1] == spacing][:count]


class _TimedPredictor:
    """The predictor, with the time of each :meth:`segment` call recorded (in the live loop's thread)."""

    def __init__(self, predictor) -> None:
        self.predictor = predictor
        self.model_version = predictor.model_version
        self.backbone_info = predictor.backbone_info
        self.model_card = predictor.model_card
        self.times_ms: list[float] = []

    def segment(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return self.predictor.segment(*args, **kwargs)
        finally:
            self.times_ms.append((time.perf_counter() - started) * 1000.0)


def run_preset(preset: str, frames, seconds: float, sender_fps: float | None, warm_s: float) -> dict:
    """One preset through the whole live path; returns its figures."""
    from sonovlm.live import IgtlClient, LiveService
    from sonovlm.live.simulator import SimulatedPlusServer
    from sonovlm.model import Predictor, load_model

    started = time.perf_counter()
    predictor = _TimedPredictor(Predictor(load_model(backbone=preset), feature_cache_bytes=0))
    load_s = time.perf_counter() - started

    simulator = SimulatedPlusServer(frames, fps=sender_fps)
    service = LiveService(predictor, ORGAN, "127.0.0.1", simulator.port, 0, retry_s=0.05)
    arrivals: list[tuple[float, float]] = []  # (frame timestamp, arrival wall time)
    recording = threading.Event()

    def on_message(message, arrived_monotonic) -> None:
        if recording.is_set() and message.message_type == "IMAGE":
            arrivals.append((float(message.timestamp), time.time()))

    viewer = None
    try:
        simulator.start()
        service.start()
        viewer = IgtlClient("127.0.0.1", service.out_port, on_message).start()
        time.sleep(warm_s)
        before = service.stats()
        service_latencies_before = len(service.segmenter.latencies())
        model_before = len(predictor.times_ms)
        recording.set()
        window_started = time.time()
        time.sleep(seconds)
        recording.clear()
        window = time.time() - window_started
        after = service.stats()
        service_latencies = service.segmenter.latencies()[service_latencies_before:]
        model_times = predictor.times_ms[model_before:]
    finally:
        simulator.stop()
        if viewer is not None:
            viewer.stop()
        service.stop()
    e2e = [(arrival - stamp) * 1000.0 for stamp, arrival in arrivals]
    received = after["received"] - before["received"]
    dropped = after["dropped"] - before["dropped"]
    pixels = frames[0][0]
    return {
        "preset": preset,
        "image_size": predictor.backbone_info.get("image_size"),
        "frame": f"{pixels.shape[0]}x{pixels.shape[1]}",
        "random_weights": bool(predictor.backbone_info.get("untrained", False)),
        "load_s": round(load_s, 2),
        "sender_fps": sender_fps,
        "seconds": round(window, 2),
        "frames_sent_to_service": received,
        "labelmaps": len(arrivals),
        "fps": round(len(arrivals) / window, 2) if window > 0 else None,
        "e2e_p50_ms": _round(statistics.median(e2e) if e2e else None),
        "e2e_p95_ms": _round(_percentile(e2e, 0.95)),
        "service_p50_ms": _round(statistics.median(service_latencies) if service_latencies else None),
        "model_p50_ms": _round(statistics.median(model_times) if model_times else None),
        "dropped_fraction": round(dropped / received, 3) if received else None,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window per preset")
    parser.add_argument("--warm-s", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument(
        "--sender-fps", type=float, default=30.0, help="simulated scanner frame rate (0: as fast as it can)"
    )
    parser.add_argument("--frames", type=int, default=2, help="distinct B-mode frames streamed in turn")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)

    import logging

    import torch

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    sender_fps = args.sender_fps if args.sender_fps > 0 else None
    frames = _frames(args.frames)
    load_before = os.getloadavg()[0]
    rows = [run_preset(preset, frames, args.seconds, sender_fps, args.warm_s) for preset in args.presets]
    report = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": args.threads,
            "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "torch": torch.__version__,
        },
        "live": rows,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    machine = report["machine"]
    print(
        f"live over OpenIGTLink on 127.0.0.1: {machine['cpu_count']} CPUs, torch {machine['torch']} "
        f"with {args.threads} threads, load average {machine['load_average_1min']} (before, after)"
    )
    print(
        f"sender {'unlimited' if sender_fps is None else f'{sender_fps:g} fps'}, frames {rows[0]['frame']}, "
        f"{args.seconds:g} s measured per preset"
    )
    header = (
        f"{'preset':10s} {'px':>4s} {'fps':>7s} {'e2e p50':>9s} {'e2e p95':>9s} "
        f"{'service p50':>12s} {'model p50':>10s} {'dropped':>8s}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        note = " (random weights)" if row["random_weights"] else ""
        print(
            f"{row['preset']:10s} {row['image_size'] or '':>4} {_text(row['fps']):>7s} "
            f"{_text(row['e2e_p50_ms'], ' ms'):>9s} {_text(row['e2e_p95_ms'], ' ms'):>9s} "
            f"{_text(row['service_p50_ms'], ' ms'):>12s} {_text(row['model_p50_ms'], ' ms'):>10s} "
            f"{_text(None if row['dropped_fraction'] is None else 100 * row['dropped_fraction'], '%'):>8s}"
            f"{note}"
        )
    return 0


def _text(value: float | None, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:.1f}{unit}"


if __name__ == "__main__":
    raise SystemExit(main())
