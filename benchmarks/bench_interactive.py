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

   ``http`` (skip with ``--skip-http``): the path a stock MONAI Label Slicer plugin user takes,
   once per adapter of ``--adapters`` (LoRA and Mona), each on its own server
   (:func:`sonovlm.server_launcher.start_server` of ``monailabel_app``, ``--conf backbone`` the
   same, ``adapter``, ``threads``; everything else as a user leaves it, scoring included: the
   clicks start once its start-up pass is idle) on sample studies plus one 640 x 480 JPEG 2000
   lymph-node US DICOM without a Sequence of Ultrasound Regions (as many real files), clicked by
   its datastore id. Each click is :meth:`monailabel.client.MONAILabelClient.infer`: ``params`` as
   the multipart form field with one foreground click in the lesion and one background click
   beside it, no organ (``auto``), measurements as the server does them by default, a ``.nrrd``
   mask parsed from the multipart reply and saved. ``first click``: the first on that image (the
   server warmed up on another: decode, imaging-area estimate, backbone); ``later clicks``:
   ``--clicks`` more, p50 and p95 of request sent to mask saved, with the medians of the per-stage
   ``latency_ms`` the server replies (decode, parse, preprocess, encode, prompts, decode_mask,
   postprocess, measure, write, other, total; ``outside_task``: the round trip minus ``total``:
   HTTP, form parsing, multipart reply). Interleaved with each later click: the same click as
   SonoVLM's extension sends it (organ named, ``"measure": false``; it measures the segment
   itself). Target: later clicks p50 <= 80 ms. The 1-minute load average is recorded before and
   after (other work on the machine slows every figure).

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
from sonovlm.app.latency import STAGES as LATENCY_STAGES

#: Targets of the latency part.
DECODER_TARGET_MS = 25.0
HTTP_LATER_CLICK_TARGET_MS = 80.0
#: Issue 17: a later click as the SonoVLM extension sends it (measure false).
EXTENSION_LATER_CLICK_TARGET_MS = 30.0
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


#: Stages of a reply's ``latency_ms`` (:mod:`sonovlm.app.latency`), in order.
STAGES = (*LATENCY_STAGES, "other", "total")
#: The datastore image the clicks go to (sorts after ``sample_*``: not the warm-up image).
CLICK_IMAGE = "us_lymph_node_j2k"


def stock_plugin_dicom(path, seed: int = 0, regions: bool = False) -> tuple[int, int, int, int]:
    """A simulated 640 x 480 lymph-node B-mode frame as a JPEG 2000 (lossless) US DICOM, by
    default without a Sequence of Ultrasound Regions (as many real files: the imaging area is then
    estimated from the pixels); returns the lesion box ``(x0, y0, x1, y1)``."""
    import pydicom
    from pydicom.uid import JPEG2000Lossless

    from .bench_server import jpeg2000_dicom

    box = jpeg2000_dicom(path, seed=seed, organ="lymph_node", regions=regions, uid_key="click")
    assert pydicom.dcmread(str(path), stop_before_pixels=True).file_meta.TransferSyntaxUID == JPEG2000Lossless
    return box


def _stock_click(client, image_id: str, params: dict) -> tuple[float, dict]:
    """One click exactly as the stock MONAI Label Slicer plugin sends it:
    :meth:`monailabel.client.MONAILabelClient.infer` (``params`` as the multipart form field, the
    multipart reply parsed and the mask saved); ``(ms to the saved mask, reply params)``."""
    start = time.perf_counter()
    mask_path, reply = client.infer("interactive", image_id, params)
    seconds = time.perf_counter() - start
    if not mask_path or not str(mask_path).endswith(".nrrd"):
        raise RuntimeError(f"the server sent no .nrrd mask: {mask_path!r} {reply}")
    return seconds * 1000.0, reply


