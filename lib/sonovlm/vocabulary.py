"""The words every entry point shares: adapter kinds and the default adapter, the default backbone,
precisions, and the one way a yes/no value is read.

The CLI (``sonovlm``), the server (``--conf``), the research pipeline (``python -m training``) and
the model package take these from here, so a new adapter kind or a changed default is one edit.
This module imports nothing heavy (no torch, no transformers): ``sonovlm.app.config`` uses it.
Organs and pathologies have their own module, :mod:`sonovlm.organs`.
"""

from __future__ import annotations

import os
from typing import Any

from .errors import SonoInputError

#: Vision adapter kinds: peft LoRA, Mona, the hybrid frequency Mona, or none (frozen CLIP).
ADAPTER_KINDS: tuple[str, ...] = ("lora", "mona", "hybrid", "none")
#: The adapter of a fresh model when none is named (the paper's: Mona), for every entry point.
DEFAULT_ADAPTER = "mona"

#: The backbone when none is named: CLIP ViT-B/16 by hub id (as in the paper).
DEFAULT_BACKBONE = "openai/clip-vit-base-patch16"

#: Values ``--conf precision`` accepts (see :mod:`sonovlm.model.precision`).
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "int8")
#: What a bad precision value is reported against.
PRECISION_KEY = "--conf precision"

#: Words read as true and as false (case and surrounding blanks ignored).
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def parse_bool(value: Any, name: str, default: bool | None = None) -> bool:
    """``value`` as a bool: a bool, or one of :data:`TRUE_WORDS` / :data:`FALSE_WORDS`.

    Args:
        value: what the user gave (a request param, a ``--conf`` value, ...).
        name: what the error names (``--conf warmup``, ``measure``).
        default: returned for ``None`` or a blank string; ``None`` makes a blank an error.

    Raises:
        SonoInputError: naming ``name``, for any other value.
    """
    if isinstance(value, bool):
        return value
    text = "" if value is None else str(value).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    if text == "" and default is not None:
        return default
    raise SonoInputError(name, f"expected true or false, got {value!r}")


def env_flag(*names: str) -> bool:
    """Whether the first of the environment variables ``names`` that is set reads as true, now.

    Lenient like huggingface_hub's own reading of ``HF_HUB_OFFLINE``: anything not in
    :data:`TRUE_WORDS` is false.
    """
    for name in names:
        value = os.environ.get(name)
        if value:
            return value.strip().lower() in TRUE_WORDS
    return False


def check_adapter(kind: str | None, name: str = "--adapter") -> str | None:
    """``kind`` if it is one of :data:`ADAPTER_KINDS` (or ``None``); else an error naming ``name``."""
    if kind is not None and kind not in ADAPTER_KINDS:
        raise SonoInputError(name, f"unknown adapter {kind!r}; choose one of {', '.join(ADAPTER_KINDS)}")
    return kind
