"""``python -m training refine-captions``: the paper's caption refinement, one LLM rewrite per pair.

The paper refines each caption of the stage-1 image-caption corpus offline with an LLM; the
contrastive stage then trains on the refined text (``--captions refined``). This module does that
with a local causal language model through transformers:

* **batched**: prompts left-padded and generated together (greedy decoding, deterministic);
* **resumable**: the output is JSON Lines, one row per input pair, flushed and fsynced after every
  batch; a second run with the same ``--out`` skips the rows already there (an unterminated last
  line, from a run killed mid-write, is dropped and redone);
* **validated**: every generation is checked (not empty, fits CLIP's 77-token context, names the
  organ when the row has one, is not the instruction echoed back); an invalid one is replaced by
  the raw caption and says so;
* **with provenance per row**: ``refinement = {model, generated, valid, problem, fallback,
  created}`` beside ``refined_caption``.

Input: the pair files :func:`training.data.datasets.pair_cases` reads (CSV or JSONL with
``image``, ``caption``, optional ``split``/``organ``). The authors' released v1 files
``{image, caption, refined}`` are read as they are: their ``refined`` column is taken as
``refined_caption`` and nothing is regenerated (``--force`` regenerates).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sonovlm.errors import SonoInputError
from sonovlm.model.prompts import mentions_organ
from sonovlm.model.refiner import ORGAN_PHRASES, clean_generated
from sonovlm.model.tokenizer import CONTEXT_LENGTH, token_count

log = logging.getLogger("training")

#: The released v1 column of refined captions, read as ``refined_caption``.
V1_REFINED = "refined"

CAPTION_SYSTEM_PROMPT = (
    "You are an expert sonographer. Rewrite ultrasound image captions into one fluent, precise "
    "clinical sentence for a vision-language model. Keep every finding of the caption, add none, "
    "answer with the sentence only, at most 40 words."
)

#: A batch generator: a list of chat conversations in, one generated text per conversation out.
BatchGenerator = Callable[[list[list[dict[str, str]]]], list[str]]


def caption_messages(caption: str, organ: str | None = None) -> list[dict[str, str]]:
    """Chat messages asking for the refined form of ``caption``."""
    about = f" of a {ORGAN_PHRASES[organ]}" if organ in ORGAN_PHRASES else ""
    user = f'Rewrite this ultrasound image caption{about}: "{caption}"'
    return [{"role": "system", "content": CAPTION_SYSTEM_PROMPT}, {"role": "user", "content": user}]


def caption_problem(text: str, organ: str | None = None) -> str | None:
    """Why ``text`` cannot be a refined caption, or None when it can."""
    if not text.strip():
        return "empty output"
    count = token_count(text)
    if count > CONTEXT_LENGTH:
        return f"{count} CLIP tokens, more than {CONTEXT_LENGTH}"
    if organ in ORGAN_PHRASES and not mentions_organ(text, organ):
        return f"does not mention the {ORGAN_PHRASES[organ]}"
    if "rewrite this" in text.lower() or CAPTION_SYSTEM_PROMPT[:40].lower() in text.lower():
        return "echoes the instruction"
    return None


def read_pair_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a CSV (with header) or JSONL pair file; each needs ``image`` and ``caption``.

    Raises:
        SonoInputError: missing file, a line that is not JSON, a row without image or caption.
    """
    path = Path(path)
    if not path.is_file():
        raise SonoInputError(path, "image-caption pair file not found")
    if path.suffix.lower() == ".jsonl":
        rows = []
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SonoInputError(path, f"line {line_no}: not JSON ({exc})") from None
            if not isinstance(row, dict):
                raise SonoInputError(path, f"line {line_no}: not a JSON object")
            rows.append(row)
    else:
        with path.open(newline="", encoding="utf-8-sig") as stream:
            rows = [dict(row) for row in csv.DictReader(stream)]
    for row_no, row in enumerate(rows, start=1):
        for key in ("image", "caption"):
            if not str(row.get(key) or "").strip():
                raise SonoInputError(path, f"row {row_no}: no {key}")
    return rows


