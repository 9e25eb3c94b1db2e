"""``--paper``: the reference code's configuration (jinggqu/NextGen-UIA), and one flag per departure.

SonoVLM departs from the reference in a few places on purpose (see the departures table in
``training/README.md``); each departure has a flag here that restores the reference behaviour, and
``--paper`` sets all of them at once:

=========================  ==============================  ======================================
flag                       SonoVLM default                 ``--paper`` (reference)
=========================  ==============================  ======================================
``--decoder``              ``sonovlm`` (FiLM, conv stages)  ``reference`` (fusion, upsample, 1x1)
``--classifier``           ``sonovlm`` (zero-shot+linear)   ``reference-mlp`` (``-linear``: MetaCLIP)
``--loss``                 ``sonovlm``                      ``reference`` (squared-pred DiceCE,
                                                             sigmoid focal)
``--betas``                0.9 0.999                        0.9 0.95
``--lr-min``               0                                1e-8
``--val-every``            1                                10 (``--patience`` 15 validations)
``--interactive-fraction`` 0.5 (segmentation)               0
``--augment``              ``all``                          ``reference`` (strong + weak)
``--preprocess``           ``sonovlm`` (region crop, CLIP   ``reference`` (whole frame, [0, 1])
                           normalisation)
``--lora-*``               r 16, alpha 16, q/v, no dropout  r 16, alpha 32, q/k/v/out, dropout
                                                             0.1, ``--rslora``
``--hybrid-variant``       ``sonovlm``                      ``reference``
=========================  ==============================  ======================================

An option the user gives explicitly wins over ``--paper``. For options that already had a default
(``--augment all``, ``--patience 10``) ``--paper`` replaces only the default value.
"""

from __future__ import annotations

import argparse
from typing import Any

from sonovlm.errors import SonoInputError

#: The flags' SonoVLM defaults and their ``--paper`` values.
DEFAULTS: dict[str, tuple[Any, Any]] = {
    "decoder": ("sonovlm", "reference"),
    "classifier": ("sonovlm", "reference-mlp"),
    "loss": ("sonovlm", "reference"),
    "betas": ((0.9, 0.999), (0.9, 0.95)),
    "lr_min": (0.0, 1e-8),
    "val_every": (1, 10),
    "interactive_fraction": (0.5, 0.0),
    "preprocess": ("sonovlm", "reference"),
    "lora_rank": (16, 16),
    "lora_alpha": (16, 32),
    "lora_dropout": (0.0, 0.1),
    "lora_targets": ("q,v", "q,k,v,out"),
    "rslora": (False, True),
    "hybrid_variant": ("sonovlm", "reference"),
}
#: Options with a default of their own, replaced by ``--paper`` only while at that default.
PAPER_OVERRIDES: dict[str, tuple[Any, Any]] = {"augment": ("all", "reference"), "patience": (10, 15)}

_LORA_NAMES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "out": "out_proj"}


