"""Latency benchmark of the model core (``make bench``: ``python -m benchmarks.bench``).

On the untrained ``vit-b16`` preset (exact ViT-B/16 geometry, 224 px, batch 1), from one run on
one machine:

* ``bare``: the vision tower's forward of the frozen backbone alone;
* ``seg[<adapter>]``: the full segmentation forward: adapted vision tower (hidden states of the
  head's blocks and the image embedding) plus the text-conditioned segmentation head, for
  ``none``, ``lora`` (unmerged and merged), ``mona`` and ``hybrid``.

Each line gives the median of ``--repeats`` timed runs after ``--warmup`` untimed ones, and the
ratio to ``bare``; also the matmul/convolution FLOPs torch counts and their ratio, which do not
depend on how busy the machine is. The configurations are timed in interleaved rounds, so a load change on the
machine hits them alike. Targets: ``seg[lora merged]`` <= 1.15 x bare, ``seg[mona]`` <= 1.3 x bare.
A benchmark, not a test: it prints figures and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

#: Ratio targets to the bare forward.
TARGETS = {"seg[lora merged]": 1.15, "seg[mona]": 1.3}


def _models(backbone: str) -> dict[str, object]:
    from sonovlm.model import AdapterConfig, ModelConfig, SonoVLM

    models: dict[str, object] = {}
    for label, kind, merged in (
        ("none", "none", False),
        ("lora", "lora", False),
        ("lora merged", "lora", True),
        ("mona", "mona", False),
        ("hybrid", "hybrid", False),
    ):
        config = ModelConfig(backbone=backbone, adapter=AdapterConfig(kind=kind))
        model = SonoVLM(config, encode_prompts=False)  # timing does not depend on the prompt texts
        if merged:
            model.merge_adapter()
        models[label] = model.eval()
    return models


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):  # not on every platform
        return None


def run_benchmark(
    backbone: str = "vit-b16", repeats: int = 10, warmup: int = 2, threads: int | None = None
) -> dict:
    """Time the forwards; returns ``{"ms": {name: median}, "ratio": {name: ratio to bare}, ...}``."""
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run(backbone, repeats, warmup)
    finally:
        torch.set_num_threads(previous_threads)


def _run(backbone: str, repeats: int, warmup: int) -> dict:
    load_before = _load_average()
    started = time.perf_counter()
    models = _models(backbone)
    build_s = time.perf_counter() - started
    reference = models["none"]
    size = reference.preprocess_config.image_size
    pixel_values = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))

    def segmentation(model) -> Callable[[], object]:
        condition = model.organ_text[0]
        return lambda: model.segment_logits(model.encode_image(pixel_values), condition)

    cases: dict[str, Callable[[], object]] = {
        "bare": lambda: reference.clip.vision_model(pixel_values=pixel_values),
        **{f"seg[{label}]": segmentation(model) for label, model in models.items()},
    }
    flops: dict[str, int] = {}
    timings: dict[str, list[float]] = {name: [] for name in cases}
    with torch.inference_mode():
        for name, run in cases.items():  # the first call is also the first warm-up
            with FlopCounterMode(display=False) as counter:
                run()
            flops[name] = counter.get_total_flops()
        for _ in range(warmup):
            for run in cases.values():
                run()
        for _ in range(repeats):
            for name, run in cases.items():
                start = time.perf_counter()
                run()
                timings[name].append((time.perf_counter() - start) * 1000.0)
    medians = {name: statistics.median(values) for name, values in timings.items()}
    bare = medians["bare"]
    return {
        "backbone": backbone,
        "untrained": True,
        "batch": 1,
        "image_size": size,
        "repeats": repeats,
        "warmup": warmup,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu_count": os.cpu_count(),
        "load_average": [load_before, _load_average()],
        "build_s": round(build_s, 1),
        "ms": {name: round(value, 2) for name, value in medians.items()},
        "ratio": {name: round(value / bare, 3) for name, value in medians.items()},
        "gflops": {name: round(value / 1e9, 3) for name, value in flops.items()},
        "flop_ratio": {name: round(value / flops["bare"], 4) for name, value in flops.items()},
        "targets": TARGETS,
    }


def format_report(result: dict) -> str:
    lines = [
        f"SonoVLM forward latency: {result['backbone']} (untrained preset), batch {result['batch']}, "
        f"{result['image_size']} px, torch {result['torch']}, {result['torch_threads']} thread(s), "
        f"median of {result['repeats']} after {result['warmup']} warm-up",
        f"{'forward':<20}{'ms':>10}{'x bare':>9}{'GFLOP':>9}{'x bare':>9}  target (time)",
    ]
    for name, ms in result["ms"].items():
        ratio = result["ratio"][name]
        target = TARGETS.get(name)
        verdict = f"<= {target} {'ok' if ratio <= target else 'MISSED'}" if target else ""
        lines.append(
            f"{name:<20}{ms:>10.1f}{ratio:>9.3f}{result['gflops'][name]:>9.2f}"
            f"{result['flop_ratio'][name]:>9.3f}  {verdict}"
        )
    lines.append("GFLOP: matmul/convolution FLOPs counted by torch (elementwise work not included).")
    busiest = max((v for v in result["load_average"] if v is not None), default=None)
    if busiest is not None and result["cpu_count"] and busiest > 0.5 * result["cpu_count"]:
        lines.append(
            f"WARNING: the machine was busy (1-min load average up to {busiest:.1f} on "
            f"{result['cpu_count']} CPUs): timings are noisy; the FLOP ratios are not."
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vit-b16", help="backbone preset or id (default vit-b16)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per forward (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    result = run_benchmark(args.backbone, args.repeats, args.warmup, args.threads)
    print(json.dumps(result) if args.json else format_report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
