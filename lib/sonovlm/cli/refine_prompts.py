"""``sonovlm refine-prompts``: rewrite prompts with a local LLM into a new, validated prompt bank."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "refine-prompts",
        help="rewrite terse captions into clinical descriptions with a local LLM",
        description=(
            "Run a local causal language model (transformers; hub id from the HF cache, or a folder) "
            "with greedy decoding to rewrite terse captions or class names into clinical descriptions. "
            "Each output is checked (not empty, at most 77 CLIP tokens, names its organ, no duplicate); "
            "an invalid one keeps the curated text, with a warning. OUT is a prompt bank (JSON) that "
            "records the model, the time, and each item's input, output and whether it fell back."
        ),
    )
    parser.add_argument("--llm", required=True, metavar="ID_OR_PATH",
                        help="causal LM: Hugging Face hub id (no download when HF_HUB_OFFLINE=1) or folder")
    parser.add_argument("--out", required=True, metavar="FILE", help="refined prompt bank to write (JSON)")
    parser.add_argument("--input", metavar="FILE",
                        help="JSON list of {organ, role (target|benign|malignant), text} to refine; "
                             "default: organ names and, per class description, class name plus a criterion")
    parser.add_argument("--base", metavar="BANK",
                        help="prompt bank that supplies fallbacks and unrefined texts "
                             "(packaged name or file; default: the packaged clinical bank)")
    parser.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                        help="tokens generated per description (default: 96)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import SonoInputError
    from ..model.prompts import load_prompt_bank
    from ..model.refiner import DEFAULT_MAX_NEW_TOKENS, TransformersGenerator, read_inputs, refine_prompt_bank

    max_new_tokens = DEFAULT_MAX_NEW_TOKENS if args.max_new_tokens is None else args.max_new_tokens
    if max_new_tokens < 1:
        raise SonoInputError("--max-new-tokens", f"must be at least 1, got {max_new_tokens}")
    base = load_prompt_bank(args.base)
    inputs = read_inputs(args.input) if args.input else None
    generator = TransformersGenerator.from_pretrained(args.llm, max_new_tokens=max_new_tokens,
                                                      device=args.device)
    refined = refine_prompt_bank(generator, base, inputs, model_id=str(args.llm),
                                 generation=generator.generation)
    path = refined.save(args.out)
    record = refined.metadata["refinement"]
    total, fell_back = len(record["items"]), record["fell_back"]
    print(f"refined {total - fell_back} of {total} descriptions with {args.llm}; "
          f"{fell_back} kept the curated text; wrote {path} (prompt bank {refined.ident})")
    return 0