def _stage_medians(replies: list[dict], times_ms: list[float]) -> dict:
    latencies = [r["latency_ms"] for r in replies]
    stages = {stage: round(statistics.median(lat[stage] for lat in latencies), 2) for stage in STAGES}
    outside = [t - lat["total"] for t, lat in zip(times_ms, latencies, strict=True)]
    return {**stages, "outside_task": round(statistics.median(outside), 2)}


def _wait_for_scoring(url: str, timeout: float = 600.0) -> None:
    """Until the server's start-up active-learning scoring is idle (a user starts clicking then)."""
    from .bench_server import _get_json

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        state = _get_json(f"{url}/info/").get("sonovlm", {}).get("scoring", {}).get("state")
        if state in (None, "idle", "off"):
            return
        time.sleep(1.0)


def stock_plugin_round_trip(
    adapter: str, clicks: int = 30, threads: int = 2, backbone: str = "vit-b16"
) -> dict:
    """The ``http`` part for one adapter (see the module notes); milliseconds."""
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from monailabel.client import MONAILabelClient
    from sonovlm.sample_data import write_sample_studies
    from sonovlm.server_launcher import start_server

    from .bench_server import APP_DIR, post_infer

    work = Path(tempfile.mkdtemp(prefix="sonovlm-bench-interactive-"))
    studies = work / "studies"
    write_sample_studies(studies, count=4, seed=0)
    x0, y0, x1, y1 = stock_plugin_dicom(studies / f"{CLICK_IMAGE}.dcm")
    with open(studies / "cases.csv", "a", encoding="utf-8") as cases:
        cases.write(f"{CLICK_IMAGE},lymph_node,benign,false\n")
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    # What a user starts: backbone and adapter (and the thread count); scoring as configured by default.
    conf = {"backbone": backbone, "adapter": adapter, "threads": threads}
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    server = start_server(APP_DIR, studies, conf, env, work_dir=work, timeout=900.0)
    start_s = time.perf_counter() - started
    try:
        _wait_for_scoring(server.url)
        client = MONAILabelClient(server.url, tmpdir=str(work / "client"))
        rng = np.random.default_rng(0)
        inside = [(int(rng.integers(x0, x1)), int(rng.integers(y0, y1))) for _ in range(clicks + 1)]
        # One foreground click inside the lesion and one background click beside it, every click.
        background = [[max(x0 - 12, 0), max(y0 - 12, 0), 0]]

        def params(index: int) -> dict:
            x, y = inside[index]
            return {"foreground": [[x, y, 0]], "background": background, "result_extension": ".nrrd"}

        first_ms, first = _stock_click(client, CLICK_IMAGE, params(0))
        # Later clicks, interleaved with the extension's form of the same click (urllib, organ
        # named, "measure": false: it measures the segment itself), so load hits both alike.
        stock_ms, stock, extension_ms, extension = [], [], [], []
        for index in range(1, clicks + 1):
            ms, reply = _stock_click(client, CLICK_IMAGE, params(index))
            if reply["interaction"]["background"] != [background[0][:2]]:
                raise RuntimeError(f"the server did not take the background click: {reply['interaction']}")
            stock_ms.append(ms)
            stock.append(reply)
            seconds, payload, content_type = post_infer(
                server.url,
                "interactive",
                CLICK_IMAGE,
                {**params(index), "organ": "lymph_node", "label": "lesion", "slice": 0, "measure": False},
            )
            extension_ms.append(seconds * 1000.0)
            extension.append(_reply_params(payload, content_type))
    finally:
        server.stop()
    load_after = os.getloadavg()[0]
    shutil.rmtree(work, ignore_errors=True)
    p50 = statistics.median(stock_ms)
    return {
        "backbone": backbone,
        "adapter": adapter,
        "threads": threads,
        "image": "640x480 JPEG 2000 lossless lymph-node US DICOM, no ultrasound regions, in the datastore",
        "server_start_s": round(start_s, 1),
        "first_click_ms": round(first_ms, 1),
        "first_click_cache": first.get("cache"),
        "first_click_stages_ms": first.get("latency_ms"),
        "later_click_p50_ms": round(p50, 1),
        "later_click_p95_ms": round(float(np.percentile(stock_ms, 95)), 1),
        "later_click_stage_p50_ms": _stage_medians(stock, stock_ms),
        "later_click_cache": stock[-1].get("cache"),
        "extension_later_click_p50_ms": round(statistics.median(extension_ms), 1),
        "extension_later_click_stage_p50_ms": _stage_medians(extension, extension_ms),
        "later_clicks": clicks,
        "lesion_pixels_last": stock[-1]["lesion_pixels"],
        "interaction_trained": first["interaction"]["interaction_trained"],
        "load_average_1min": [round(load_before, 2), round(load_after, 2)],
        "cpu_count": os.cpu_count(),
        "meets_target": p50 <= HTTP_LATER_CLICK_TARGET_MS,
        "extension_meets_target": statistics.median(extension_ms) <= EXTENSION_LATER_CLICK_TARGET_MS,
    }


