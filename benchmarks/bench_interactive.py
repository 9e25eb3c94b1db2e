"""Interactive segmentation benchmark (``python -m benchmarks.bench_interactive``).

Two parts, from one run on one machine:

1. **Latency**, untrained ``vit-b16`` preset (exact ViT-B/16 geometry, 224 px), CPU, ``--threads``
   (2) threads, one simulated 480 x 640 B-mode frame:

   * ``bare``: the frozen vision tower's forward alone (batch 1), median;
   * ``first click``: a click on a new image, features not cached (preprocess, backbone, prompt
     maps, head, mapping back to the frame), median over ``--first-repeats`` cache-cleared runs;
   * ``later click``: :meth:`Predictor.segment_interactive` with the features cached (prompt maps,
     head, mapping back), p50 over ``--clicks`` clicks at different places;
   * ``decoder``: the head alone on cached features and ready prompt maps, p50 over the same clicks.

   Targets: decoder p50 <= 25 ms; first click <= 1.5 x bare.

   ``http`` (skip with ``--skip-http``): a real server (``python -m monailabel.main
   start_server`` on 127.0.0.1, same backbone, ``--conf threads`` the same, scoring off) on a
   studies folder of 640 x 480 JPEG 2000 US DICOMs; ``POST /infer/interactive`` with the stock
   Slicer plugin's params (``foreground``/``background`` ``[i, j, k]``, ``slice``, ``label``; NRRD
   mask). ``first click``: the first click on an image the server has not seen (decode, backbone);
   ``later clicks``: ``--clicks`` more clicks on it (decoded frame and features cached), request
   sent to mask and JSON received, p50 and p95, with MONAI Label's own stage times (pre, inferer,
   write) from the server log. Target: later clicks p50 <= 80 ms. The 1-minute load average is
   recorded before and after (other work on the machine slows every figure).

2. **Clicks-to-Dice** on simulated sample studies with the ``tiny`` backbone (64 px): the head is
   first trained ``--train-steps`` steps with simulated interactions
   (:func:`~sonovlm.model.click_simulation.interactive_training_step`) on ``--train-cases``
   cases, then on ``--eval-cases`` other cases Dice (model space) of the automatic result
   (0 clicks) and after 1, 3 and 5 simulated corrective clicks, twice: clicks only (what the stock
   plugin sends) and clicks plus the previous result as previous-mask prompt (``feedback``). An
   untrained or briefly trained tiny model says little about a real model: the figures show the
   mechanism works, not how good a trained ViT-B/16 would be.

A benchmark, not a test: it prints figures (and JSON with ``--json``) and exits 0.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

#: Targets of the latency part.
DECODER_TARGET_MS = 25.0
HTTP_LATER_CLICK_TARGET_MS = 80.0
FIRST_CLICK_TARGET_RATIO = 1.5
#: Clicks after which Dice is reported.
CLICK_COUNTS = (0, 1, 3, 5)


def _median_ms(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _simulated_image(seed: int, organ: str = "thyroid_nodule"):
    from sonovlm.io import UltrasoundImage, UltrasoundRegion
    from sonovlm.sample_data import simulate_case

    pixels, mask, meta = simulate_case(np.random.default_rng(seed), organ)
    image = UltrasoundImage(
        frames=pixels[None],
        source=f"<simulated {seed}>",
        regions=[UltrasoundRegion(meta.region_bbox, meta.spacing_mm, data_type=1)],
    )
    return image, mask, meta


def latency(clicks: int = 30, first_repeats: int = 5, bare_repeats: int = 5) -> dict:
    """Part 1 (see the module notes); milliseconds."""
    from sonovlm.model import ModelConfig, Predictor, SonoVLM
    from sonovlm.model.interaction import Interaction, encode_interaction

    model = SonoVLM(ModelConfig(backbone="vit-b16"), encode_prompts=False).eval()
    predictor = Predictor(model)
    image, _, meta = _simulated_image(0)
    x0, y0, x1, y1 = meta.lesion_bbox
    rng = np.random.default_rng(0)
    points = [(int(rng.integers(x0, x1)), int(rng.integers(y0, y1))) for _ in range(clicks)]

    pixel_values, geometry = model.preprocess_frame(image, 0)
    batch = pixel_values.unsqueeze(0)
    with torch.inference_mode():
        bare = _median_ms(lambda: model.clip.vision_model(pixel_values=batch), bare_repeats)

    def first_click() -> None:
        predictor.clear_cache()
        predictor.segment_interactive(image, "thyroid_nodule", Interaction(positive=[points[0]]), frame=0)

    first = _median_ms(first_click, first_repeats)

    predictor.segment(image, "thyroid_nodule", frame=0)  # features cached
    later, decoder = [], []
    features = predictor.features(image, 0)
    condition = model.organ_text[model.organ_index("thyroid_nodule")]
    for index, point in enumerate(points):
        interaction = Interaction(positive=[point], negative=[(x0 - 5, y0 - 5)] if index % 2 else [])
        start = time.perf_counter()
        predictor.segment_interactive(image, "thyroid_nodule", interaction, frame=0)
        later.append((time.perf_counter() - start) * 1000)
        maps = encode_interaction(interaction, geometry).unsqueeze(0)
        with torch.inference_mode():
            start = time.perf_counter()
            model.segment_logits(features.vision, condition, maps)
            decoder.append((time.perf_counter() - start) * 1000)
    result = {
        "bare_ms": round(bare, 1),
        "first_click_ms": round(first, 1),
        "first_click_ratio": round(first / bare, 2),
        "later_click_p50_ms": round(statistics.median(later), 1),
        "decoder_p50_ms": round(statistics.median(decoder), 1),
        "clicks": clicks,
        "cache": predictor.cache_stats(),
    }
    result["meets_decoder_target"] = result["decoder_p50_ms"] <= DECODER_TARGET_MS
    result["meets_first_click_target"] = result["first_click_ratio"] <= FIRST_CLICK_TARGET_RATIO
    return result


def _post_interactive(url: str, image_id: str, params: dict) -> tuple[float, dict]:
    """One ``POST /infer/interactive`` (multipart, as the stock plugin); ``(seconds, reply JSON)``."""
    from .bench_server import post_infer

    seconds, payload, content_type = post_infer(url, "interactive", image_id, params)
    if "boundary=" not in content_type:  # JSON only
        return seconds, json.loads(payload)
    # Multipart: the "params" part (JSON) first, then the mask file.
    reply_boundary = content_type.split("boundary=", 1)[1].strip('"').encode()
    for part in payload.split(b"--" + reply_boundary):
        head, _, content = part.partition(b"\r\n\r\n")
        if b'name="params"' in head:
            return seconds, json.loads(content.rstrip(b"\r\n"))
    raise RuntimeError("interactive infer reply has no params part")


def http_round_trip(clicks: int = 30, threads: int = 2, backbone: str = "vit-b16") -> dict:
    """The ``http`` part (see the module notes); milliseconds."""
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from .bench_server import jpeg2000_dicom, server_latencies, start_server

    work = Path(tempfile.mkdtemp(prefix="sonovlm-bench-interactive-"))
    studies = work / "studies"
    studies.mkdir()
    jpeg2000_dicom(studies / "image_000.dcm")  # the server warms up on the first image
    shutil.copy2(studies / "image_000.dcm", studies / "image_001.dcm")
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    server = start_server(studies, work, backbone, threads, "cpu")
    url = server.url
    start_s = time.perf_counter() - started
    try:
        from sonovlm.sample_data import simulate_case

        _, _, meta = simulate_case(np.random.default_rng(0), "breast_lesion", shape=(480, 640))
        x0, y0, x1, y1 = meta.lesion_bbox
        rng = np.random.default_rng(0)
        points = [[int(rng.integers(x0, x1)), int(rng.integers(y0, y1)), 0] for _ in range(clicks + 1)]
        base = {"slice": 0, "label": "lesion", "organ": "breast_lesion", "result_extension": ".nrrd"}
        first_s, first_reply = _post_interactive(url, "image_001", {**base, "foreground": points[:1]})
        # Later clicks twice: as SonoVLM's Slicer extension sends them (it measures the segment
        # itself: "measure": false), then as the stock plugin does (the server measures too).
        later_by_mode: dict[bool, list[float]] = {False: [], True: []}
        for measure in (False, True):
            for index in range(1, clicks + 1):
                background = [[x0 - 3, y0 - 3, 0]] if index % 2 else []
                params = {**base, "foreground": points[: index + 1], "background": background}
                seconds, reply = _post_interactive(url, "image_001", {**params, "measure": measure})
                if len(reply["interaction"]["foreground"]) != index + 1:
                    raise RuntimeError(f"the server did not take the clicks: {reply['interaction']}")
                later_by_mode[measure].append(seconds * 1000)
    finally:
        server.stop()
    all_stages = server_latencies(work / "server.log")
    stages, stages_measured = all_stages[-2 * clicks : -clicks], all_stages[-clicks:]
    later, later_measured = later_by_mode[False], later_by_mode[True]
    load_after = os.getloadavg()[0]
    shutil.rmtree(work, ignore_errors=True)
    p50 = statistics.median(later)
    return {
        "backbone": backbone,
        "threads": threads,
        "image": "640x480 JPEG 2000 lossless US DICOM",
        "server_start_s": round(start_s, 1),
        "first_click_ms": round(first_s * 1000, 1),
        "later_click_p50_ms": round(p50, 1),
        "later_click_p95_ms": round(float(np.percentile(later, 95)), 1),
        "later_clicks": clicks,
        "server_stage_p50_ms": {
            stage: round(statistics.median(s[stage] for s in stages) * 1000, 1)
            for stage in ("total", "pre", "inferer", "write")
        }
        if stages
        else None,
        "measured_later_click_p50_ms": round(statistics.median(later_measured), 1),
        "measured_server_stage_p50_ms": {
            stage: round(statistics.median(s[stage] for s in stages_measured) * 1000, 1)
            for stage in ("total", "pre", "inferer", "write")
        }
        if stages_measured
        else None,
        "interaction_trained": first_reply["interaction"]["interaction_trained"],
        "load_average_1min": [round(load_before, 2), round(load_after, 2)],
        "cpu_count": os.cpu_count(),
        "meets_target": p50 <= HTTP_LATER_CLICK_TARGET_MS,
    }


def _dice(prediction: np.ndarray, target: np.ndarray) -> float:
    total = prediction.sum() + target.sum()
    return 1.0 if total == 0 else float(2.0 * (prediction & target).sum() / total)


def clicks_to_dice(
    train_cases: int = 24,
    eval_cases: int = 12,
    train_steps: int = 300,
    batch_size: int = 8,
    max_clicks: int = max(CLICK_COUNTS),
    seed: int = 0,
) -> dict:
    """Part 2 (see the module notes): mean Dice after each of :data:`CLICK_COUNTS` clicks."""
    from sonovlm.model import AdapterConfig, ModelConfig, SonoVLM, segmentation_loss
    from sonovlm.model.click_simulation import SimulatedPrompts, interactive_training_step, next_click
    from sonovlm.model.sonovlm_model import ORGANS

    torch.manual_seed(seed)
    model = SonoVLM(ModelConfig(backbone="tiny", adapter=AdapterConfig(kind="none")))
    organs = list(ORGANS)
    samples = []
    started = time.perf_counter()
    for index in range(train_cases + eval_cases):
        organ = organs[index % len(organs)]
        image, mask, _ = _simulated_image(1000 + index, organ)
        pixels, target = model.preprocess_pair(image, mask, 0)
        samples.append((pixels, target, organs.index(organ)))
    simulate_s = time.perf_counter() - started
    train, evaluation = samples[:train_cases], samples[train_cases:]

    loss_fn = segmentation_loss()
    optimiser = torch.optim.AdamW(model.trainable_parameters(), lr=2e-3)
    rng = np.random.default_rng(seed)
    losses = []
    started = time.perf_counter()
    model.train()
    for _ in range(train_steps):
        chosen = rng.choice(len(train), size=min(batch_size, len(train)), replace=False)
        pixels = torch.stack([train[i][0] for i in chosen])
        targets = torch.stack([train[i][1] for i in chosen])
        organ_ids = torch.tensor([train[i][2] for i in chosen])
        losses.append(
            interactive_training_step(
                model, optimiser, loss_fn, pixels, targets, organ_ids, rng, max_clicks=max_clicks
            )
        )
    train_s = time.perf_counter() - started
    model.eval()

    size = model.preprocess_config.image_size
    means: dict[str, dict[int, float]] = {}
    for mode in ("clicks", "feedback"):
        curve: dict[int, list[float]] = {count: [] for count in CLICK_COUNTS}
        with torch.no_grad():
            for pixels, target, organ_id in evaluation:
                features = model.encode_image(pixels.unsqueeze(0))
                condition = model.organ_text[organ_id]
                truth = target[0].numpy() != 0
                prompts = SimulatedPrompts()
                maps = None
                for clicks in range(max(CLICK_COUNTS) + 1):
                    logits = model.segment_logits(features, condition, maps)
                    prediction = logits.argmax(dim=1)[0].numpy() == 1
                    if clicks in curve:
                        curve[clicks].append(_dice(prediction, truth))
                    click = next_click(prediction, truth)
                    if click is not None:
                        (x, y), positive = click
                        (prompts.positive if positive else prompts.negative).append((x, y))
                    if mode == "feedback":
                        prompts.previous_mask = torch.from_numpy(prediction.astype(np.float32))
                    maps = prompts.maps(size).unsqueeze(0)
        means[mode] = {count: round(float(np.mean(values)), 3) for count, values in curve.items()}
    helps = {
        mode: all(b > a for a, b in zip(list(m.values()), list(m.values())[1:], strict=False))
        for mode, m in means.items()
    }
    return {
        "backbone": "tiny (untrained backbone, head trained here)",
        "train_cases": train_cases,
        "eval_cases": eval_cases,
        "train_steps": train_steps,
        "max_training_clicks": max_clicks,
        "loss_first_10": round(float(np.mean(losses[:10])), 3),
        "loss_last_10": round(float(np.mean(losses[-10:])), 3),
        "dice_after_clicks": means,
        "each_click_count_helps": helps,
        "simulate_s": round(simulate_s, 1),
        "train_s": round(train_s, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_interactive", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clicks", type=int, default=30)
    parser.add_argument("--first-repeats", type=int, default=5)
    parser.add_argument("--train-cases", type=int, default=24)
    parser.add_argument("--eval-cases", type=int, default=12)
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-dice", action="store_true")
    parser.add_argument("--skip-http", action="store_true", help="no server round trips")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    report: dict = {"threads": args.threads, "torch": torch.__version__}
    if not args.skip_latency:
        report["latency"] = latency(args.clicks, args.first_repeats)
    if not args.skip_http:
        report["http"] = http_round_trip(args.clicks, args.threads)
    if not args.skip_dice:
        report["clicks_to_dice"] = clicks_to_dice(args.train_cases, args.eval_cases, args.train_steps)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"threads {args.threads}, torch {torch.__version__}")
    if "latency" in report:
        lat = report["latency"]
        print(f"bare vision forward      {lat['bare_ms']:8.1f} ms")
        print(
            f"first click (new image)  {lat['first_click_ms']:8.1f} ms  = "
            f"{lat['first_click_ratio']:.2f} x bare (target <= {FIRST_CLICK_TARGET_RATIO})"
        )
        print(f"later click p50 (cached) {lat['later_click_p50_ms']:8.1f} ms  over {lat['clicks']} clicks")
        print(f"decoder alone p50        {lat['decoder_p50_ms']:8.1f} ms  (target <= {DECODER_TARGET_MS:g})")
    if "http" in report:
        http = report["http"]
        print(f"HTTP first click         {http['first_click_ms']:8.1f} ms  (new image: decode and features)")
        print(
            f"HTTP later click p50     {http['later_click_p50_ms']:8.1f} ms  "
            f"p95 {http['later_click_p95_ms']:.1f} ms over {http['later_clicks']} clicks "
            f"(target <= {HTTP_LATER_CLICK_TARGET_MS:g})"
        )
        print(f"  server stages p50 (ms) {http['server_stage_p50_ms']}  (measure=false, as the extension)")
        print(
            f"HTTP later click p50, server measuring too (stock plugin) "
            f"{http['measured_later_click_p50_ms']:.1f} ms; stages {http['measured_server_stage_p50_ms']}"
        )
        print(f"  load average (1 min) before/after {http['load_average_1min']}, {http['cpu_count']} cores")
    if "clicks_to_dice" in report:
        dice = report["clicks_to_dice"]
        print(
            f"clicks-to-Dice ({dice['backbone']}, {dice['train_steps']} steps on "
            f"{dice['train_cases']} cases, loss {dice['loss_first_10']} -> {dice['loss_last_10']}, "
            f"{dice['eval_cases']} eval cases):"
        )
        for mode, curve in dice["dice_after_clicks"].items():
            points = ", ".join(f"{count}: {value:.3f}" for count, value in curve.items())
            better = dice["each_click_count_helps"][mode]
            print(f"  {mode:8s} Dice after clicks {points}  (each better than the previous: {better})")
        print(f"  simulating cases {dice['simulate_s']} s, training {dice['train_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
