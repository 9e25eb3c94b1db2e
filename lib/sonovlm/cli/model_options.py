"""Options shared by the model commands (``segment``, ``classify``, ``model-info``).

``--backbone`` (preset ``tiny``/``vit-b16``, hub id or directory), ``--adapter`` (``lora``,
``mona``, ``hybrid``, ``none``), ``--weights`` (a SonoVLM checkpoint, or ``demo``: the packaged
phantom demo model, see :func:`resolve_weights`), ``--device`` and ``--precision`` (as the
server's ``--conf precision``: ``auto`` picks bf16 on a CPU with native bfloat16, else int8; see
:mod:`sonovlm.model.precision`). With
``--weights`` the backbone recorded in the checkpoint is the default; without, the hub id
``openai/clip-vit-base-patch16`` (which needs the weights in the HF cache when offline; use
``--backbone tiny`` for an untrained offline run).
``IMAGE``, ``--organ`` and ``--frame``: the input of the commands that read one frame.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..vocabulary import ADAPTER_KINDS, DEFAULT_ADAPTER, PRECISIONS

#: How errors name the option (the server's is ``--conf precision``).
PRECISION_OPTION = "--precision"


def add_image_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``IMAGE`` (the ultrasound file) and ``--organ`` (required): what a model command reads."""
    parser.add_argument("image", metavar="IMAGE", help="PNG, JPEG, BMP, TIFF, DICOM, NIfTI or NRRD file")
    parser.add_argument("--organ", required=True, help="lymph_node, breast_lesion or thyroid_nodule")


def add_frame_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--frame N`` (0-based; ``None`` = the middle frame)."""
    parser.add_argument("--frame", type=int, metavar="N", help="0-based frame (default: the middle frame)")


def add_model_arguments(
    parser: argparse.ArgumentParser, weights: bool = True, precision: bool = True
) -> None:
    """Add ``--backbone``, ``--adapter``, ``--device``, and ``--weights`` and ``--precision`` when
    asked (a command that runs no forward takes no precision)."""
    parser.add_argument(
        "--backbone",
        metavar="B",
        help="preset (tiny, vit-b16: untrained), hub id or local directory of a CLIP model "
        "(default: the checkpoint's with --weights, else openai/clip-vit-base-patch16)",
    )
    parser.add_argument(
        "--adapter",
        choices=ADAPTER_KINDS,
        help=f"vision adapter (default: the checkpoint's, else {DEFAULT_ADAPTER})",
    )
    if weights:
        parser.add_argument(
            "--weights",
            metavar="FILE",
            help="SonoVLM checkpoint (.safetensors), or demo: the packaged phantom demo model (not clinical)",
        )
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    if not precision:
        return
    parser.add_argument(
        PRECISION_OPTION,
        choices=PRECISIONS,
        default="auto",
        help="auto (default: bf16 where the CPU or GPU has native bfloat16, else int8 on a CPU), "
        "fp32, bf16 or int8; as the server's --conf precision",
    )


def predictor_from_args(args: argparse.Namespace, **kwargs: Any) -> Any:
    """The :class:`~sonovlm.model.Predictor` of the options: the model, ``--device`` and
    ``--precision`` (``kwargs`` go to the predictor). Raises ModelLoadError/SonoInputError."""
    from ..model import Predictor
    from ..model.precision import resolve_precision

    precision = resolve_precision(args.precision, args.device, key=PRECISION_OPTION)
    return Predictor(model_from_args(args), device=args.device, precision=precision, **kwargs)


def resolve_weights(weights: str | None) -> str | None:
    """``--weights``: ``demo`` is the packaged phantom demo model (not for clinical use), else a path."""
    from ..demo_model import DEMO_WEIGHTS_ALIAS, demo_checkpoint

    if weights == DEMO_WEIGHTS_ALIAS:
        return str(demo_checkpoint())
    return weights


def model_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~sonovlm.model.SonoVLM` the options name (raises ModelLoadError/SonoInputError)."""
    from ..model import load_model

    weights = resolve_weights(getattr(args, "weights", None))
    return load_model(backbone=args.backbone, adapter=args.adapter, weights=weights, device=args.device)


def model_summary(predictor: Any) -> dict[str, Any]:
    """Keys every model command prints: which model answered, and whether it is untrained."""
    model = predictor.model
    return {
        "model_version": predictor.model_version,
        "backbone": predictor.backbone_info["name"],
        "adapter": model.config.adapter.kind,
        "untrained": bool(predictor.backbone_info.get("untrained", False)),
        "precision": predictor.precision_info(),
    }
