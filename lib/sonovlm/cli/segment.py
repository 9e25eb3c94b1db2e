"""``sonovlm segment IMAGE --organ O [--prompt TEXT] [--frame N] --out MASK``: segment a lesion offline.

Runs the same model code as the server on one frame (default: the middle one) and writes a
``(rows, cols)`` mask of that frame whose lesion pixels carry the organ's label value (lymph_node
1, breast_lesion 2, thyroid_nodule 3), as PNG, NRRD or NIfTI by the name's extension (the image's
spacing goes into NRRD/NIfTI). Prints one JSON line: the mask's path, organ, prompt, frame, label,
lesion pixel count, confidence, model version, backbone, adapter and ``untrained``.
"""

from __future__ import annotations

import argparse
import json
import os

from .model_options import (
    add_frame_argument,
    add_image_arguments,
    add_model_arguments,
    model_summary,
    predictor_from_args,
)

MASK_EXTENSIONS = (".png", ".nrrd", ".nii", ".nii.gz")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment the lesion of an organ in one frame and write the mask",
        description=__doc__.splitlines()[0],
    )
    add_image_arguments(parser)
    parser.add_argument(
        "--prompt", metavar="TEXT", help="free-text description of the target (default: the organ's)"
    )
    add_frame_argument(parser)
    parser.add_argument(
        "--out", required=True, metavar="MASK", help="mask to write: .png, .nrrd, .nii or .nii.gz"
    )
    add_model_arguments(parser)
    parser.set_defaults(func=run)


def check_mask_path(path: str) -> None:
    """Fail before any model work when the mask cannot be written where asked."""
    from ..errors import SonoInputError

    if not path.lower().endswith(MASK_EXTENSIONS):
        raise SonoInputError(path, f"unsupported mask format; use {', '.join(MASK_EXTENSIONS)}")
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        raise SonoInputError(path, "the folder to write into does not exist")


def run(args: argparse.Namespace) -> int:
    from ..io import load_image, save_mask
    from ..model.preprocess import check_frame
    from ..organs import organ_label

    label = organ_label(args.organ)
    check_mask_path(args.out)
    image = load_image(args.image)
    check_frame(image, args.frame)
    predictor = predictor_from_args(args)
    result = predictor.segment(image, args.organ, prompt=args.prompt, frame=args.frame)
    save_mask(args.out, result.mask, spacing_mm=image.spacing_mm)
    summary = {
        "image": str(args.image),
        "out": str(args.out),
        "organ": result.organ,
        "prompt": result.prompt,
        "frame": result.frame,
        "label": label,
        "rows": int(result.mask.shape[0]),
        "cols": int(result.mask.shape[1]),
        "lesion_pixels": int((result.mask != 0).sum()),
        "confidence": round(result.confidence, 6),
        **model_summary(predictor),
    }
    print(json.dumps(summary))
    return 0