def _row_key(row: dict[str, Any]) -> str:
    return json.dumps([str(row["image"]), str(row["caption"])])


def _done_rows(out: Path) -> list[dict[str, Any]]:
    """Rows already written to ``out``; an unterminated last line is cut off (redone)."""
    if not out.is_file():
        return []
    data = out.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        log.warning("%s: dropping an unfinished last line (redone)", out)
        with out.open("r+b") as stream:
            stream.truncate(cut)
        data = data[:cut]
    rows = []
    for line_no, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise SonoInputError(
                    out, f"line {line_no}: not JSON ({exc}); not an output of this command"
                ) from None
    return rows


def refine_captions(
    pairs: str | os.PathLike,
    out: str | os.PathLike,
    generate: BatchGenerator,
    model_id: str,
    batch_size: int = 8,
    force: bool = False,
    progress: bool = True,
) -> dict[str, int]:
    """Write ``out`` (JSONL): every row of ``pairs`` with ``refined_caption`` and ``refinement``.

    Args:
        pairs: the pair file (CSV/JSONL; released v1 files with ``refined`` are taken as they are
            unless ``force``).
        out: JSON Lines file to write or to continue; image paths are rewritten relative to it.
        generate: conversations -> texts (:class:`BatchedCausalLM`, or a stand-in in tests).
        model_id: recorded in each row's provenance.
        batch_size: conversations per ``generate`` call.
        force: regenerate rows whose input already carries a refined caption.
        progress: a tqdm bar (on a terminal).

    Returns:
        ``{"rows", "generated", "fallbacks", "taken_from_input", "resumed"}`` counts.
    """
    if batch_size < 1:
        raise SonoInputError("--batch-size", f"must be at least 1, got {batch_size}")
    pairs, out = Path(pairs), Path(out)
    rows = read_pair_rows(pairs)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {_row_key(r) for r in _done_rows(out)}
    base = pairs.parent.resolve()
    todo = []
    for row in rows:
        image = base / str(row["image"])
        relocated = {**row, "image": os.path.relpath(image, out.parent.resolve())}
        relocated.pop(V1_REFINED, None)
        if _row_key(relocated) not in done:
            todo.append((relocated, row))
    counts = {
        "rows": len(rows),
        "generated": 0,
        "fallbacks": 0,
        "taken_from_input": 0,
        "resumed": len(rows) - len(todo),
    }
    from tqdm.auto import tqdm

    bar = tqdm(
        total=len(rows), initial=counts["resumed"], desc="refine captions", disable=None if progress else True
    )
    with out.open("a", encoding="utf-8") as stream:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            created = datetime.now(UTC).isoformat(timespec="seconds")
            given = [str(src.get(V1_REFINED) or src.get("refined_caption") or "").strip() for _, src in batch]
            ask = [i for i, text in enumerate(given) if force or not text]
            texts = (
                generate(
                    [caption_messages(str(batch[i][0]["caption"]), batch[i][0].get("organ")) for i in ask]
                )
                if ask
                else []
            )
            if len(texts) != len(ask):
                raise RuntimeError(f"the generator returned {len(texts)} texts for {len(ask)} prompts")
            generated = dict(zip(ask, texts, strict=True))
            lines = []
            for i, (row, _) in enumerate(batch):
                organ = row.get("organ") or None
                if i in generated:
                    raw = generated[i]
                    text = clean_generated(raw)
                    problem = caption_problem(text, organ)
                    source = model_id
                    counts["generated"] += 1
                else:
                    raw, text = given[i], given[i]
                    problem = caption_problem(text, organ)
                    source = f"input file ({pairs.name})"
                    counts["taken_from_input"] += 1
                fallback = problem is not None
                if fallback:
                    counts["fallbacks"] += 1
                    log.warning("row %s: %s; the raw caption is used", row["image"], problem)
                row = {k: v for k, v in row.items() if k not in ("refined_caption", "refinement")}
                row["refined_caption"] = str(row["caption"]).strip() if fallback else text
                row["refinement"] = {
                    "model": source,
                    "generated": raw,
                    "valid": not fallback,
                    "problem": problem,
                    "fallback": "caption" if fallback else None,
                    "created": created,
                }
                lines.append(json.dumps(row, ensure_ascii=False) + "\n")
            stream.write("".join(lines))
            stream.flush()
            os.fsync(stream.fileno())
            bar.update(len(batch))
    bar.close()
    return counts


