"""The CLIP text tokenizer: packaged with SonoVLM, or loaded from a hub id or a local folder.

The packaged files (``sonovlm/resources/clip_tokenizer``) are OpenAI CLIP's byte-pair vocabulary,
converted from the open-clip-torch wheel by ``scripts/convert_clip_bpe.py`` (see the folder's
``PROVENANCE.md``): 49,408 tokens, start of text 49,406, end of text 49,407, 77-token context,
lower-casing, padding with the end-of-text token, as ``openai/clip-vit-base-patch16`` configures it.
They let the weightless presets (``tiny``, ``vit-b16``) and the prompt checks use real token ids
without any download.
"""

from __future__ import annotations

import functools
import os
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ModelLoadError
from ..vocabulary import env_flag

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

#: CLIP's text context, start and end tokens included.
CONTEXT_LENGTH = 77
#: Names that select the tokenizer shipped in the package (the weightless backbone presets use it).
PACKAGED_TOKENIZER_NAMES: tuple[str, ...] = ("clip", "tiny", "small", "vit-b16")


def packaged_tokenizer_dir() -> Path:
    """Folder of the packaged CLIP tokenizer files (``vocab.json``, ``merges.txt``, configuration)."""
    return Path(str(resources.files("sonovlm") / "resources" / "clip_tokenizer"))


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set now.

    Read at call time: huggingface_hub reads it once at import, so a value set later would
    otherwise be ignored.
    """
    return env_flag("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def hub_cache_dir() -> str:
    """The Hugging Face cache folder that ``from_pretrained`` looks in."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def looks_like_path(source: str | os.PathLike) -> bool:
    """True for a path-like object or a string that names a file system location, not a hub id."""
    if isinstance(source, os.PathLike):
        return True
    text = str(source)
    return Path(text).expanduser().exists() or text.startswith(("/", "./", "../", "~", "\\")) or (
        len(text) > 1 and text[1] == ":"  # a Windows drive
    )


def load_clip_tokenizer(source: str | os.PathLike | None = None) -> PreTrainedTokenizerBase:
    """Load a CLIP tokenizer.

    Args:
        source: ``None`` or one of :data:`PACKAGED_TOKENIZER_NAMES` for the packaged tokenizer; a
            local folder with tokenizer files; or a Hugging Face hub id (for example
            ``openai/clip-vit-base-patch16``), taken from the HF cache, and downloaded only when
            ``HF_HUB_OFFLINE`` is not set.

    Returns:
        A transformers tokenizer (``CLIPTokenizer`` for the packaged files and CLIP checkpoints).

    Raises:
        ModelLoadError: the folder or hub id has no usable tokenizer. There is no fallback to the
            packaged files: a different vocabulary would give the model wrong token ids.
    """
    if source is None or (isinstance(source, str) and source in PACKAGED_TOKENIZER_NAMES):
        from transformers import CLIPTokenizer

        return CLIPTokenizer.from_pretrained(str(packaged_tokenizer_dir()))

    from transformers import AutoTokenizer

    if looks_like_path(source):
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise ModelLoadError(f"tokenizer folder {str(source)!r} does not exist or is not a folder")
        try:
            return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"no usable tokenizer in folder {str(folder)!r} (expected vocab.json and merges.txt, "
                f"or tokenizer.json, with tokenizer_config.json): {exc}"
            ) from exc

    offline = hub_offline()
    try:
        return AutoTokenizer.from_pretrained(str(source), local_files_only=offline)
    except (OSError, ValueError) as exc:
        if offline:
            problem = (f"not found in the Hugging Face cache {hub_cache_dir()!r} and HF_HUB_OFFLINE is set, "
                       f"so nothing was downloaded; download it on a machine with internet "
                       f"(hf download {source}) into that cache, or pass a local folder")
        else:
            problem = (f"not found in the Hugging Face cache {hub_cache_dir()!r} nor on the hub; "
                       f"check the id and the network, or pass a local folder")
        raise ModelLoadError(f"tokenizer {str(source)!r} {problem}") from exc


@functools.lru_cache(maxsize=1)
def packaged_tokenizer() -> PreTrainedTokenizerBase:
    """The packaged tokenizer, loaded once per process. Read-only use (for counting tokens)."""
    return load_clip_tokenizer(None)


def token_count(text: str, tokenizer: PreTrainedTokenizerBase | None = None) -> int:
    """Number of tokens ``text`` takes in CLIP's context, start and end tokens included.

    Args:
        text: the text to measure.
        tokenizer: the tokenizer to count with; the packaged CLIP tokenizer when ``None``.
    """
    tokenizer = tokenizer if tokenizer is not None else packaged_tokenizer()
    # verbose=False: no warning about sequences longer than the maximum; measuring those is the point.
    return len(tokenizer(text, add_special_tokens=True, truncation=False, verbose=False)["input_ids"])


def fits_context(text: str, tokenizer: PreTrainedTokenizerBase | None = None,
                 context_length: int = CONTEXT_LENGTH) -> bool:
    """Whether ``text`` fits CLIP's context (``context_length`` tokens, start and end included)."""
    return token_count(text, tokenizer) <= context_length
