"""The prompt bank: text that tells the model which organ to segment and what each class looks like.

A bank is data (JSON), shipped in ``sonovlm/resources/prompts`` or written by
``sonovlm refine-prompts``. Per organ it holds one *target* description (the segmentation head's
text condition) and, per pathology, several *class* descriptions (averaged into that class's
zero-shot text embedding). File layout::

    {"format": "sonovlm-prompt-bank", "name": "clinical", "version": "1", "description": "...",
     "organs": {"lymph_node": {"target": "...", "classes": {"benign": ["...", ...],
                                                            "malignant": ["...", ...]}}, ...}}

Other top-level keys (a refiner's ``refinement`` record, for example) are kept as metadata and do
not enter :attr:`PromptBank.content_hash`, which depends only on the texts and is what text
embeddings are cached under.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..errors import SonoInputError
from ..organs import ORGAN_LABELS, PATHOLOGIES, organ_label
from .tokenizer import CONTEXT_LENGTH, token_count

FORMAT = "sonovlm-prompt-bank"
#: The packaged bank used when none is named.
DEFAULT_PROMPT_BANK = "clinical_v1"
#: Role of a target text in :meth:`PromptBank.entries`; class texts carry their pathology instead.
TARGET = "target"

#: Words that show a text is about the organ (lower case, matched as whole words or phrases).
ORGAN_TERMS: dict[str, tuple[str, ...]] = {
    "lymph_node": ("lymph node", "lymph nodes", "node", "nodes", "nodal", "lymphadenopathy"),
    "breast_lesion": ("breast", "mass", "masses", "lesion", "lesions", "fibroadenoma", "carcinoma",
                      "cyst"),
    "thyroid_nodule": ("thyroid", "nodule", "nodules"),
}


def mentions_organ(text: str, organ: str) -> bool:
    """Whether ``text`` names ``organ`` or one of its synonyms in :data:`ORGAN_TERMS`."""
    words = " " + " ".join("".join(c if c.isalnum() else " " for c in text.lower()).split()) + " "
    return any(f" {term} " in words for term in ORGAN_TERMS[organ])


def _normalised(text: str) -> str:
    """Form used to detect duplicates: lower case, single spaces, no trailing full stop."""
    return " ".join(text.lower().split()).rstrip(".")


@dataclass(frozen=True)
class PromptEntry:
    """One text of a bank.

    Attributes:
        organ: organ name (a key of ``sonovlm.organs.ORGAN_LABELS``).
        role: :data:`TARGET` or a pathology from ``sonovlm.organs.PATHOLOGIES``.
        index: position within the pathology's list (0 for the target).
        text: the description.
    """

    organ: str
    role: str
    index: int
    text: str


@dataclass(frozen=True)
class PromptBank:
    """Validated prompts for every organ; build with :func:`load_prompt_bank` or :meth:`from_dict`.

    Attributes:
        name: bank name (``clinical`` for the packaged one).
        version: bank version, a string.
        organs: organ -> {"target": str, "classes": {pathology: tuple of str}}, read-only.
        description: free text.
        metadata: other top-level keys of the file (for example a refiner's record).
        source: where the bank came from (file path or packaged name), for messages.
    """

    name: str
    version: str
    organs: Mapping[str, Mapping[str, Any]]
    description: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    source: str = "<memory>"

    def __hash__(self) -> int:
        return hash(self.content_hash)

    def target(self, organ: str) -> str:
        """The segmentation target description of ``organ``."""
        organ_label(organ)
        return self.organs[organ]["target"]

    def class_prompts(self, organ: str) -> dict[str, list[str]]:
        """Pathology -> descriptions for ``organ``, keys in ``sonovlm.organs.PATHOLOGIES`` order."""
        organ_label(organ)
        return {pathology: list(self.organs[organ]["classes"][pathology]) for pathology in PATHOLOGIES}

    def entries(self) -> Iterator[PromptEntry]:
        """Every text, organs in ``ORGAN_LABELS`` order, each organ's target before its classes."""
        for organ in ORGAN_LABELS:
            yield PromptEntry(organ, TARGET, 0, self.organs[organ]["target"])
            for pathology in PATHOLOGIES:
                for index, text in enumerate(self.organs[organ]["classes"][pathology]):
                    yield PromptEntry(organ, pathology, index, text)

    @property
    def content_hash(self) -> str:
        """sha256 (hex) of the texts alone, in a canonical order; the key for cached text embeddings."""
        return hashlib.sha256(json.dumps(_texts_dict(self.organs), ensure_ascii=False, sort_keys=True,
                                         separators=(",", ":")).encode("utf-8")).hexdigest()

    @property
    def ident(self) -> str:
        """Short identifier for configs and logs: ``name@version#<first 12 hex digits of the hash>``."""
        return f"{self.name}@{self.version}#{self.content_hash[:12]}"

    def to_dict(self) -> dict[str, Any]:
        """The bank as its JSON layout (metadata keys after the texts)."""
        data: dict[str, Any] = {"format": FORMAT, "name": self.name, "version": self.version,
                                "description": self.description, "organs": _texts_dict(self.organs)}
        data.update({k: v for k, v in self.metadata.items() if k not in data})
        return data

    def save(self, path: str | os.PathLike) -> Path:
        """Write the bank as JSON atomically (temporary file, then rename); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<memory>") -> PromptBank:
        """Validate ``data`` (the JSON layout) and build a bank.

        Raises:
            SonoInputError: (naming ``source``) for a wrong format, an unknown or missing organ or
                pathology, an empty or duplicate text, or a text longer than CLIP's 77 tokens.
        """
        if not isinstance(data, Mapping):
            raise SonoInputError(source, "a prompt bank must be a JSON object")
        if data.get("format", FORMAT) != FORMAT:
            raise SonoInputError(source, f"format is {data.get('format')!r}, expected {FORMAT!r}")
        for key in ("name", "version"):
            if not isinstance(data.get(key), str | int) or not str(data.get(key)).strip():
                raise SonoInputError(source, f"missing or empty {key!r}")
        organs = data.get("organs")
        if not isinstance(organs, Mapping):
            raise SonoInputError(source, "missing 'organs' object")
        unknown = [organ for organ in organs if organ not in ORGAN_LABELS]
        if unknown:
            raise SonoInputError(source, f"unknown organ {unknown[0]!r} (known: {', '.join(ORGAN_LABELS)})")
        missing = [organ for organ in ORGAN_LABELS if organ not in organs]
        if missing:
            raise SonoInputError(source, f"no prompts for organ {missing[0]!r}")
        checked = {organ: _checked_organ(organs[organ], organ, source) for organ in ORGAN_LABELS}
        metadata = {k: v for k, v in data.items()
                    if k not in {"format", "name", "version", "description", "organs"}}
        return cls(name=str(data["name"]), version=str(data["version"]),
                   organs=MappingProxyType(checked), description=str(data.get("description", "")),
                   metadata=MappingProxyType(metadata), source=source)


def _texts_dict(organs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    return {organ: {"target": organs[organ]["target"],
                    "classes": {p: list(organs[organ]["classes"][p]) for p in PATHOLOGIES}}
            for organ in ORGAN_LABELS}


def _check_text(text: Any, where: str, source: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise SonoInputError(source, f"{where}: empty text")
    count = token_count(text)
    if count > CONTEXT_LENGTH:
        raise SonoInputError(source, f"{where}: {count} CLIP tokens, more than the limit of {CONTEXT_LENGTH} "
                                     f"(start and end tokens included): {text[:60]!r}...")
    return text.strip()


def _checked_organ(spec: Any, organ: str, source: str) -> dict[str, Any]:
    if not isinstance(spec, Mapping):
        raise SonoInputError(source, f"{organ}: expected an object with 'target' and 'classes'")
    target = _check_text(spec.get("target"), f"{organ}.target", source)
    classes = spec.get("classes")
    if not isinstance(classes, Mapping):
        raise SonoInputError(source, f"{organ}: missing 'classes' object")
    unknown = [p for p in classes if p not in PATHOLOGIES]
    if unknown:
        known = ", ".join(PATHOLOGIES)
        raise SonoInputError(source, f"{organ}: unknown class {unknown[0]!r} (known: {known})")
    seen: dict[str, str] = {_normalised(target): f"{organ}.target"}
    checked: dict[str, tuple[str, ...]] = {}
    for pathology in PATHOLOGIES:
        texts = classes.get(pathology)
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list | tuple) or not texts:
            raise SonoInputError(source, f"{organ}.{pathology}: no descriptions")
        out = []
        for index, text in enumerate(texts):
            where = f"{organ}.{pathology}[{index}]"
            text = _check_text(text, where, source)
            key = _normalised(text)
            if key in seen:
                raise SonoInputError(source, f"{where}: duplicates {seen[key]}: {text[:60]!r}")
            seen[key] = where
            out.append(text)
        checked[pathology] = tuple(out)
    return {"target": target, "classes": MappingProxyType(checked)}


def packaged_prompt_banks() -> list[str]:
    """Names of the banks shipped with SonoVLM (file names without ``.json``)."""
    folder = resources.files("sonovlm") / "resources" / "prompts"
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def load_prompt_bank(name_or_path: str | os.PathLike | None = None) -> PromptBank:
    """Load and validate a prompt bank.

    Args:
        name_or_path: ``None`` for :data:`DEFAULT_PROMPT_BANK`, the name of a packaged bank (see
            :func:`packaged_prompt_banks`), or the path of a bank JSON file (the output of
            ``sonovlm refine-prompts`` included).

    Raises:
        SonoInputError: unknown name, missing or unreadable file, invalid content.
    """
    name_or_path = DEFAULT_PROMPT_BANK if name_or_path is None else name_or_path
    if isinstance(name_or_path, str) and name_or_path in packaged_prompt_banks():
        resource = resources.files("sonovlm") / "resources" / "prompts" / f"{name_or_path}.json"
        return PromptBank.from_dict(json.loads(resource.read_text(encoding="utf-8")), source=name_or_path)
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        known = ", ".join(packaged_prompt_banks())
        raise SonoInputError(str(name_or_path),
                             f"no such prompt bank file or packaged bank (packaged: {known})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SonoInputError(str(path), f"cannot read prompt bank: {exc}") from exc
    return PromptBank.from_dict(data, source=str(path))