def add_reference_options(parser: argparse.ArgumentParser, stage: str) -> None:
    """The ``reference`` option group of a stage's parser (defaults None: see :func:`resolve`)."""
    group = parser.add_argument_group("reference configuration (see training/README.md, departures)")
    group.add_argument(
        "--paper", action="store_true", help="the reference code's configuration (every flag below)"
    )
    if stage in ("segmentation", "classification"):
        group.add_argument("--decoder", choices=("sonovlm", "reference"), help="segmentation decoder")
        group.add_argument(
            "--classifier",
            choices=("sonovlm", "reference-mlp", "reference-linear"),
            help="classification head (reference-mlp: OpenAI CLIP's, reference-linear: open_clip's)",
        )
        group.add_argument("--loss", choices=("sonovlm", "reference"), help="loss settings")
        group.add_argument("--preprocess", choices=("sonovlm", "reference"), help="frame -> model input")
    if stage == "segmentation":
        group.add_argument(
            "--interactive-fraction", type=float, help="share of batches with simulated clicks (0.5)"
        )
    group.add_argument("--betas", type=float, nargs=2, metavar=("B1", "B2"), help="AdamW betas")
    group.add_argument("--lr-min", type=float, help="floor of the cosine schedule (0)")
    group.add_argument("--val-every", type=int, help="validate every N epochs; --patience counts validations")
    group.add_argument("--lora-rank", type=int, help="LoRA rank (16)")
    group.add_argument("--lora-alpha", type=int, help="LoRA alpha (16)")
    group.add_argument("--lora-dropout", type=float, help="LoRA dropout (0)")
    group.add_argument("--lora-targets", help="comma list of q,k,v,out (q,v)")
    group.add_argument(
        "--rslora", action=argparse.BooleanOptionalAction, default=None, help="scale by alpha/sqrt(r)"
    )
    group.add_argument("--hybrid-variant", choices=("sonovlm", "reference"), help="hybrid adapter form")


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill every reference option left unset: its ``--paper`` value, else SonoVLM's default."""
    paper = bool(getattr(args, "paper", False))
    for name, (default, reference) in DEFAULTS.items():
        if getattr(args, name, None) is None:
            setattr(args, name, reference if paper else default)
    if paper:
        for name, (default, reference) in PAPER_OVERRIDES.items():
            if getattr(args, name, None) == default:
                setattr(args, name, reference)
        if args.classifier == "reference-mlp" and "metaclip" in str(args.backbone or "").lower():
            args.classifier = "reference-linear"  # the reference's open_clip adapter head
    args.betas = tuple(args.betas)
    return args


def lora_targets(text: str) -> tuple[str, ...]:
    """``"q,k,v,out"`` -> peft module names; SonoInputError for anything else."""
    names = [part.strip() for part in str(text).split(",") if part.strip()]
    unknown = [n for n in names if n not in _LORA_NAMES]
    if not names or unknown:
        raise SonoInputError("--lora-targets", f"{text!r}: use a comma list of q, k, v, out")
    return tuple(_LORA_NAMES[n] for n in names)


def adapter_options(args: argparse.Namespace) -> dict[str, Any]:
    """AdapterConfig keyword arguments from the resolved options."""
    return {
        "lora_rank": args.lora_rank,
        "lora_alpha": args.lora_alpha,
        "lora_dropout": args.lora_dropout,
        "lora_target_modules": lora_targets(args.lora_targets),
        "lora_rslora": bool(args.rslora),
        "hybrid_variant": args.hybrid_variant,
    }


def head_options(args: argparse.Namespace) -> dict[str, Any]:
    """HeadConfig keyword arguments from the resolved options (none for contrastive: heads kept)."""
    return {name: getattr(args, name) for name in ("decoder", "classifier") if getattr(args, name, None)}


def reference_preprocess(image_size: int) -> Any:
    """The reference's input: the whole frame (no region crop), intensities in [0, 1] (mean 0, std
    1), grey replicated to 3 channels. SonoVLM still pads to a square before resizing, where the
    reference stretches the frame."""
    from sonovlm.model import PreprocessConfig

    return PreprocessConfig(
        image_size=image_size, image_mean=(0.0, 0.0, 0.0), image_std=(1.0, 1.0, 1.0), crop_to_region=False
    )


def build_stage(args: argparse.Namespace) -> Any:
    """The stage object for ``args.command`` with the resolved loss and interaction settings."""
    from .baselines import build_baseline_stage, is_baseline
    from .stages import STAGES

    if is_baseline(args):
        return build_baseline_stage(args)
    stage_class = STAGES[args.command]
    loss = getattr(args, "loss", None) or "sonovlm"
    if args.command == "segmentation":
        return stage_class(seed=args.seed, interactive_fraction=args.interactive_fraction, loss=loss)
    if args.command in ("classification", "zero-shot"):
        return stage_class(loss=loss)
    return stage_class()