def _reply_params(payload: bytes, content_type: str) -> dict:
    """The ``params`` JSON of a multipart infer reply (or the JSON reply itself)."""
    if "boundary=" not in content_type:
        return json.loads(payload)
    boundary = content_type.split("boundary=", 1)[1].strip('"').encode()
    for part in payload.split(b"--" + boundary):
        head, _, content = part.partition(b"\r\n\r\n")
        if b'name="params"' in head:
            return json.loads(content.rstrip(b"\r\n"))
    raise RuntimeError("interactive infer reply has no params part")


def http_round_trip(
    clicks: int = 30,
    threads: int = 2,
    backbone: str = "vit-b16",
    adapters: tuple[str, ...] = ("lora", "mona"),
) -> dict:
    """The ``http`` part: :func:`stock_plugin_round_trip` for each adapter, one server each."""
    return {adapter: stock_plugin_round_trip(adapter, clicks, threads, backbone) for adapter in adapters}


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


def _stages_line(stages: dict) -> str:
    return ", ".join(f"{name} {value:g}" for name, value in stages.items())


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
    parser.add_argument(
        "--adapters", default="lora,mona", help="comma list: one stock-plugin server run each (lora,mona)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    report: dict = {"threads": args.threads, "torch": torch.__version__}
    if not args.skip_latency:
        report["latency"] = latency(args.clicks, args.first_repeats)
    if not args.skip_http:
        adapters = tuple(a.strip() for a in args.adapters.split(",") if a.strip())
        report["http"] = http_round_trip(args.clicks, args.threads, adapters=adapters)
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
    for adapter, http in report.get("http", {}).items():
        print(
            f"HTTP, stock plugin, {adapter}: first click {http['first_click_ms']:.1f} ms "
            f"(cache {http['first_click_cache']}); later click p50 {http['later_click_p50_ms']:.1f} ms "
            f"p95 {http['later_click_p95_ms']:.1f} ms over {http['later_clicks']} clicks "
            f"(target <= {HTTP_LATER_CLICK_TARGET_MS:g})"
        )
        print(f"  stage p50 (ms)           {_stages_line(http['later_click_stage_p50_ms'])}")
        print(f"  first click stages (ms)  {_stages_line(http['first_click_stages_ms'] or {})}")
        print(
            f"  same clicks as the extension sends them (measure false): p50 "
            f"{http['extension_later_click_p50_ms']:.1f} ms "
            f"(target <= {EXTENSION_LATER_CLICK_TARGET_MS:g}); stages "
            f"{_stages_line(http['extension_later_click_stage_p50_ms'])}"
        )
        print(
            f"  {http['image']}; server start {http['server_start_s']} s; load average (1 min) "
            f"before/after {http['load_average_1min']}, {http['cpu_count']} cores"
        )
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