class BatchedCausalLM:
    """A local causal LM (transformers) that answers a batch of conversations at once.

    Greedy decoding; prompts left-padded (the tokenizer's chat template when it has one, else the
    messages' contents joined, then ``Refined caption:``); returns only the new text per prompt.
    """

    def __init__(self, model: Any, tokenizer: Any, max_new_tokens: int = 64) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    @classmethod
    def from_pretrained(
        cls, source: str, max_new_tokens: int = 64, device: str | None = None
    ) -> BatchedCausalLM:
        """Load with the same rules as ``sonovlm refine-prompts`` (HF cache, ``HF_HUB_OFFLINE``,
        local folders); ModelLoadError when the model or its tokenizer cannot be found."""
        from sonovlm.model.refiner import TransformersGenerator

        single = TransformersGenerator.from_pretrained(source, max_new_tokens=max_new_tokens, device=device)
        return cls(single.model, single.tokenizer, max_new_tokens)

    def prompt(self, messages: list[dict[str, str]]) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return "\n\n".join(m["content"] for m in messages) + "\n\nRefined caption:"

    def __call__(self, conversations: list[list[dict[str, str]]]) -> list[str]:
        import copy

        import torch

        if not conversations:
            return []
        encoded = self.tokenizer(
            [self.prompt(m) for m in conversations],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        )
        encoded = {k: v.to(self.model.device) for k, v in encoded.items()}
        config = copy.deepcopy(self.model.generation_config)
        config.update(
            do_sample=False,
            num_beams=1,
            max_new_tokens=self.max_new_tokens,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        with torch.inference_mode():
            output = self.model.generate(**encoded, generation_config=config)
        start = encoded["input_ids"].shape[1]
        return [self.tokenizer.decode(row[start:], skip_special_tokens=True) for row in output]


def run_refine_captions(args: Any) -> int:
    """The CLI command."""
    import sys

    generator = BatchedCausalLM.from_pretrained(
        args.llm, max_new_tokens=args.max_new_tokens, device=args.device
    )
    counts = refine_captions(
        args.pairs, args.out, generator, model_id=str(args.llm), batch_size=args.batch_size, force=args.force
    )
    print(json.dumps(counts), file=sys.stdout)
    return 0


def add_refine_captions_parser(commands: Any) -> None:
    """``refine-captions PAIRS --llm ID_OR_DIR --out FILE.jsonl``."""
    sub = commands.add_parser(
        "refine-captions", help="LLM-refine every caption of an image-caption file (stage 1)"
    )
    sub.add_argument("pairs", metavar="PAIRS", help="CSV/JSONL with image, caption (released v1 files too)")
    sub.add_argument("--llm", required=True, help="local causal LM: hub id in the HF cache, or a folder")
    sub.add_argument("--out", required=True, help="JSON Lines to write, or to continue (resumable)")
    sub.add_argument("--batch-size", type=int, default=8, help="prompts generated together (default 8)")
    sub.add_argument("--max-new-tokens", type=int, default=64, help="tokens per caption (default 64)")
    sub.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when present)")
    sub.add_argument("--force", action="store_true", help="regenerate captions the input already refines")
    sub.set_defaults(func=run_refine_captions)
