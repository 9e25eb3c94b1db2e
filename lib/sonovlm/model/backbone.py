"""The frozen CLIP backbone: loaded from the Hugging Face hub, a local directory, or a named preset.

A backbone is a transformers :class:`~transformers.CLIPModel` plus a small ``info`` dict that every
output of SonoVLM carries (CLI JSON, server ``/info``, checkpoints), so that results of a model with
random weights can never pass for results of a trained one.

Names :func:`load_backbone` understands:

* a preset, built from a config with deterministic random weights (``untrained: True``):

  - ``tiny``: 4 vision blocks of width 32 on 64 px images (patch 8), 2 text blocks of width 32, but
    the real 49,408-token CLIP vocabulary with end-of-text id 49,407, so real token ids and
    end-of-text pooling work. Runs in milliseconds; for tests and offline smoke runs.
  - ``small``: the ``tiny`` text tower with 4 vision blocks of width 64 on 160 px images (patch
    8, a 20 x 20 token grid): the backbone of the shipped demo model (phantoms only), fine
    enough for lesions a few tokens across, fast on a CPU.
  - ``vit-b16``: exactly the ViT-B/16 geometry (vision 12 blocks, width 768, patch 16, 224 px;
    text 12 blocks, width 512; projection 512). For benchmarks and size checks.

* a local directory holding a ``CLIPModel`` (``config.json`` plus weights);
* a hub id (default ``openai/clip-vit-base-patch16``), read from the HF cache. ``HF_HUB_OFFLINE``
  (read at call time) forbids network access; weights found in the cache are used without asking
  the hub.

On failure :class:`~sonovlm.errors.ModelLoadError` names the id, where it looked and how to fix it.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from transformers import CLIPConfig, CLIPModel
from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from ..errors import ModelLoadError
from ..vocabulary import DEFAULT_BACKBONE
from .tokenizer import hub_offline

#: CLIP's vocabulary and special tokens (the shipped tokenizer has the same).
CLIP_VOCAB_SIZE = 49408
CLIP_BOS_TOKEN_ID = 49406
CLIP_EOS_TOKEN_ID = 49407

_TEXT_SPECIALS = {
    "vocab_size": CLIP_VOCAB_SIZE,
    "max_position_embeddings": 77,
    "bos_token_id": CLIP_BOS_TOKEN_ID,
    "eos_token_id": CLIP_EOS_TOKEN_ID,
    "pad_token_id": CLIP_EOS_TOKEN_ID,
}

#: Presets: CLIPConfig arguments of the random-weight backbones.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "projection_dim": 32,
        "text_config": {
            **_TEXT_SPECIALS,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "projection_dim": 32,
        },
        "vision_config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 4,
            "num_attention_heads": 2,
            "image_size": 64,
            "patch_size": 8,
            "projection_dim": 32,
        },
    },
    "small": {
        "projection_dim": 32,
        "text_config": {
            **_TEXT_SPECIALS,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "projection_dim": 32,
        },
        "vision_config": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "image_size": 160,
            "patch_size": 8,
            "projection_dim": 32,
        },
    },
    "vit-b16": {
        "projection_dim": 512,
        "text_config": {
            **_TEXT_SPECIALS,
            "hidden_size": 512,
            "intermediate_size": 2048,
            "num_hidden_layers": 12,
            "num_attention_heads": 8,
            "projection_dim": 512,
        },
        "vision_config": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "image_size": 224,
            "patch_size": 16,
            "projection_dim": 512,
        },
    },
}

#: Seed of the presets' random weights: the same preset is the same network on every load, so a
#: checkpoint trained on it reloads exactly.
PRESET_SEED = 0


@dataclass
class Backbone:
    """A loaded CLIP model and what it is.

    Attributes:
        clip: the transformers ``CLIPModel`` (frozen by SonoVLM; adapters are injected into its
            vision tower in place).
        info: ``{"name", "untrained", "source", ...}``: ``name`` as the user gave it (preset name,
            hub id or directory), ``untrained`` True for presets, ``source`` one of ``preset``,
            ``hub``, ``local``; plus the geometry. JSON-serialisable; carried by every output.
        image_mean, image_std: per-channel normalisation of the backbone's pixel input.
    """

    clip: CLIPModel
    info: dict[str, Any]
    image_mean: tuple[float, float, float] = tuple(OPENAI_CLIP_MEAN)  # type: ignore[assignment]
    image_std: tuple[float, float, float] = tuple(OPENAI_CLIP_STD)  # type: ignore[assignment]

    @property
    def image_size(self) -> int:
        """Side of the square pixel input, in pixels (224 for ViT-B/16)."""
        return _side(self.clip.config.vision_config.image_size)

    @property
    def patch_size(self) -> int:
        return _side(self.clip.config.vision_config.patch_size)

    @property
    def grid_size(self) -> int:
        """Patch tokens per side (14 for ViT-B/16 at 224 px)."""
        return self.image_size // self.patch_size

    @property
    def vision_layers(self) -> int:
        return int(self.clip.config.vision_config.num_hidden_layers)

    @property
    def vision_width(self) -> int:
        return int(self.clip.config.vision_config.hidden_size)

    @property
    def embed_dim(self) -> int:
        """Width of the joint image-text embedding space (CLIP's projection dim)."""
        return int(self.clip.config.projection_dim)

    @property
    def untrained(self) -> bool:
        return bool(self.info.get("untrained", False))


def _side(size: int | list[int] | tuple[int, int]) -> int:
    if isinstance(size, list | tuple):
        if len(set(size)) != 1:
            raise ModelLoadError(f"non-square backbone input {size} is not supported")
        return int(size[0])
    return int(size)


def geometry_info(clip: CLIPModel) -> dict[str, Any]:
    """Geometry of a CLIP model: the part of ``Backbone.info`` a checkpoint is checked against."""
    vision, text = clip.config.vision_config, clip.config.text_config
    return {
        "image_size": _side(vision.image_size),
        "patch_size": _side(vision.patch_size),
        "vision_layers": int(vision.num_hidden_layers),
        "vision_width": int(vision.hidden_size),
        "text_layers": int(text.num_hidden_layers),
        "text_width": int(text.hidden_size),
        "embed_dim": int(clip.config.projection_dim),
    }


def build_preset(name: str, seed: int = PRESET_SEED) -> Backbone:
    """Build the preset backbone ``name`` with deterministic random weights (labelled untrained)."""
    if name not in PRESETS:
        raise ModelLoadError(f"unknown backbone preset {name!r} (known: {', '.join(PRESETS)})")
    config = CLIPConfig(**PRESETS[name])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip = CLIPModel(config)
    clip.eval()
    info = {"name": name, "untrained": True, "source": "preset", "seed": seed, "tokenizer": "clip"}
    info.update(geometry_info(clip))
    info["weights_fingerprint"] = preset_fingerprint(clip)
    return Backbone(clip=clip, info=info)


def preset_fingerprint(clip: CLIPModel) -> str:
    """16 hex digits of sha256 over the patch embedding and the first vision block's weights.

    A preset's random weights come from torch's and transformers' initialisers: another version of
    either can draw other weights from the same seed, and a checkpoint trained on the first draw
    (the shipped demo model) would be served on a backbone it never saw. Checkpoints record this
    fingerprint and :func:`~sonovlm.model.checkpoint.load_checkpoint` refuses a mismatch.
    """
    import hashlib

    vision = clip.vision_model
    digest = hashlib.sha256()
    for tensor in (
        vision.embeddings.patch_embedding.weight,
        *(p for _, p in sorted(vision.encoder.layers[0].named_parameters())),
    ):
        digest.update(tensor.detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def load_backbone(name: str | os.PathLike | None = None) -> Backbone:
    """Load a backbone by preset name, local directory or hub id (see the module docstring).

    Raises:
        ModelLoadError: weights not found or not a CLIP model; the message names the id, where it
            looked and how to fix it.
    """
    name = DEFAULT_BACKBONE if name is None else str(name)
    if name in PRESETS:
        return build_preset(name)
    if _looks_like_path(name):
        return _load_local(Path(name).expanduser())
    return _load_hub(name)


def _looks_like_path(name: str) -> bool:
    if os.path.isdir(os.path.expanduser(name)):
        return True
    # A hub id is "name" or "owner/name"; anything else that names a place on disk is a path.
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def _load_local(path: Path) -> Backbone:
    if not path.is_dir():
        raise ModelLoadError(
            f"backbone directory {str(path)!r} does not exist; pass a directory holding a CLIP model "
            f"(config.json and model.safetensors, as saved by CLIPModel.save_pretrained or "
            f"`huggingface-cli download openai/clip-vit-base-patch16 --local-dir DIR`), a hub id, "
            f"or a preset ({', '.join(PRESETS)})"
        )
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"backbone directory {str(path)!r} has no config.json; it is not a saved CLIP model "
            f"(expected config.json and model.safetensors)"
        )
    clip = _from_pretrained(str(path), where=str(path), local_files_only=True, cache_dir=None)
    mean, std = _normalisation(json_path=path / "preprocessor_config.json")
    info = {"name": str(path), "untrained": False, "source": "local", "path": str(path.resolve())}
    info["tokenizer"] = _tokenizer_source(path, clip, str(path))
    return Backbone(clip=clip, info={**info, **geometry_info(clip)}, image_mean=mean, image_std=std)


def hub_cache_dir() -> str:
    """The hub cache as transformers would use it now (``HF_HUB_CACHE``, ``HF_HOME``, default)."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return constants.HF_HUB_CACHE



def _load_hub(repo_id: str) -> Backbone:
    from huggingface_hub import try_to_load_from_cache

    cache_dir = hub_cache_dir()
    cached_config = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir)
    in_cache = isinstance(cached_config, str)
    offline = hub_offline()
    how_to_fix = (
        f"download it on a machine with internet (`huggingface-cli download {repo_id}`, then copy "
        f"{cache_dir} here, or `--local-dir DIR` and pass DIR as the backbone), or pass a local "
        f"directory, or use a preset ({', '.join(PRESETS)}) for untrained runs"
    )
    if not in_cache:
        if offline:
            raise ModelLoadError(
                f"backbone {repo_id!r} is not in the Hugging Face cache ({cache_dir}) and HF_HUB_OFFLINE "
                f"is set, so it cannot be downloaded; {how_to_fix}"
            )
        unreachable = _hub_unreachable()
        if unreachable:
            raise ModelLoadError(
                f"backbone {repo_id!r} is not in the Hugging Face cache ({cache_dir}) and the hub cannot "
                f"be reached ({unreachable}); {how_to_fix}"
            )
    where = f"the Hugging Face cache ({cache_dir})" + ("" if in_cache or offline else " and the hub")
    clip = _from_pretrained(
        repo_id, where=where, local_files_only=in_cache or offline, cache_dir=cache_dir, fix=how_to_fix
    )
    preprocessor = try_to_load_from_cache(repo_id, "preprocessor_config.json", cache_dir=cache_dir)
    mean, std = _normalisation(json_path=Path(preprocessor) if isinstance(preprocessor, str) else None)
    info: dict[str, Any] = {"name": repo_id, "untrained": False, "source": "hub", "cache_dir": cache_dir}
    config_file = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir)
    if isinstance(config_file, str):
        snapshot = Path(config_file).parent
        info["path"] = str(snapshot)
        info["tokenizer"] = _tokenizer_source(snapshot, clip, repo_id)
    else:
        info["tokenizer"] = repo_id
    return Backbone(clip=clip, info={**info, **geometry_info(clip)}, image_mean=mean, image_std=std)


#: File sets transformers builds a CLIP tokenizer from.
_TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))


def _tokenizer_source(folder: Path, clip: CLIPModel, name: str) -> str:
    """Where the backbone's tokenizer comes from: its own folder, or the packaged CLIP BPE.

    ``CLIPModel.from_pretrained`` fetches weights but no tokenizer files, so a cache filled that way
    has none. A text tower with CLIP's 49,408-token vocabulary (OpenAI CLIP, MetaCLIP) then takes the
    packaged CLIP tokenizer (the same BPE); ``"clip"`` in the backbone's info says so. Any other
    vocabulary without its tokenizer is an error rather than a guess.
    """
    if any(all((folder / f).is_file() for f in files) for files in _TOKENIZER_FILES):
        return str(folder)
    if int(clip.config.text_config.vocab_size) == CLIP_VOCAB_SIZE:
        return "clip"
    raise ModelLoadError(
        f"backbone {name!r} ({folder}) has no tokenizer files (tokenizer.json, or vocab.json and "
        f"merges.txt) and a {clip.config.text_config.vocab_size}-token vocabulary that is not CLIP's; "
        f"download the whole repository (`huggingface-cli download {name}`)"
    )


def _hub_unreachable() -> str | None:
    """A reason the hub cannot be reached, found at once (DNS); None when it may be reachable.

    Without this a machine with no network waits about a minute on huggingface_hub's retries before
    failing. Behind a proxy the local resolver says nothing about reachability, so no verdict.
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname
    if not host:
        return None
    try:
        socket.getaddrinfo(host, 443)
    except OSError as exc:
        return f"cannot resolve {host}: {exc}"
    return None


def _from_pretrained(
    source: str, *, where: str, local_files_only: bool, cache_dir: str | None, fix: str = ""
) -> CLIPModel:
    try:
        clip = CLIPModel.from_pretrained(source, local_files_only=local_files_only, cache_dir=cache_dir)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        hint = f"; {fix}" if fix else ""
        raise ModelLoadError(f"could not load CLIP backbone {source!r} from {where}: {exc}{hint}") from exc
    clip.eval()
    return clip


def _normalisation(json_path: Path | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Image mean/std from a ``preprocessor_config.json``; CLIP's OpenAI values when it has none."""
    if json_path is not None and json_path.is_file():
        try:
            data = json.loads(json_path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"unreadable preprocessor config {str(json_path)!r}: {exc}") from exc
        mean, std = data.get("image_mean"), data.get("image_std")
        if isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3:
            return tuple(float(v) for v in mean), tuple(float(v) for v in std)
    return tuple(OPENAI_CLIP_MEAN), tuple(OPENAI_CLIP_STD)


def pooled(output: Any) -> torch.Tensor:
    """The pooled tensor of ``get_image_features``/``get_text_features``.

    transformers 5 returns a ``BaseModelOutputWithPooling`` (projected embedding in
    ``pooler_output``); earlier versions return the tensor itself.
    """
    if isinstance(output, torch.Tensor):
        return output
    tensor = getattr(output, "pooler_output", None)
    if tensor is None:
        raise TypeError(f"no pooled features in {type(output).__name__}")
    return tensor


def image_features(clip: CLIPModel, pixel_values: torch.Tensor) -> torch.Tensor:
    """Projected (not normalised) image embeddings ``(B, embed_dim)`` of ``(B, 3, S, S)`` pixels."""
    return pooled(clip.get_image_features(pixel_values=pixel_values))


def text_features(
    clip: CLIPModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Projected (not normalised) text embeddings ``(N, embed_dim)`` of ``(N, L)`` token ids."""
    return pooled(clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask))
