"""Reduced precision: quality parity on the demo model and forward latency on ViT-B/16 geometry.

``python benchmarks/bench_precision.py`` (or ``python -m benchmarks.bench_precision``). Two parts,
each run for ``fp32``, ``bf16`` and ``int8`` (:mod:`sonovlm.model.precision`; bf16 is run even where
the CPU only emulates it, and says so):

1. **Parity.** The packaged demo model (``--weights demo``) auto-segments held-out simulated
   studies (``sonovlm sample-data DIR --count N --seed 2``, every case labelled; the demo model was
   trained on seed 1) the way the server answers: organ as recorded, middle frame, mask restricted
   to the imaging area and reduced to the largest lesion with its holes filled. Printed: mean Dice
   against the simulator's truth per organ for each precision, its difference from fp32 in Dice
   points (target: within :data:`DICE_TOLERANCE_POINTS`), the Dice between each reduced-precision
   mask and the fp32 one, and the largest change of the malignant probability.
2. **Latency.** On the untrained ``vit-b16`` preset (exactly ViT-B/16: 12 blocks of width 768,
   224 px, random weights, so no download), batch 1: ``bare`` is the vision tower alone, ``seg``
   the served forward (adapted vision tower plus the text-conditioned segmentation head). Median
   of ``--repeats`` runs after ``--warmup``, the precisions timed in interleaved rounds so that a
   load change on a shared machine hits them alike; the minimum is printed too, and the process
   CPU time of each forward (less sensitive to other work on the machine than the wall time; with
   ``--threads 1`` it is the work done).

A benchmark, not a test: it prints figures (``--json FILE`` also writes them) and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: Largest |Dice(reduced) - Dice(fp32)| accepted, in Dice points (1 point = 0.01).
DICE_TOLERANCE_POINTS = 0.5
#: The precisions compared (fp32 first: the reference).
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "int8")


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def _dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    total = int(predicted.sum()) + int(truth.sum())
    return 1.0 if total == 0 else float(2.0 * (predicted & truth).sum() / total)


# ----------------------------------------------------------------------------------------- parity
def parity(per_organ: int = 24, seed: int | None = None) -> dict[str, Any]:
    """Part 1: Dice of the demo model at each precision on ``3 * per_organ`` held-out studies.

    Returns:
        ``{"studies": {...}, "precision": {name: {requested, resolved, reason}},
        "dice": {precision: {organ: mean}}, "delta_points": {precision: {organ: points}},
        "agreement_dice": {precision: {organ: mean Dice with the fp32 mask}},
        "max_malignant_change": {precision: float}, "meets_target": bool, "seconds": {...}}``.
    """
    from sonovlm.app.infer import restrict_to_imaging_area, single_lesion
    from sonovlm.demo_model import EVAL_SEED, demo_checkpoint
    from sonovlm.io import load_image
    from sonovlm.io.mask import read_mask
    from sonovlm.model import Predictor, load_model
    from sonovlm.organs import organ_label
    from sonovlm.sample_data import write_sample_studies

    seed = EVAL_SEED if seed is None else seed
    count = 3 * per_organ
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="sonovlm-bench-precision-") as work:
        started = time.perf_counter()
        cases = write_sample_studies(Path(work) / "studies", count=count, seed=seed, label_every_case=True)
        images = [load_image(case.image_path) for case in cases]
        truths = [
            read_mask(c.label_path, (im.height, im.width)) != 0 for c, im in zip(cases, images, strict=True)
        ]
        seconds["simulate"] = round(time.perf_counter() - started, 2)

        masks: dict[str, list[np.ndarray]] = {}
        malignant: dict[str, list[float]] = {}
        described: dict[str, dict[str, str]] = {}
        for name in PRECISIONS:
            started = time.perf_counter()
            predictor = Predictor(load_model(weights=demo_checkpoint()), precision=name)
            described[name] = predictor.precision_info()
            masks[name], malignant[name] = [], []
            for case, image in zip(cases, images, strict=True):
                result = predictor.segment(image, case.organ)
                label = organ_label(case.organ)
                mask = restrict_to_imaging_area(np.asarray(result.mask, np.uint8), image.imaging_bbox())
                masks[name].append(single_lesion(np.where(mask != 0, label, 0).astype(np.uint8), label) != 0)
                malignant[name].append(predictor.classify(image, case.organ).probabilities["malignant"])
            seconds[name] = round(time.perf_counter() - started, 2)

    organs = sorted({case.organ for case in cases})
    dice: dict[str, dict[str, float]] = {}
    delta: dict[str, dict[str, float]] = {}
    agreement: dict[str, dict[str, float]] = {}
    for name in PRECISIONS:
        dice[name], delta[name], agreement[name] = {}, {}, {}
        for organ in [*organs, "all"]:
            index = [i for i, c in enumerate(cases) if organ in ("all", c.organ)]
            dice[name][organ] = round(float(np.mean([_dice(masks[name][i], truths[i]) for i in index])), 4)
            agreement[name][organ] = round(
                float(np.mean([_dice(masks[name][i], masks["fp32"][i]) for i in index])), 4
            )
        for organ in dice[name]:
            delta[name][organ] = round(100.0 * (dice[name][organ] - dice["fp32"][organ]), 3)
    change = {
        name: round(float(np.max(np.abs(np.subtract(malignant[name], malignant["fp32"])))), 4)
        for name in PRECISIONS
    }
    meets = all(
        abs(points) <= DICE_TOLERANCE_POINTS for name in PRECISIONS for points in delta[name].values()
    )
    return {
        "studies": {"count": count, "per_organ": per_organ, "seed": seed, "model": "demo (--weights demo)"},
        "precision": described,
        "dice": dice,
        "delta_points": delta,
        "agreement_dice": agreement,
        "max_malignant_change": change,
        "tolerance_points": DICE_TOLERANCE_POINTS,
        "meets_target": meets,
        "seconds": seconds,
    }


# ---------------------------------------------------------------------------------------- latency
def _median_and_min(values: list[float]) -> tuple[float, float]:
    return round(statistics.median(values), 1), round(min(values), 1)


def latency(
    backbone: str = "vit-b16", adapter: str = "mona", repeats: int = 10, warmup: int = 2
) -> dict[str, Any]:
    """Part 2: ``bare`` and ``seg`` forward milliseconds at each precision (interleaved rounds)."""
    from sonovlm.model import AdapterConfig, ModelConfig, Predictor, SonoVLM
    from sonovlm.model.precision import autocast

    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    runs: dict[str, Callable[[], object]] = {}
    described: dict[str, dict[str, str]] = {}
    for name in PRECISIONS:
        model = SonoVLM(
            ModelConfig(backbone=backbone, adapter=AdapterConfig(kind=adapter)), encode_prompts=False
        )
        predictor = Predictor(model, "cpu", precision=name)  # int8: quantises this model's backbone
        described[name] = predictor.precision_info()
        condition = model.organ_text[0]
        size = model.preprocess_config.image_size
        inputs = pixels if size == 224 else torch.randn(1, 3, size, size)

        def bare(model=model, precision=predictor.precision, inputs=inputs) -> object:
            with torch.inference_mode(), autocast(precision, "cpu"):
                return model.clip.vision_model(pixel_values=inputs)

        def seg(model=model, precision=predictor.precision, inputs=inputs, condition=condition) -> object:
            with torch.inference_mode(), autocast(precision, "cpu"):
                features = model.encode_image(inputs)
                return model.segment_logits(features, condition)

        runs[f"bare[{name}]"] = bare
        runs[f"seg[{name}]"] = seg
    for run in runs.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {key: [] for key in runs}
    cpu_times: dict[str, list[float]] = {key: [] for key in runs}
    load_before = _load_average()
    for _ in range(repeats):
        for key, run in runs.items():
            started, cpu_started = time.perf_counter(), time.process_time()
            run()
            times[key].append((time.perf_counter() - started) * 1000.0)
            cpu_times[key].append((time.process_time() - cpu_started) * 1000.0)
    ms = {key: _median_and_min(values) for key, values in times.items()}
    cpu_ms = {key: round(statistics.median(values), 1) for key, values in cpu_times.items()}
    speedup = {key: round(ms[key.replace(key[key.index("[") :], "[fp32]")][0] / ms[key][0], 2) for key in ms}
    cpu_speedup = {
        key: round(cpu_ms[key.replace(key[key.index("[") :], "[fp32]")] / cpu_ms[key], 2) for key in ms
    }
    return {
        "backbone": backbone,
        "adapter": adapter,
        "precision": described,
        "ms_median": {key: value[0] for key, value in ms.items()},
        "ms_min": {key: value[1] for key, value in ms.items()},
        "speedup_vs_fp32": speedup,
        "cpu_ms_median": cpu_ms,
        "cpu_speedup_vs_fp32": cpu_speedup,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "warmup": warmup,
        "load_average_1min": [load_before, _load_average()],
    }


# ----------------------------------------------------------------------------------------- report
def machine() -> dict[str, Any]:
    from sonovlm.model.precision import cpu_support

    support = cpu_support()
    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_capability": support.capability,
        "bf16_flags": list(support.flags),
        "quantized_engine": support.quantized_engine,
    }


def format_report(result: dict[str, Any]) -> str:
    lines = []
    info = result["machine"]
    flags = ", ".join(info["bf16_flags"]) or "no amx_bf16 / avx512_bf16"
    lines.append(
        f"machine: {info['cpu_count']} CPUs, {info['torch_threads']} torch threads, torch {info['torch']}, "
        f"{info['cpu_capability']}, {flags}, int8 engine {info['quantized_engine']}"
    )
    part = result.get("parity")
    if part:
        studies = part["studies"]
        lines.append(
            f"\nparity: demo model on {studies['count']} held-out studies (seed {studies['seed']}, "
            f"{studies['per_organ']} per organ); target |delta| <= {part['tolerance_points']} Dice points"
        )
        organs = list(part["dice"]["fp32"])
        lines.append(f"  {'precision':<10}" + "".join(f"{organ:>16}" for organ in organs))
        for name, row in part["dice"].items():
            lines.append(f"  {name + ' Dice':<10}" + "".join(f"{row[o]:>16.4f}" for o in organs))
        for name, row in part["delta_points"].items():
            if name != "fp32":
                lines.append(f"  {name + ' delta':<10}" + "".join(f"{row[o]:>+15.3f}p" for o in organs))
        for name, row in part["agreement_dice"].items():
            if name != "fp32":
                lines.append(f"  {name + ' ~fp32':<10}" + "".join(f"{row[o]:>16.4f}" for o in organs))
        changes = ", ".join(f"{k} {v}" for k, v in part["max_malignant_change"].items() if k != "fp32")
        lines.append(f"  largest change of P(malignant) vs fp32: {changes}")
        lines.append(f"  meets target: {part['meets_target']}")
        lines.append(f"  wall seconds (model loads included): {part['seconds']}")
    part = result.get("latency")
    if part:
        lines.append(
            f"\nlatency: {part['backbone']} (random weights), adapter {part['adapter']}, batch 1, "
            f"median [min] of {part['repeats']} wall ms, and median process CPU ms "
            f"({part['threads']} threads); load {part['load_average_1min']}"
        )
        for key, value in part["ms_median"].items():
            lines.append(
                f"  {key:<12} {value:>9.1f} ms  [{part['ms_min'][key]:>7.1f}]  "
                f"x{part['speedup_vs_fp32'][key]:.2f} vs fp32   cpu {part['cpu_ms_median'][key]:>8.1f} ms  "
                f"x{part['cpu_speedup_vs_fp32'][key]:.2f}"
            )
    for section in ("parity", "latency"):
        for name, described in result.get(section, {}).get("precision", {}).items():
            if section == "latency" or name == "fp32":
                continue
            lines.append(f"{name}: {described['reason']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--per-organ", type=int, default=24, help="held-out studies per organ (default 24)")
    parser.add_argument(
        "--seed", type=int, default=None, help="simulator seed (default the demo's EVAL_SEED, 2)"
    )
    parser.add_argument("--adapter", default="mona", help="adapter of the latency model (default mona)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default torch's)")
    parser.add_argument("--skip-parity", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result: dict[str, Any] = {"machine": machine()}
    if not args.skip_parity:
        result["parity"] = parity(args.per_organ, args.seed)
    if not args.skip_latency:
        result["latency"] = latency(adapter=args.adapter, repeats=args.repeats, warmup=args.warmup)
    print(format_report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
