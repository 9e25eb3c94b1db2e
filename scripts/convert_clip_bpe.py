"""Convert open_clip's CLIP BPE file into the ``vocab.json``/``merges.txt`` of transformers' CLIPTokenizer.

The OpenAI CLIP byte-pair vocabulary ships as ``open_clip/bpe_simple_vocab_16e6.txt.gz`` in the
open-clip-torch wheel (MIT licence). This script reproduces the vocabulary construction of
open_clip's ``SimpleTokenizer`` (the same as OpenAI's ``clip/simple_tokenizer.py``):

1. the 256 byte-level characters of ``bytes_to_unicode`` (in its order),
2. the same 256 characters with the end-of-word marker ``</w>``,
3. one token per merge rule, the two halves joined, for merge lines ``[1 : 49152 - 256 - 2 + 1]``
   of the file (line 0 is a version header),
4. ``<|startoftext|>`` and ``<|endoftext|>``,

which gives 49,408 tokens, start of text 49,406 and end of text 49,407. It writes those files plus
the tokenizer configuration of ``openai/clip-vit-base-patch16`` (77-token limit, lower-casing,
padding with the end-of-text token).

Usage (fetch the wheel once; do not install it, open_clip pulls in torchvision)::

    pip download --no-deps -d /tmp/oc open-clip-torch
    python scripts/convert_clip_bpe.py /tmp/oc/open_clip_torch-*.whl lib/sonovlm/resources/clip_tokenizer

The first argument may also be the extracted ``bpe_simple_vocab_16e6.txt.gz``. The script prints the
sha256 of the ``.gz`` and the wheel name, which belong in the folder's ``PROVENANCE.md``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import sys
import zipfile
from pathlib import Path

BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
START_OF_TEXT = "<|startoftext|>"
END_OF_TEXT = "<|endoftext|>"
#: Number of merge lines open_clip reads: the vocabulary is 49,152 BPE tokens in all, 256 + 256 of
#: them bytes, plus 2 special tokens, and line 0 of the file is a header.
MERGE_STOP = 49152 - 256 - 2 + 1
CONTEXT_LENGTH = 77


def bytes_to_unicode() -> dict[int, str]:
    """Reversible map from the 256 byte values to printable unicode characters (as in OpenAI CLIP)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def read_bpe_gz(source: Path) -> tuple[bytes, str]:
    """The gzip-compressed BPE file's bytes and a description of where they came from."""
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as wheel:
            return wheel.read(BPE_MEMBER), f"{source.name}:{BPE_MEMBER}"
    return source.read_bytes(), source.name


def convert(bpe_gz: bytes) -> tuple[dict[str, int], list[str]]:
    """Vocabulary (token -> id) and merge rules ("a b" strings, in rank order) of the BPE file."""
    lines = gzip.open(io.BytesIO(bpe_gz)).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:MERGE_STOP] if line.strip()]
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += ["".join(merge) for merge in merges]
    tokens += [START_OF_TEXT, END_OF_TEXT]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError("the BPE file yields duplicate tokens; it is not the CLIP vocabulary")
    return vocab, [" ".join(merge) for merge in merges]


def tokenizer_config() -> dict:
    """``tokenizer_config.json`` matching ``openai/clip-vit-base-patch16`` on the Hugging Face hub."""
    return {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": CONTEXT_LENGTH,
        "bos_token": START_OF_TEXT,
        "eos_token": END_OF_TEXT,
        "unk_token": END_OF_TEXT,
        "pad_token": END_OF_TEXT,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
    }


def special_tokens_map() -> dict:
    return {"bos_token": START_OF_TEXT, "eos_token": END_OF_TEXT, "unk_token": END_OF_TEXT,
            "pad_token": END_OF_TEXT}


def write(out_dir: Path, vocab: dict[str, int], merges: list[str]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    for name, content in (("tokenizer_config.json", tokenizer_config()),
                          ("special_tokens_map.json", special_tokens_map())):
        (out_dir / name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="open-clip-torch wheel or bpe_simple_vocab_16e6.txt.gz")
    parser.add_argument("out_dir", type=Path, help="folder to write the tokenizer files into")
    args = parser.parse_args(argv)

    bpe_gz, origin = read_bpe_gz(args.source)
    vocab, merges = convert(bpe_gz)
    write(args.out_dir, vocab, merges)
    print(f"source: {origin}")
    print(f"sha256 of {Path(BPE_MEMBER).name}: {hashlib.sha256(bpe_gz).hexdigest()}")
    print(f"vocabulary: {len(vocab)} tokens, {len(merges)} merges, "
          f"{START_OF_TEXT}={vocab[START_OF_TEXT]}, {END_OF_TEXT}={vocab[END_OF_TEXT]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
