"""Training and auto-segment benchmark (``python -m training.bench``; part of ``make bench``).

Measured in one process on one machine, with ``--threads`` torch threads:

1. Training throughput, images per second, of the segmentation step (forward, MONAI DiceCE,
   backward, AdamW step) for the ``vit-b16`` geometry with each adapter, on a fixed random batch
   (data loading excluded; measured separately in 3). Median over ``--steps`` steps after one
   warm-up step.
2. The peers' heavy part: the image encoder of SAM ViT-B (transformers ``SamModel`` built from its
   default config, random weights, a 1024 x 1024 input, as SAM and MedSAM run it), median of
   ``--repeats`` forwards, beside SonoVLM's whole auto-segment (``Predictor.segment`` on a
   640 x 480 frame: preprocessing, adapted backbone, text-conditioned head, mapping back to the
   frame; feature cache cleared each time), timed in turn within each round so that other load
   on the machine slows both alike; and their ratio. Target: SonoVLM >= 25x faster on CPU.
   Beside them, the SAM 2 generation: the image encoder of SAM 2.1 Hiera-tiny (transformers
   ``Sam2Model`` built from the published ``facebook/sam2.1-hiera-tiny`` configuration, written out
   in :func:`sam2_hiera_tiny_config`; random weights, its native 1024 x 1024 input) and, when
   transformers can build it, EdgeTAM's (``EdgeTamModel``, 1024 x 1024; its RepViT backbone needs
   ``timm``, else the row says why it is missing), and SonoVLM's first click on a new image
   (``Predictor.segment_interactive`` with the cache cleared: preprocessing, backbone, prompt
   maps, head, mapping back). Target: SonoVLM's first click >= 5x faster than the SAM 2.1
   Hiera-tiny encoder.
3. The data pipeline: cached case -> ultrasound + geometric augmentation -> model input, images
   per second at the backbone's input size (one process, no workers).

Presets have random weights, so these are speed figures only. Output: a table on stdout, and
``--json FILE`` for the record.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

ADAPTERS: tuple[str, ...] = ("lora", "mona", "hybrid")
#: SonoVLM's first click on a new image against SAM 2.1 Hiera-tiny's encoder: at least this many times faster.
SAM2_TARGET_RATIO = 5.0


def _median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def training_throughput(backbone: str, adapter: str, batch_size: int, steps: int) -> dict:
    """Images/s of the segmentation training step for ``backbone`` + ``adapter``."""
    from sonovlm.model import AdapterConfig, ModelConfig, SonoVLM

    from .stages.base import set_trainable
    from .stages.segmentation import SegmentationStage

    model = SonoVLM(ModelConfig(backbone=backbone, adapter=AdapterConfig(kind=adapter)))
    stage = SegmentationStage()
    set_trainable(model, adapter=adapter != "none", seg_head=True, cls_head=False)
    model.train()
    size = model.preprocess_config.image_size
    generator = torch.Generator().manual_seed(0)
    batch = {
        "pixel_values": torch.randn(batch_size, 3, size, size, generator=generator),
        "mask": (torch.rand(batch_size, 1, size, size, generator=generator) > 0.7).float(),
        "organ_id": torch.zeros(batch_size, dtype=torch.long),
    }
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4)

    def step() -> None:
        loss = stage.loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    seconds = _median_seconds(step, steps)
    return {
        "backbone": backbone,
        "adapter": adapter,
        "batch_size": batch_size,
        "step_s": seconds,
        "images_per_s": batch_size / seconds,
        "trainable_params": sum(p.numel() for p in model.trainable_parameters()),
    }


def sam_encoder(repeats: int) -> tuple[Callable[[], None], dict]:
    """SAM ViT-B's image encoder on one 1024 x 1024 image (random weights): ``(forward, info)``."""
    from transformers import SamConfig, SamModel

    start = time.perf_counter()
    sam = SamModel(SamConfig()).eval()
    built = time.perf_counter() - start
    pixels = torch.randn(1, 3, 1024, 1024)

    def forward() -> None:
        with torch.inference_mode():
            sam.get_image_embeddings(pixels)

    return forward, {
        "build_s": built,
        "encoder_params": sum(p.numel() for p in sam.vision_encoder.parameters()),
    }


