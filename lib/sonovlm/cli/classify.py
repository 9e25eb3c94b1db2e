"""``sonovlm classify IMAGE --organ O [--frame N] [--json]``: benign or malignant, offline.

Runs the same model code as the server on one frame (default: the middle one). ``--json`` prints
MONAI Label's classification result: ``prediction``, a list of ``{"label", "score"}`` for
``benign`` and ``malignant`` (scores sum to 1), plus ``organ``, ``frame``, ``prompts`` (the class
descriptions behind the zero-shot part), ``zero_shot_only``, ``model_version``, ``backbone``,
``adapter`` and ``untrained``. Without it, a few lines for people.
"""

from __future__ import annotations

import argparse
import json

from .model_options import (
    add_frame_argument,
    add_image_arguments,
    add_model_arguments,
    model_summary,
    predictor_from_args,
)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "classify",
        help="benign/malignant probabilities of an organ's lesion in one frame",
        description=__doc__.splitlines()[0],
    )
    add_image_arguments(parser)
    add_frame_argument(parser)
    parser.add_argument("--json", action="store_true", help="print MONAI Label's classification JSON")
    add_model_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..io import load_image
    from ..model.preprocess import check_frame
    from ..organs import organ_label

    organ_label(args.organ)
    image = load_image(args.image)
    check_frame(image, args.frame)
    predictor = predictor_from_args(args)
    result = predictor.classify(image, args.organ, frame=args.frame)
    info = {
        "prediction": [{"label": label, "score": score} for label, score in result.probabilities.items()],
        "organ": result.organ,
        "frame": result.frame,
        "prompts": result.prompts,
        "zero_shot_only": result.zero_shot_only,
        **model_summary(predictor),
    }
    if args.json:
        print(json.dumps(info))
        return 0
    best = max(info["prediction"], key=lambda item: item["score"])
    lines = [f"{args.image} frame {result.frame}: {args.organ}"]
    lines += [f"  {item['label']:<10} {item['score']:.3f}" for item in info["prediction"]]
    lines.append(f"  -> {best['label']}" + (" (zero-shot only)" if result.zero_shot_only else ""))
    lines.append(f"  model {info['model_version']} on {info['backbone']}"
                 + (" (UNTRAINED backbone: not a clinical result)" if info["untrained"] else ""))
    print("\n".join(lines))
    return 0
