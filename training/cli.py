"""``python -m training COMMAND``: prepare data, train and evaluate stages, compare runs, export.

Commands::

    prepare NAME SRC DST         convert a public dataset (busi, bus-bra, tn3k, ddti, generic)
    contrastive                  adapter tuning on image-caption pairs (symmetric InfoNCE)
    segmentation                 adapter + segmentation head (MONAI DiceCE)
    classification               adapter + classification head (MONAI Focal)
    zero-shot                    classification from the prompt bank alone (no training)
    compare RUN_DIR...           paper-style table across runs (rows backbone x adapter)
    multiseed -- STAGE ...       a stage per model (SonoVLM, baselines) and seed; mean ± std table
    export RUN_DIR FILE          the best checkpoint as one file for the server, plus a model card
    refine-captions PAIRS        LLM-refine every caption of an image-caption file (the paper's step)
    demo-model FILE              the demo model (small preset) trained on simulated phantoms
    demo-check                   the packaged demo model judged through a server (Dice per organ)

Stages run as one process or under ``torchrun`` (DDP; NCCL on GPU, gloo on CPU). Errors a user
can cause exit with code 2 and one ``error:`` line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from sonovlm.errors import ModelLoadError, SonoInputError
from sonovlm.model.augment import AUGMENT_MODES
from sonovlm.vocabulary import ADAPTER_KINDS, DEFAULT_ADAPTER

from .engine import PRECISIONS
from .paper import add_reference_options


def _add_stage_options(parser: argparse.ArgumentParser, stage: str) -> None:
    data = parser.add_argument_group("data")
    if stage == "contrastive":
        data.add_argument("--pairs", help="image-caption CSV/JSONL (default DATA_ROOT/finetune/pairs.csv)")
        data.add_argument(
            "--captions",
            choices=("raw", "refined"),
            default="raw",
            help="raw captions or the LLM-refined column (default raw)",
        )
        data.add_argument("--data-root", default=".", help="dataset root (for the default --pairs)")
    else:
        data.add_argument("--data-root", required=True, help="dataset root in the public layout")
        data.add_argument("--dataset", required=True, help="NAME[,NAME...]: several names pool datasets")
        data.add_argument(
            "--organ",
            action="append",
            metavar="DATASET=ORGAN",
            help="organ of a dataset the layout does not name (repeatable)",
        )
    data.add_argument("--train-ratio", type=float, default=1.0, help="few-shot fraction of the train split")
    if stage in ("segmentation", "classification"):
        data.add_argument(
            "--shots",
            type=int,
            metavar="K",
            help="K-shot: K train images per dataset (segmentation) or per dataset and pathology "
            "(classification), seeded; instead of --train-ratio",
        )
    data.add_argument(
        "--augment",
        choices=AUGMENT_MODES,
        default="all",
        help="augmentation for the ablation (default all: ultrasound + geometric)",
    )
    data.add_argument(
        "--cache-rate", type=float, default=1.0, help="share of preprocessed cases kept in memory"
    )
    data.add_argument("--workers", type=int, default=0, help="data-loader worker processes")

    model = parser.add_argument_group("model")
    model.add_argument(
        "--backbone", help="preset (tiny, vit-b16), hub id or local dir (default: CLIP ViT-B/16 hub id)"
    )
    model.add_argument("--adapter", choices=ADAPTER_KINDS, help=f"default {DEFAULT_ADAPTER}")
    model.add_argument("--init-from", help="checkpoint or run folder to start from (e.g. a contrastive run)")
    model.add_argument("--prompt-bank", help="packaged prompt bank name or bank file")
    if stage in ("segmentation", "classification"):
        from .baselines import MODELS

        model.add_argument(
            "--model",
            choices=MODELS,
            help="sonovlm (default) or a baseline run by the same pipeline: unet (segmentation), "
            "resnet18 (classification), linear-probe (frozen backbone, both)",
        )
    if stage in ("segmentation", "classification"):
        model.add_argument(
            "--freeze-adapter",
            action="store_true",
            help="train the head only (keep the --init-from adapter as it is)",
        )

    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=int, default=100)
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--lr", type=float, default=1e-4)
    train.add_argument("--weight-decay", type=float, default=0.01)
    train.add_argument("--patience", type=int, default=10, help="early stopping: epochs without improvement")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--init-seed",
        type=int,
        help="seed of the adapter/head (baseline: network) initialisation (default: --seed)",
    )
    train.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto: bf16 (else fp16) autocast on CUDA, fp32 on CPU",
    )
    train.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    train.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads per process (0: torch's default; 1 on a busy CPU)",
    )
    train.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals")
    train.add_argument(
        "--figures",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="training curves, ROC and overlays in figures/ (--no-figures: skip them)",
    )
    train.add_argument("--out", required=True, help="run folder")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")


def _run_stage(args: argparse.Namespace) -> int:
    from .runner import run_stage

    if args.command == "zero-shot":
        args.epochs = max(args.epochs, 1)
    from .baselines import check_args, drop_sonovlm_options, is_baseline
    from .paper import build_stage, resolve

    check_args(args)  # before --paper fills in SonoVLM's options
    if hasattr(args, "model"):
        args.model = args.model or "sonovlm"
    resolve(args)
    if is_baseline(args):
        drop_sonovlm_options(args)  # what --paper filled in for SonoVLM
        if args.command == "segmentation":
            args.interactive_fraction = 0.0
    # the segmentation stage draws its simulated interactions from its own seeded generator
    stage = build_stage(args)
    return run_stage(args, stage)


def _run_prepare(args: argparse.Namespace) -> int:
    import json

    from .data.converters import CONVERTERS
    from .data.splits import parse_fractions

    options = {
        "seed": args.seed,
        "fractions": parse_fractions(args.fractions) if args.fractions else None,
        "near_duplicate_bits": None if args.near_duplicate_bits < 0 else args.near_duplicate_bits,
        "include_normal": args.include_normal,
        "name": args.name,
        "organ": args.organ,
    }
    if args.fold is not None:
        options["fold"] = args.fold
    if args.folds is not None:
        options["folds"] = args.folds
    src = Path(args.src)
    if not src.exists():
        raise SonoInputError(src, "source not found")
    info = CONVERTERS[args.name_of_converter](src, Path(args.dst), **options)
    summary = {
        k: info[k] for k in ("dataset", "organ", "split_rule", "segmentation_counts", "classification_counts")
    }
    summary["duplicate_groups"] = len(info["duplicate_groups"])
    print(json.dumps(summary, indent=2))
    return 0


def _run_compare(args: argparse.Namespace) -> int:
    from .compare import compare_runs

    table = compare_runs(
        [Path(p) for p in args.runs], metric=args.metric, out=Path(args.out) if args.out else None
    )
    print(table, end="")
    return 0


def _run_export(args: argparse.Namespace) -> int:
    from .export import export_run

    checkpoint, card = export_run(Path(args.run), Path(args.file))
    print(f"wrote {checkpoint}\nwrote {card}")
    return 0


def _run_demo_model(args: argparse.Namespace) -> int:
    from .demo import run_demo_model

    return run_demo_model(args)


def _run_demo_check(args: argparse.Namespace) -> int:
    from .demo_check import run_demo_check

    return run_demo_check(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="SonoVLM training and evaluation: prepare data, train, evaluate, compare, export.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    prepare = commands.add_parser("prepare", help="convert a public dataset into the public layout")
    prepare.add_argument(
        "name_of_converter", metavar="NAME", choices=("busi", "bus-bra", "tn3k", "ddti", "generic")
    )
    prepare.add_argument("src", metavar="SRC", help="the dataset as distributed (folder; a CSV for generic)")
    prepare.add_argument("dst", metavar="DST", help="dataset root to write (may hold other datasets)")
    prepare.add_argument("--seed", type=int, default=0, help="split seed")
    prepare.add_argument("--fractions", help="train,val,test fractions (default 0.7,0.1,0.2)")
    prepare.add_argument(
        "--fold", type=int, help="BUS-BRA: test fold (1-based, default 1); TN3K: fold json (default 0)"
    )
    prepare.add_argument("--folds", type=int, choices=(5, 10), help="BUS-BRA: 5- or 10-fold file (default 5)")
    prepare.add_argument(
        "--include-normal", action="store_true", help="BUSI: normal images (empty masks) in segmentation"
    )
    prepare.add_argument(
        "--near-duplicate-bits",
        type=int,
        default=6,
        help="near-duplicate threshold on the 256-bit dHash (-1: exact copies only)",
    )
    prepare.add_argument("--name", help="generic: dataset name")
    prepare.add_argument("--organ", help="generic: organ (lymph_node, breast_lesion, thyroid_nodule)")
    prepare.set_defaults(func=_run_prepare)

    helps = {
        "contrastive": "adapter tuning on image-caption pairs (symmetric InfoNCE)",
        "segmentation": "adapter + segmentation head",
        "classification": "adapter + classification head",
        "zero-shot": "classification from the prompt bank alone",
    }
    for name, text in helps.items():
        sub = commands.add_parser(name, help=text)
        _add_stage_options(sub, name)
        add_reference_options(sub, name)
        sub.set_defaults(func=_run_stage)

    compare = commands.add_parser("compare", help="paper-style table across runs")
    compare.add_argument("runs", metavar="RUN_DIR", nargs="+")
    compare.add_argument(
        "--metric", help="metric per cell (default dice for segmentation, auc for classification)"
    )
    compare.add_argument("--out", help="also write the table here (.md; a .csv beside it)")
    compare.set_defaults(func=_run_compare)

    export = commands.add_parser(
        "export", help="best checkpoint as one file for the server, plus a model card"
    )
    export.add_argument("run", metavar="RUN_DIR")
    export.add_argument(
        "file", metavar="FILE", help="checkpoint to write (.safetensors); the card goes beside it"
    )
    export.set_defaults(func=_run_export)

    from .captions import add_refine_captions_parser
    from .multiseed import add_multiseed_parser

    add_refine_captions_parser(commands)
    add_multiseed_parser(commands)

    demo = commands.add_parser(
        "demo-model", help="the demo model (small preset) trained on simulated phantoms, for make demo"
    )
    demo.add_argument("file", metavar="FILE", help="checkpoint to write (.safetensors), card beside it")
    demo.add_argument("--work", help="keep the phantoms and runs here (default: a temporary folder)")
    demo.add_argument("--per-organ", type=int, default=90, help="phantoms per organ (default 90)")
    demo.add_argument("--epochs", type=int, default=100, help="segmentation epochs (default 100)")
    demo.add_argument("--classification-epochs", type=int, default=20, help="default 20")
    demo.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    demo.add_argument("--lr", type=float, default=5e-3, help="segmentation learning rate (default 5e-3)")
    demo.add_argument("--backbone", default="small", help="backbone preset (default small)")
    demo.set_defaults(func=_run_demo_model)

    check = commands.add_parser(
        "demo-check", help="serve the demo model on held-out phantoms; Dice per organ through the server"
    )
    check.add_argument("--url", help="a running server on those studies (default: start one)")
    check.add_argument("--count", type=int, default=36, help="held-out studies (default 36)")
    check.add_argument("--figure", help="write one contour overlay per organ to this PNG")
    check.add_argument("--threads", type=int, default=2, help="server torch threads (default 2)")
    check.set_defaults(func=_run_demo_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (SonoInputError, ModelLoadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
