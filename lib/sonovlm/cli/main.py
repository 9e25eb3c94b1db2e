"""Entry point of the ``sonovlm`` console script.

Each sub-command module exposes ``register(subparsers)``, which adds its parser and sets
``func`` (called with the parsed namespace, returns the exit code). Modules import their heavy
dependencies (torch, transformers) inside ``func`` so ``sonovlm --help`` stays fast.

Errors a user can cause (:class:`~sonovlm.errors.SonoInputError`,
:class:`~sonovlm.errors.ModelLoadError`) end the program with exit code 2 and one line on stderr
starting with ``error:``; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ..errors import ModelLoadError, SonoInputError

#: Sub-command modules, in the order ``--help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "inspect",
    "measure",
    "sample_data",
    "model_info",
    "segment",
    "classify",
    "refine_prompts",
    "models",
    "report",
    "live",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sonovlm",
        description="SonoVLM: ultrasound image I/O, lesion measurement and vision-language models "
        "for segmentation and benign/malignant classification (research use only).",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (SonoInputError, ModelLoadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
