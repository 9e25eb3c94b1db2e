"""LLM text refiner: rewrites terse captions or class names into richer clinical descriptions.

As in the paper (captions refined offline by an LLM), a local causal language model run through
transformers turns inputs such as ``malignant thyroid nodule: echogenic foci`` into a sentence a
CLIP text tower can use. Every output is validated (:func:`validation_problem`) and an invalid one
is replaced by the curated text of the same slot in the base prompt bank, with a logged warning.
The result is a :class:`~sonovlm.model.prompts.PromptBank` whose ``refinement`` metadata records
the model, the time and, per item, the input, the raw generation, the text used and whether it
fell back.

The generator is any callable ``messages -> text`` (chat messages as ``{"role", "content"}``
dicts), so tests and other back ends can replace :class:`TransformersGenerator`.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ModelLoadError, SonoInputError
from ..organs import ORGAN_LABELS, PATHOLOGIES
from .prompts import TARGET, PromptBank, mentions_organ
from .tokenizer import CONTEXT_LENGTH, hub_cache_dir, hub_offline, looks_like_path, token_count

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

#: A text generator: chat messages in, generated text out.
Generator = Callable[[list[dict[str, str]]], str]

#: Default number of new tokens per description (about 70 English words; CLIP keeps at most 75).
DEFAULT_MAX_NEW_TOKENS = 96

#: How each organ is named in instructions.
ORGAN_PHRASES: dict[str, str] = {
    "lymph_node": "lymph node",
    "breast_lesion": "breast lesion",
    "thyroid_nodule": "thyroid nodule",
}

#: The sonographic criteria the LLM is asked to draw on, per organ.
ORGAN_CRITERIA: dict[str, str] = {
    "lymph_node": "shape, long-to-short axis ratio, fatty hilum, cortex, calcification, necrosis and "
                  "vascularity",
    "breast_lesion": "the BI-RADS ultrasound lexicon: shape, orientation, margin, echo pattern and "
                     "posterior features",
    "thyroid_nodule": "ACR TI-RADS: composition, echogenicity, shape (taller than wide), margin and "
                      "echogenic foci",
}

#: One focus per class-description slot, so the default inputs (and deterministic outputs) differ.
SLOT_FOCUS: dict[str, tuple[str, ...]] = {
    "lymph_node": ("shape and long-to-short axis ratio", "cortex and fatty hilum",
                   "vascularity on colour Doppler", "margins, calcification and necrosis", "size and hilum",
                   "internal echo pattern"),
    "breast_lesion": ("shape and orientation", "margin", "echo pattern", "posterior acoustic features",
                      "calcifications and associated features", "overall BI-RADS impression"),
    "thyroid_nodule": ("composition", "echogenicity", "margin and extrathyroidal extension", "echogenic foci",
                       "overall ACR TI-RADS impression", "shape (taller than wide)"),
}

SYSTEM_PROMPT = (
    "You are an expert sonographer writing short image descriptions for a vision-language model. "
    "Answer with one sentence of at most 40 words, in plain English, with no preamble."
)


@dataclass(frozen=True)
class RefineInput:
    """One text to refine.

    Attributes:
        organ: organ name (key of ``sonovlm.organs.ORGAN_LABELS``).
        role: ``"target"`` or a pathology (``benign``/``malignant``).
        text: the terse caption or class name to rewrite.
    """

    organ: str
    role: str
    text: str


@dataclass(frozen=True)
class RefineRecord:
    """What happened to one input: the record file holds one per item.

    Attributes:
        organ, role, text: the input (``text`` is the input caption).
        index: slot within the role's list in the refined bank (0 for the target).
        generated: the model's raw output.
        output: the text used in the refined bank (``None`` when an extra slot was dropped).
        fell_back: whether the curated text (or nothing) replaced an invalid generation.
        problem: why the generation was invalid, else ``None``.
    """

    organ: str
    role: str
    index: int
    text: str
    generated: str
    output: str | None
    fell_back: bool
    problem: str | None


def instruction(item: RefineInput) -> list[dict[str, str]]:
    """Chat messages asking the LLM to rewrite ``item`` into a clinical description."""
    organ = ORGAN_PHRASES[item.organ]
    if item.role == TARGET:
        task = (f"Describe what a {organ} looks like on an ultrasound image, so that it can be found and "
                f"outlined: typical shape, echogenicity and boundary against the surrounding tissue.")
    else:
        task = (f"Describe the ultrasound appearance of a {item.role} {organ} using "
                f"{ORGAN_CRITERIA[item.organ]}, naming the features typical of a {item.role} {organ}.")
    user = (f"{task}\nRewrite this terse caption into one richer clinical description that mentions the "
            f"{organ}: \"{item.text}\"")
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def clean_generated(text: str) -> str:
    """First non-empty line of ``text``, without surrounding quotes or a ``Description:`` label."""
    line = next((ln.strip() for ln in text.strip().splitlines() if ln.strip()), "")
    for label in ("description:", "answer:", "assistant:"):
        if line.lower().startswith(label):
            line = line[len(label):].strip()
    return line.strip().strip("\"'“”").strip()


def _normalised(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(".")


def validation_problem(text: str, organ: str, taken: Iterable[str],
                       tokenizer: PreTrainedTokenizerBase | None = None) -> str | None:
    """Why ``text`` cannot describe ``organ`` in a prompt bank, or ``None`` if it can.

    Checks: not empty; at most 77 CLIP tokens with start and end (``tokenizer``, default the
    packaged CLIP tokenizer); names the organ (:data:`~sonovlm.model.prompts.ORGAN_TERMS`); not a
    duplicate (case and spacing ignored) of a text in ``taken``.
    """
    if not text.strip():
        return "empty output"
    count = token_count(text, tokenizer)
    if count > CONTEXT_LENGTH:
        return f"{count} CLIP tokens, more than {CONTEXT_LENGTH}"
    if not mentions_organ(text, organ):
        return f"does not mention the {ORGAN_PHRASES[organ]}"
    if _normalised(text) in {_normalised(t) for t in taken}:
        return "duplicates another description"
    return None


def default_inputs(base: PromptBank) -> list[RefineInput]:
    """Terse captions for every slot of ``base``: the organ name, and class name plus one criterion."""
    items = []
    for organ in ORGAN_LABELS:
        items.append(RefineInput(organ, TARGET, ORGAN_PHRASES[organ]))
        for pathology, texts in base.class_prompts(organ).items():
            for index in range(len(texts)):
                focus = SLOT_FOCUS[organ][index % len(SLOT_FOCUS[organ])]
                items.append(RefineInput(organ, pathology, f"{pathology} {ORGAN_PHRASES[organ]}: {focus}"))
    return items


def read_inputs(path: str | os.PathLike) -> list[RefineInput]:
    """Read refiner inputs from JSON: a list (or ``{"items": [...]}``) of ``{organ, role, text}``.

    ``role`` is ``target``, ``benign`` or ``malignant``; at most one ``target`` per organ.

    Raises:
        SonoInputError: unreadable file, unknown organ or role, empty text, two targets for one organ.
    """
    source = str(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SonoInputError(source, "no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SonoInputError(source, f"cannot read refiner inputs: {exc}") from exc
    if isinstance(data, dict):
        data = data.get("items")
    if not isinstance(data, list) or not data:
        raise SonoInputError(source, "expected a non-empty JSON list of {organ, role, text} objects")
    items = []
    targets = set()
    roles = (TARGET, *PATHOLOGIES)
    for number, entry in enumerate(data):
        where = f"item {number}"
        if not isinstance(entry, dict):
            raise SonoInputError(source, f"{where}: expected an object with organ, role and text")
        organ, role, text = entry.get("organ"), entry.get("role"), entry.get("text")
        if organ not in ORGAN_LABELS:
            known = ", ".join(ORGAN_LABELS)
            raise SonoInputError(source, f"{where}: unknown organ {organ!r} (known: {known})")
        if role not in roles:
            raise SonoInputError(source, f"{where}: unknown role {role!r} (known: {', '.join(roles)})")
        if not isinstance(text, str) or not text.strip():
            raise SonoInputError(source, f"{where}: empty text")
        if role == TARGET:
            if organ in targets:
                raise SonoInputError(source, f"{where}: a second target for {organ}")
            targets.add(organ)
        items.append(RefineInput(organ, role, text.strip()))
    return items


def refine_prompt_bank(generate: Generator, base: PromptBank, inputs: Sequence[RefineInput] | None = None,
                       model_id: str = "unknown", generation: dict[str, Any] | None = None,
                       tokenizer: PreTrainedTokenizerBase | None = None) -> PromptBank:
    """Refine ``inputs`` with ``generate`` and build a new bank from ``base``.

    Each input fills a slot: an organ's target, or the next description of its (organ, pathology).
    A valid generation replaces the base text of that slot; an invalid one keeps the base text
    (logged as a warning); beyond the base's slots a valid generation is appended and an invalid one
    dropped. Slots no input names keep their base text. Generations are checked against every text
    the organ will hold, so the bank stays free of duplicates.

    Args:
        generate: chat messages -> text (for example a :class:`TransformersGenerator`).
        base: the curated bank that supplies fallbacks and the slots not refined.
        inputs: what to refine; :func:`default_inputs` of ``base`` when ``None``.
        model_id: recorded as the model that generated the texts.
        generation: decoding settings, recorded as given.
        tokenizer: CLIP tokenizer for the length check (default the packaged one).

    Returns:
        The refined bank, named ``<base name>-refined``, with a ``refinement`` record in
        :attr:`PromptBank.metadata`.
    """
    items = list(default_inputs(base) if inputs is None else inputs)
    for item in items:
        if item.organ not in ORGAN_LABELS or item.role not in (TARGET, *PATHOLOGIES):
            raise SonoInputError("refiner input", f"unknown organ or role in {item}")
    organs = {organ: {"target": base.target(organ), "classes": base.class_prompts(organ)}
              for organ in ORGAN_LABELS}
    base_organs = copy.deepcopy(organs)
    next_index = {(organ, p): 0 for organ in ORGAN_LABELS for p in PATHOLOGIES}
    records = []
    for item in items:
        index = 0
        if item.role != TARGET:
            index = next_index[item.organ, item.role]
            next_index[item.organ, item.role] += 1
        curated = _slot_text(base_organs[item.organ], item.role, index)
        # Checked against every other text the organ holds now or may hold after a fallback.
        taken = [*_other_texts(organs[item.organ], item.role, index),
                 *_other_texts(base_organs[item.organ], item.role, index)]
        generated = generate(instruction(item))
        cleaned = clean_generated(generated)
        problem = validation_problem(cleaned, item.organ, taken, tokenizer)
        output = cleaned if problem is None else curated
        if problem is not None:
            what = "dropping this extra description" if curated is None else "keeping the curated text"
            logger.warning("refined %s %s #%d is invalid (%s); %s",
                           item.organ, item.role, index, problem, what)
        if output is not None:
            _set_slot_text(organs[item.organ], item.role, index, output)
        elif item.role != TARGET:
            next_index[item.organ, item.role] -= 1  # a dropped extra slot frees its place
        records.append(RefineRecord(item.organ, item.role, index, item.text, generated, output,
                                    problem is not None, problem))
    refinement = {
        "model": model_id,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "base_bank": base.ident,
        "generation": dict(generation or {}),
        "fell_back": sum(r.fell_back for r in records),
        "items": [asdict(r) for r in records],
    }
    data = {"name": f"{base.name}-refined", "version": base.version,
            "description": f"{base.name} {base.version} refined by {model_id}",
            "organs": organs, "refinement": refinement}
    return PromptBank.from_dict(data, source=f"refined by {model_id}")


def _slot_text(organ_texts: dict[str, Any], role: str, index: int) -> str | None:
    if role == TARGET:
        return organ_texts["target"]
    texts = organ_texts["classes"][role]
    return texts[index] if index < len(texts) else None


def _set_slot_text(organ_texts: dict[str, Any], role: str, index: int, text: str) -> None:
    if role == TARGET:
        organ_texts["target"] = text
    elif index < len(organ_texts["classes"][role]):
        organ_texts["classes"][role][index] = text
    else:
        organ_texts["classes"][role].append(text)


def _other_texts(organ_texts: dict[str, Any], role: str, index: int) -> list[str]:
    """Every text of one organ except the slot (role, index)."""
    others = [] if role == TARGET else [organ_texts["target"]]
    for pathology, texts in organ_texts["classes"].items():
        others += [t for i, t in enumerate(texts) if (pathology, i) != (role, index)]
    return others


class TransformersGenerator:
    """A local causal LM through transformers, with deterministic (greedy) decoding.

    Uses the tokenizer's chat template when it has one, else a plain prompt (system text, user
    text, then ``Description:``). Returns only the newly generated text.

    Args:
        model: a transformers causal LM.
        tokenizer: its tokenizer.
        max_new_tokens: tokens to generate per description.
    """

    def __init__(self, model: Any, tokenizer: PreTrainedTokenizerBase,
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens

    @property
    def generation(self) -> dict[str, Any]:
        """Decoding settings, for the record."""
        return {"do_sample": False, "num_beams": 1, "max_new_tokens": self.max_new_tokens,
                "chat_template": bool(getattr(self.tokenizer, "chat_template", None))}

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                        device: str | None = None) -> TransformersGenerator:
        """Load model and tokenizer from a hub id (HF cache; no download when ``HF_HUB_OFFLINE``
        is set) or a local folder.

        Raises:
            ModelLoadError: the model or its tokenizer cannot be found or loaded.
        """
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        local = looks_like_path(source)
        if local and not Path(source).expanduser().is_dir():
            raise ModelLoadError(f"language model folder {str(source)!r} does not exist or is not a folder")
        offline = local or hub_offline()
        name = str(Path(source).expanduser()) if local else str(source)
        try:
            tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=offline)
            model = AutoModelForCausalLM.from_pretrained(name, local_files_only=offline, dtype="auto")
        except (OSError, ValueError) as exc:
            if local:
                problem = f"cannot be loaded as a causal language model with its tokenizer: {exc}"
            elif offline:
                problem = (f"not found in the Hugging Face cache {hub_cache_dir()!r} and HF_HUB_OFFLINE is "
                           f"set, so nothing was downloaded; download it on a machine with internet "
                           f"(hf download {source}) into that cache, or pass a local folder")
            else:
                problem = (f"not found in the Hugging Face cache {hub_cache_dir()!r} nor on the hub: {exc}; "
                           f"check the id and the network, or pass a local folder")
            raise ModelLoadError(f"language model {name!r} {problem}") from exc
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model.to(device).eval()
        return cls(model, tokenizer, max_new_tokens)

    def encode(self, messages: list[dict[str, str]]) -> Any:
        """Token ids (and attention mask) of the prompt for ``messages``, as PyTorch tensors."""
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                      return_tensors="pt", return_dict=True)
        prompt = "\n\n".join(m["content"] for m in messages) + "\n\nDescription:"
        return self.tokenizer(prompt, return_tensors="pt")

    def __call__(self, messages: list[dict[str, str]]) -> str:
        import torch

        encoded = {k: v.to(self.model.device) for k, v in self.encode(messages).items()}
        generation_config = copy.deepcopy(self.model.generation_config)
        generation_config.update(do_sample=False, num_beams=1, max_new_tokens=self.max_new_tokens,
                                 temperature=None, top_p=None, top_k=None)
        if generation_config.pad_token_id is None:
            pad = self.tokenizer.pad_token_id
            generation_config.pad_token_id = pad if pad is not None else self.tokenizer.eos_token_id
        with torch.inference_mode():
            output = self.model.generate(**encoded, generation_config=generation_config)
        new_tokens = output[0, encoded["input_ids"].shape[1]:]
        return self.tokenizer.decode(new_tokens, skip_special_tokens=True)