#: The published ``facebook/sam2.1-hiera-tiny`` image-encoder configuration. Sources: Meta's
#: ``sam2/configs/sam2.1/sam2.1_hiera_t.yaml`` (trunk ``Hiera``: ``embed_dim 96``, ``num_heads 1``,
#: ``stages [1, 2, 7, 2]``, ``global_att_blocks [5, 7, 9]``, ``window_pos_embed_bkg_spatial_size
#: [7, 7]``; neck ``FpnNeck``: ``d_model 256``, ``backbone_channel_list [768, 384, 192, 96]``,
#: ``fpn_top_down_levels [2, 3]``; ``image_size 1024``; Hiera's default ``window_spec (8, 4, 14, 7)``
#: and head doubling per stage), as transformers 5.x converts it (``Sam2HieraDetConfig`` and
#: ``Sam2VisionConfig`` in ``transformers/models/sam2/configuration_sam2.py``, whose docstrings
#: are written for ``facebook/sam2.1-hiera-tiny``). Written out, not downloaded: no hub access.
SAM2_HIERA_TINY_BACKBONE: dict = {
    "hidden_size": 96,
    "num_attention_heads": 1,
    "image_size": [1024, 1024],
    "patch_kernel_size": [7, 7],
    "patch_stride": [4, 4],
    "patch_padding": [3, 3],
    "query_stride": [2, 2],
    "num_query_pool_stages": 3,
    "blocks_per_stage": [1, 2, 7, 2],
    "embed_dim_per_stage": [96, 192, 384, 768],
    "num_attention_heads_per_stage": [1, 2, 4, 8],
    "window_size_per_stage": [8, 4, 14, 7],
    "global_attention_blocks": [5, 7, 9],
    "window_positional_embedding_background_size": [7, 7],
    "mlp_ratio": 4.0,
}
SAM2_HIERA_TINY_NECK: dict = {
    "backbone_channel_list": [768, 384, 192, 96],
    "backbone_feature_sizes": [[256, 256], [128, 128], [64, 64]],
    "fpn_hidden_size": 256,
    "fpn_top_down_levels": [2, 3],
    "num_feature_levels": 3,
}
#: Native input size (pixels, square) of SAM 2.1 and EdgeTAM.
SAM2_IMAGE_SIZE = 1024


def sam2_hiera_tiny_config():
    """``transformers.Sam2Config`` of SAM 2.1 Hiera-tiny (see :data:`SAM2_HIERA_TINY_BACKBONE`)."""
    from transformers import Sam2Config, Sam2HieraDetConfig, Sam2VisionConfig

    backbone = Sam2HieraDetConfig(**SAM2_HIERA_TINY_BACKBONE)
    vision = Sam2VisionConfig(backbone_config=backbone, **SAM2_HIERA_TINY_NECK)
    return Sam2Config(
        vision_config=vision,
        prompt_encoder_config={"hidden_size": 256, "image_size": SAM2_IMAGE_SIZE, "patch_size": 16},
        mask_decoder_config={"hidden_size": 256},
    )


def _sam2_family_encoder(model, name: str) -> tuple[Callable[[], None], dict]:
    model = model.eval()
    pixels = torch.randn(1, 3, SAM2_IMAGE_SIZE, SAM2_IMAGE_SIZE)

    def forward() -> None:
        with torch.inference_mode():
            model.get_image_embeddings(pixels)

    return forward, {
        "model": name,
        "image_size": SAM2_IMAGE_SIZE,
        "encoder_params": sum(p.numel() for p in model.vision_encoder.parameters()),
    }


def sam2_encoder() -> tuple[Callable[[], None], dict]:
    """SAM 2.1 Hiera-tiny's image encoder (Hiera + FPN neck, random weights) on one 1024 x 1024
    image: ``(forward, info)``."""
    from transformers import Sam2Model

    start = time.perf_counter()
    model = Sam2Model(sam2_hiera_tiny_config())
    forward, info = _sam2_family_encoder(model, "SAM 2.1 Hiera-tiny (facebook/sam2.1-hiera-tiny config)")
    info["build_s"] = time.perf_counter() - start
    return forward, info


def edgetam_encoder() -> tuple[Callable[[], None] | None, dict]:
    """EdgeTAM's image encoder (RepViT-M1 + FPN neck, transformers' default ``EdgeTamConfig``,
    random weights) on one 1024 x 1024 image: ``(forward, info)``; ``(None, {"skipped": why})``
    when transformers has no EdgeTAM or cannot build it here (its backbone needs ``timm``)."""
    try:
        from transformers import EdgeTamConfig, EdgeTamModel
    except ImportError as error:
        return None, {"model": "EdgeTAM", "skipped": f"transformers has no EdgeTAM ({error})"}
    start = time.perf_counter()
    try:
        model = EdgeTamModel(EdgeTamConfig())
    except ImportError as error:
        reason = str(error).strip().splitlines()[0]
        return None, {"model": "EdgeTAM", "skipped": f"cannot be built here: {reason}"}
    forward, info = _sam2_family_encoder(model, "EdgeTAM (transformers' default EdgeTamConfig)")
    info["build_s"] = time.perf_counter() - start
    return forward, info


