"""``sonovlm model-info --backbone B --adapter A [--json]``: size of a SonoVLM configuration.

Builds the model (no weights are trained) and reports ``backbone``, ``adapter``, ``total_params``
(every parameter: both CLIP towers, the adapter, the heads), ``trainable_params`` (adapter and
heads), ``trainable_percent``, ``heads_params``, ``checkpoint_bytes`` (the size of a checkpoint of
this configuration, saved for real to a temporary folder), ``levels`` (vision blocks the
segmentation head reads), ``untrained`` and ``backbone_info``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

from ..vocabulary import DEFAULT_ADAPTER
from .model_options import add_model_arguments


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "model-info",
        help="parameter counts and checkpoint size of a backbone + adapter configuration",
        description=__doc__.splitlines()[0],
    )
    add_model_arguments(parser, weights=False, precision=False)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def describe(backbone: str | None, adapter: str | None, device: str = "cpu") -> dict:
    """The ``--json`` object for a configuration."""
    from ..model import AdapterConfig, ModelConfig, SonoVLM, save_checkpoint

    config = ModelConfig(adapter=AdapterConfig(kind=adapter or DEFAULT_ADAPTER))
    if backbone is not None:
        config.backbone = backbone
    # Sizes do not depend on the prompt embeddings' values: skip running the text tower.
    model = SonoVLM(config, encode_prompts=False).to(device)
    counts = model.parameter_counts()
    with tempfile.TemporaryDirectory(prefix="sonovlm-model-info-") as folder:
        path = os.path.join(folder, "checkpoint.safetensors")
        save_checkpoint(model, path)
        checkpoint_bytes = os.path.getsize(path)
    return {
        "backbone": model.backbone_info["name"],
        "adapter": model.config.adapter.kind,
        "total_params": counts["total"],
        "trainable_params": counts["trainable"],
        "trainable_percent": round(100.0 * counts["trainable"] / counts["total"], 4),
        "heads_params": counts["heads"],
        "checkpoint_bytes": checkpoint_bytes,
        "levels": list(model.levels),
        "untrained": bool(model.backbone_info.get("untrained", False)),
        "backbone_info": model.backbone_info,
    }


def run(args: argparse.Namespace) -> int:
    info = describe(args.backbone, args.adapter, args.device)
    if args.json:
        print(json.dumps(info))
        return 0
    untrained = " (untrained preset)" if info["untrained"] else ""
    print(
        f"{info['backbone']}{untrained} + {info['adapter']}: {info['total_params']:,} parameters, "
        f"{info['trainable_params']:,} trainable ({info['trainable_percent']:.2f} %), heads "
        f"{info['heads_params']:,}; checkpoint {info['checkpoint_bytes'] / 1e6:.2f} MB"
    )
    return 0
