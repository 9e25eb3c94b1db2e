"""Server benchmark: auto-segment round trips through a real SonoVLM MONAI Label server.

``python -m benchmarks.bench_server [--backbone vit-b16] [--requests 20] [--threads 2]``

In one run, on one machine:

* ``bare_forward``: the frozen backbone's vision tower alone (batch 1, the backbone's input size),
  in this process with ``--threads`` torch threads, median of ``--requests`` runs, each run just
  before one ``cold`` request (interleaved: load changes on the machine hit both alike; the server
  is idle during a bare run and this process during a request);
* a server (``python -m monailabel.main start_server``, ``--conf threads`` the same, scoring off)
  on a studies folder of copies of one 640 × 480 JPEG 2000 US DICOM;
* ``cold``: ``--requests`` sequential ``POST /infer/segmentation`` on different images (decode,
  backbone, head, NRRD mask, measurements; request to mask received), p50 and p95, and the first
  one alone;
* ``warm``: the same image again with another organ (cached decoded frame and backbone
  features: only the text-conditioned head runs), p50;
* ``concurrent``: ``--concurrency`` clients at once on fresh images, p95 (requests queue: MONAI
  Label answers one at a time);
* resident memory of the server after warm-up and at the end;
* with ``--train-epochs N``: first a segmentation training through the server on 24 sample
  studies (AMP on CUDA), its time, per-epoch Dice and publish decision. The GPU check is
  ``python -m benchmarks.bench_server --device cuda --requests 50 --train-epochs 3``.

Target: cold p50 <= 1.5 × bare forward. A benchmark, not a test: it prints figures (and writes
them with ``--out``) and exits 0 unless the server fails.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from sonovlm.server_launcher import RunningServer
from sonovlm.server_launcher import start_server as launch_server

REPO = Path(__file__).resolve().parents[1]
APP_DIR = REPO / "monailabel_app"
#: Issue 17: a new image's auto-segment round trip at most this times the fp32 bare forward.
TARGET_RATIO = 0.8


def jpeg2000_dicom(
    path: Path,
    rows: int = 480,
    cols: int = 640,
    seed: int = 0,
    organ: str = "breast_lesion",
    regions: bool = True,
    uid_key: str = "bench",
) -> tuple[int, int, int, int]:
    """A simulated ``rows`` × ``cols`` B-mode frame of ``organ`` as a JPEG 2000 (lossless) US DICOM,
    with its calibrated Sequence of Ultrasound Regions unless ``regions`` is false (as many real
    files: the imaging area is then estimated from the pixels); returns the lesion box
    ``(x0, y0, x1, y1)``. ``uid_key`` and ``seed`` derive the UIDs."""
    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless
    from sonovlm.sample_data.dicom import DicomIdentity, ultrasound_dataset
    from sonovlm.sample_data.simulate import simulate_case

    image, _, meta = simulate_case(np.random.default_rng(seed), organ, shape=(rows, cols))
    ds = ultrasound_dataset(image, meta, DicomIdentity.derive("BENCH", [uid_key, str(seed)]), "benchmark")
    if not regions:
        del ds.SequenceOfUltrasoundRegions
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG2000", no_jp2=True, irreversible=False)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.save_as(str(path), write_like_original=False)
    return tuple(int(v) for v in meta.lesion_bbox)


class BareForward:
    """The vision tower of the frozen backbone alone (batch 1), timed one forward at a time."""

    def __init__(self, backbone: str, device: str) -> None:
        import torch
        from sonovlm.model import load_backbone

        loaded = load_backbone(backbone)
        self.device = device
        self.vision = loaded.clip.vision_model.to(device).eval()
        self.x = torch.randn(1, 3, loaded.image_size, loaded.image_size, device=device)
        for _ in range(3):
            self.seconds()

    def seconds(self) -> float:
        import torch

        with torch.inference_mode():
            if self.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            self.vision(pixel_values=self.x)
            if self.device.startswith("cuda"):
                torch.cuda.synchronize()
            return time.perf_counter() - start


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


def post_infer(url: str, model: str, image_id: str, params: dict[str, Any]) -> tuple[float, bytes, str]:
    """One ``POST /infer/MODEL`` with ``params`` as the multipart form field (as the Slicer plugin
    sends it); ``(seconds to the whole reply, body, content type)``. A non-200 reply raises."""
    boundary = "----sonovlm-bench"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n\r\n'
        f"{json.dumps(params)}\r\n--{boundary}--\r\n"
    ).encode()
    request = urllib.request.Request(
        f"{url}/infer/{model}?image={image_id}",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        method="POST",
    )
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        payload = response.read()
        content_type = response.headers.get("Content-Type", "")
        if response.status != 200:
            raise RuntimeError(f"{model} infer failed: {response.status} {payload[:200]!r}")
    return time.perf_counter() - start, payload, content_type


def segment(url: str, image_id: str, organ: str = "auto") -> float:
    """One ``POST /infer/segmentation`` (NRRD mask, as Slicer asks); seconds to the whole reply."""
    params = {"organ": organ, "result_extension": ".nrrd"}
    seconds, payload, _ = post_infer(url, "segmentation", image_id, params)
    if b"model_version" not in payload:
        raise RuntimeError(f"infer reply has no model_version: {payload[:200]!r}")
    return seconds


def start_server(studies: Path, work: Path, backbone: str, threads: int, device: str) -> RunningServer:
    """A server (:func:`sonovlm.server_launcher.start_server`) of the repository's
    ``monailabel_app`` on ``studies``: ``backbone`` on ``device``, ``threads`` torch/OpenMP/MKL
    threads, scoring off; the app copy, model dir and ``server.log`` in ``work``. Up to 600 s to
    answer ``/info/`` (a ViT-B/16 warm-up on a busy 2-core machine)."""
    conf = {"backbone": backbone, "threads": threads, "auto_scoring": "false", "device": device}
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return launch_server(APP_DIR, studies, conf, env, work_dir=work, timeout=600.0)


def server_latencies(log_path: Path) -> list[dict[str, float]]:
    """MONAI Label's per-request stage times from the server log: total, pre (decode), inferer
    (model), write (mask file, measurements)."""
    import re

    pattern = re.compile(r"Latencies => Total: ([\d.]+); Pre: ([\d.]+); Inferer: ([\d.]+);.*Write: ([\d.]+)")
    found = []
    for line in log_path.read_text(errors="replace").splitlines():
        match = pattern.search(line)
        if match:
            total, pre, inferer, write = (float(v) for v in match.groups())
            found.append({"total": total, "pre": pre, "inferer": inferer, "write": write})
    return found


def train(url: str, epochs: int) -> dict[str, Any]:
    """``POST /train/segmentation`` on the sample studies and wait: seconds, per-epoch Dice, publish."""
    request = urllib.request.Request(
        f"{url}/train/segmentation",
        data=json.dumps({"max_epochs": epochs, "train_batch_size": 8}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()
    while True:
        time.sleep(2)
        status = _get_json(f"{url}/train/")["status"]
        if status not in ("SUBMITTED", "RUNNING"):
            break
    stats = _get_json(f"{url}/info/")["train_stats"].get("segmentation", {})
    return {
        "status": status,
        "seconds": round(time.perf_counter() - start, 1),
        "amp": bool(stats.get("amp")),
        "epochs": [
            {k: e.get(k) for k in ("epoch", "train_loss", "val_mean_dice")} for e in stats.get("epochs", [])
        ],
        "publish": stats.get("publish"),
    }


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def run(args: argparse.Namespace) -> dict[str, Any]:
    import psutil
    import torch

    torch.set_num_threads(args.threads)
    device = args.device
    work = Path(tempfile.mkdtemp(prefix="sonovlm-bench-server-"))
    studies = work / "studies"
    studies.mkdir()
    master = studies / "image_000.dcm"
    jpeg2000_dicom(master)
    total = args.requests + args.concurrency + 1
    for n in range(1, total):
        shutil.copy2(master, studies / f"image_{n:03d}.dcm")
    if args.train_epochs:
        from sonovlm.sample_data import write_sample_studies

        write_sample_studies(studies, count=24, seed=0)

    bare_forward = BareForward(args.backbone, device)
    server = start_server(studies, work, args.backbone, args.threads, device)
    url = server.url
    training = None
    try:
        rss_after_warmup = psutil.Process(server.pid).memory_info().rss
        if args.train_epochs:
            training = train(url, args.train_epochs)
        # image_000 is the one the server warms up on (first in id order): never timed as cold.
        ids = [f"image_{n:03d}" for n in range(1, total)]
        # Interleaved rounds (a bare forward here, then one request while this process idles), so
        # a change of load on the machine hits both alike.
        bare_times, cold = [], []
        for image_id in ids[: args.requests]:
            bare_times.append(bare_forward.seconds())
            cold.append(segment(url, image_id))
        bare = statistics.median(bare_times)
        warm = [
            segment(url, ids[0], organ) for organ in ("lymph_node", "thyroid_nodule") * (args.requests // 2)
        ]
        concurrent: list[float] = []
        lock = threading.Lock()

        def client(image_id: str) -> None:
            seconds = segment(url, image_id)
            with lock:
                concurrent.append(seconds)

        threads = [
            threading.Thread(target=client, args=(i,))
            for i in ids[args.requests : args.requests + args.concurrency]
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        rss_end = psutil.Process(server.pid).memory_info().rss
        info = _get_json(f"{url}/info/")["sonovlm"]
    finally:
        server.stop()

    stages = server_latencies(work / "server.log")[-(len(cold) + len(warm) + len(concurrent)) :][: len(cold)]
    cold_p50 = statistics.median(cold)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "device": device if not device.startswith("cuda") else torch.cuda.get_device_name(0),
        "backbone": args.backbone,
        "adapter": info.get("adapter"),
        "threads": args.threads,
        "image": "640x480 JPEG 2000 lossless US DICOM",
        "bare_forward_s": round(bare, 4),
        "cold_first_s": round(cold[0], 4),
        "cold_p50_s": round(cold_p50, 4),
        "cold_p95_s": round(percentile(cold, 95), 4),
        "cold_p50_over_bare": round(cold_p50 / bare, 2),
        "target_ratio": TARGET_RATIO,
        "meets_target": cold_p50 / bare <= TARGET_RATIO,
        "cold_server_p50_s": {k: round(statistics.median(v[k] for v in stages), 4) for k in stages[0]}
        if stages
        else None,
        "warm_p50_s": round(statistics.median(warm), 4),
        "concurrent_clients": args.concurrency,
        "concurrent_p95_s": round(percentile(concurrent, 95), 4) if concurrent else None,
        "concurrent_all_ok": len(concurrent) == args.concurrency,
        "rss_after_warmup_mb": round(rss_after_warmup / 2**20, 1),
        "rss_end_mb": round(rss_end / 2**20, 1),
        "requests": args.requests,
    }
    if training is not None:
        result["training"] = training
    shutil.rmtree(work, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_server", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--backbone", default="vit-b16", help="preset, hub id or directory (default vit-b16)")
    parser.add_argument("--requests", type=int, default=20, help="sequential requests (default 20)")
    parser.add_argument("--concurrency", type=int, default=8, help="clients at once (default 8)")
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads, here and in the server (default 2)"
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument(
        "--train-epochs",
        type=int,
        default=0,
        help="first train segmentation this many epochs on 24 sample studies through the server (GPU check)",
    )
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