def sonovlm_first_click(backbone: str, adapter: str) -> Callable[[], None]:
    """``Predictor.segment_interactive`` with one positive click on a 640 x 480 frame the predictor
    has not seen (cache cleared each time): preprocessing, backbone, prompt maps, head, mapping back."""
    from sonovlm.model.interaction import Interaction

    predictor, image = _predictor_and_frame(backbone, adapter)
    click = Interaction(positive=[(320, 240)])

    def first_click() -> None:
        predictor.clear_cache()
        predictor.segment_interactive(image, "thyroid_nodule", click, frame=0)

    return first_click


def _predictor_and_frame(backbone: str, adapter: str):
    """A CPU predictor of ``backbone`` + ``adapter`` (LoRA merged) and a 640 x 480 speckle frame."""
    from sonovlm.io import UltrasoundImage
    from sonovlm.model import AdapterConfig, ModelConfig, Predictor, SonoVLM

    model = SonoVLM(ModelConfig(backbone=backbone, adapter=AdapterConfig(kind=adapter)))
    if adapter == "lora":
        model.merge_adapter()
    rng = np.random.default_rng(0)
    frame = np.clip(rng.rayleigh(60.0, (480, 640)), 0, 255).astype(np.uint8)
    return Predictor(model, "cpu"), UltrasoundImage(frames=frame[None], source="<bench>")


def sonovlm_autosegment(backbone: str, adapter: str) -> Callable[[], None]:
    """``Predictor.segment`` on a 640 x 480 frame, features recomputed each time."""
    predictor, image = _predictor_and_frame(backbone, adapter)

    def segment() -> None:
        predictor.clear_cache()
        predictor.segment(image, "thyroid_nodule")

    return segment


def gflops(fn: Callable[[], object]) -> float:
    """Matmul/convolution GFLOPs of one call of ``fn`` as torch counts them (elementwise work not
    included): a figure that does not depend on how busy the machine is."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def interleaved_medians(functions: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, timed in turn within each round (so that a busy machine
    slows them alike rather than whichever ran during the busy minute)."""
    for fn in functions.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def augmentation_throughput(size: int, n: int = 32) -> dict:
    """Images/s of the training augmentation ('all') plus normalisation at ``size`` px."""
    from sonovlm.model.augment import train_transforms
    from sonovlm.model.preprocess import PreprocessConfig

    from .data.datasets import FinaliseInputd

    pipeline = train_transforms("all", seed=0)
    finalise = FinaliseInputd(PreprocessConfig(image_size=size))
    rng = np.random.default_rng(0)
    items = [
        {
            "image": torch.from_numpy(rng.random((1, size, size), dtype=np.float32)),
            "mask": torch.from_numpy((rng.random((1, size, size)) > 0.7).astype(np.uint8)),
            "scan_mask": torch.ones(1, size, size, dtype=torch.uint8),
        }
        for _ in range(n)
    ]
    finalise(pipeline(items[0]))
    start = time.perf_counter()
    for item in items:
        finalise(pipeline(item))
    return {"image_size": size, "images_per_s": n / (time.perf_counter() - start)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2, as on CI)")
    parser.add_argument(
        "--backbones", default="vit-b16", help="comma-separated presets for training throughput"
    )
    parser.add_argument("--adapters", default=",".join(ADAPTERS))
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per configuration")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards for SAM and auto-segment")
    parser.add_argument("--segment-adapter", default="mona", help="adapter of the auto-segment timing")
    parser.add_argument("--skip-sam", action="store_true", help="leave out SAM (slow to build and run)")
    parser.add_argument(
        "--skip-sam2", action="store_true", help="leave out SAM 2.1 Hiera-tiny, EdgeTAM and the first click"
    )
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results: dict = {"threads": args.threads, "torch": torch.__version__, "untrained_presets": True}

    print(f"SonoVLM training benchmark ({args.threads} threads; random-weight presets: speed only)")
    print(f"{'backbone':<10} {'adapter':<8} {'batch':>5} {'step s':>8} {'images/s':>9} {'trainable':>10}")
    results["training"] = []
    for backbone in [b.strip() for b in args.backbones.split(",") if b.strip()]:
        for adapter in [a.strip() for a in args.adapters.split(",") if a.strip()]:
            row = training_throughput(backbone, adapter, args.batch_size, args.steps)
            results["training"].append(row)
            print(
                f"{backbone:<10} {adapter:<8} {row['batch_size']:>5} {row['step_s']:>8.2f} "
                f"{row['images_per_s']:>9.2f} {row['trainable_params']:>10,}"
            )

    augmentation = augmentation_throughput(224)
    results["augmentation"] = augmentation
    print(f"augmentation (ultrasound + geometric, 224 px): {augmentation['images_per_s']:.1f} images/s")

    functions = {"sonovlm": sonovlm_autosegment("vit-b16", args.segment_adapter)}
    if not args.skip_sam:
        functions["sam"], sam_info = sam_encoder(args.repeats)
        results["sam_vit_b_encoder"] = sam_info
    if not args.skip_sam2:
        functions["first_click"] = sonovlm_first_click("vit-b16", args.segment_adapter)
        functions["sam2"], results["sam2_hiera_tiny_encoder"] = sam2_encoder()
        edgetam, results["edgetam_encoder"] = edgetam_encoder()
        if edgetam is not None:
            functions["edgetam"] = edgetam
    medians = interleaved_medians(functions, args.repeats)
    results["sonovlm_autosegment"] = {"seconds": medians["sonovlm"], "adapter": args.segment_adapter}
    print(
        f"SonoVLM auto-segment (vit-b16 + {args.segment_adapter}, 640x480 frame): "
        f"{medians['sonovlm'] * 1e3:.0f} ms"
    )
    if "sam" in medians:
        ratio = medians["sam"] / medians["sonovlm"]
        results["sam_vit_b_encoder"]["seconds"] = medians["sam"]
        results["sam_over_sonovlm"] = ratio
        print(f"SAM ViT-B image encoder (1024x1024, random weights): {medians['sam'] * 1e3:.0f} ms")
        print(f"ratio SAM encoder / SonoVLM auto-segment: {ratio:.1f}x (target >= 25x)")
    if "sam2" in medians:
        first = medians["first_click"]
        peers = [name for name in ("first_click", "sam2", "edgetam") if name in functions]
        flops = {name: gflops(functions[name]) for name in peers}
        results["sonovlm_first_click"] = {
            "seconds": first,
            "adapter": args.segment_adapter,
            "gflops": flops["first_click"],
        }
        results["sam2_hiera_tiny_encoder"].update(seconds=medians["sam2"], gflops=flops["sam2"])
        results["sam2_over_first_click"] = medians["sam2"] / first
        results["sam2_over_first_click_gflops"] = flops["sam2"] / flops["first_click"]
        print(
            f"SonoVLM first click, new image (vit-b16 + {args.segment_adapter}, 640x480 frame): "
            f"{first * 1e3:.0f} ms"
        )
        print(f"SAM 2.1 Hiera-tiny image encoder (1024x1024, random weights): {medians['sam2'] * 1e3:.0f} ms")
        print(
            f"ratio SAM 2.1 Hiera-tiny encoder / SonoVLM first click: "
            f"{results['sam2_over_first_click']:.1f}x in time (target >= {SAM2_TARGET_RATIO:g}x), "
            f"{results['sam2_over_first_click_gflops']:.1f}x in GFLOPs "
            f"({flops['sam2']:.0f} / {flops['first_click']:.0f}; torch's matmul/conv count)"
        )
        if "edgetam" in medians:
            results["edgetam_encoder"].update(seconds=medians["edgetam"], gflops=flops["edgetam"])
            results["edgetam_over_first_click"] = medians["edgetam"] / first
            print(
                f"EdgeTAM image encoder (1024x1024, random weights): {medians['edgetam'] * 1e3:.0f} ms "
                f"= {results['edgetam_over_first_click']:.1f}x SonoVLM's first click "
                f"({flops['edgetam']:.0f} GFLOPs)"
            )
        else:
            print(f"EdgeTAM: not measured, {results['edgetam_encoder']['skipped']}")
    results["load_average_1min"] = os.getloadavg()[0]
    print(f"1-minute load average at the end: {results['load_average_1min']:.2f} on {os.cpu_count()} CPUs")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as stream:
            json.dump(results, stream, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
