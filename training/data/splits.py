"""Deterministic, documented train/val/test splits and few-shot subsets.

Every rule here depends only on the case names, their groups, their strata and the seed (a
SHA-256 of ``seed:key`` orders the units), never on file-system order or Python's hash seed, so
the same source folder gives byte-identical split lists on every machine.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Mapping, Sequence

from sonovlm.errors import SonoInputError

DEFAULT_FRACTIONS: tuple[float, float, float] = (0.7, 0.1, 0.2)


def seeded_key(seed: int, key: str) -> str:
    """A sort key for ``key`` that depends on ``seed`` and nothing else (hex SHA-256)."""
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def parse_fractions(text: str) -> tuple[float, float, float]:
    """``"0.7,0.1,0.2"`` -> ``(0.7, 0.1, 0.2)``; they must be non-negative and sum to 1."""
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise SonoInputError("--fractions", f"{text!r} is not three comma-separated numbers") from None
    if len(parts) != 3 or min(parts) < 0 or abs(sum(parts) - 1.0) > 1e-6:
        raise SonoInputError("--fractions", f"{text!r}: need train,val,test fractions >= 0 summing to 1")
    return parts  # type: ignore[return-value]


def assign_splits(
    groups: Mapping[str, Sequence[str]],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    strata: Mapping[str, str] | None = None,
    splits: Sequence[str] = ("train", "val", "test"),
) -> dict[str, str]:
    """Assign whole groups of cases to splits, stratified, in seeded order.

    Args:
        groups: ``group key -> case names``; a group (one patient, or one set of duplicate images)
            always lands in one split.
        fractions: share of cases per split, in the order of ``splits``.
        seed: orders the groups inside each stratum (see :func:`seeded_key`).
        strata: ``group key -> stratum`` (for example the pathology); ``None`` = one stratum.
        splits: split names.

    Returns:
        ``case name -> split``. Within each stratum, groups are taken in seeded order and each
        goes to the split whose share of the stratum's cases is furthest below its target
        (largest remaining deficit, ties to the earlier split); every split with a positive
        fraction gets at least one group when the stratum has enough groups.
    """
    if len(fractions) != len(splits):
        raise ValueError("one fraction per split")
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for key in groups:
        by_stratum[(strata or {}).get(key, "")].append(key)
    assignment: dict[str, str] = {}
    for stratum in sorted(by_stratum):
        keys = sorted(by_stratum[stratum], key=lambda k: seeded_key(seed, k))
        total = sum(len(groups[k]) for k in keys)
        taken = [0] * len(splits)
        wanted = [i for i, f in enumerate(fractions) if f > 0]
        for n, key in enumerate(keys):
            size = len(groups[key])
            remaining_groups = len(keys) - n
            empty = [i for i in wanted if taken[i] == 0]
            if empty and remaining_groups <= len(empty):
                choice = empty[0]  # make sure each wanted split gets a group
            else:
                deficits = [fractions[i] * total - taken[i] for i in range(len(splits))]
                choice = max(range(len(splits)), key=lambda i: (deficits[i], -i))
            taken[choice] += size
            for name in groups[key]:
                assignment[name] = splits[choice]
    return assignment


def few_shot_subset(
    names: Sequence[str], ratio: float, seed: int = 0, labels: Mapping[str, int] | None = None
) -> list[str]:
    """The first ``ratio`` of ``names`` in seeded order (per class when ``labels`` is given).

    At least one case per class (or one in all) is kept; ``ratio`` 1 returns ``names`` unchanged.
    The public code draws with ``random.sample`` unseeded; this is its deterministic equivalent.
    """
    if not 0 < ratio <= 1:
        raise SonoInputError("--train-ratio", f"{ratio} is not in (0, 1]")
    if ratio == 1:
        return list(names)
    classes: dict[int | None, list[str]] = defaultdict(list)
    for name in names:
        classes[(labels or {}).get(name)].append(name)
    keep: set[str] = set()
    for members in classes.values():
        ordered = sorted(members, key=lambda n: seeded_key(seed, n))
        keep.update(ordered[: max(1, int(len(ordered) * ratio))])
    return [n for n in names if n in keep]


def k_shot_subset(
    names: Sequence[str],
    shots: int,
    seed: int = 0,
    labels: Mapping[str, int] | None = None,
    where: str = "train split",
) -> list[str]:
    """``shots`` names per class, the first in the seeded order :func:`few_shot_subset` uses.

    Classes are the ``labels`` values (pathologies; all names one class without ``labels``), so
    a K-shot subset is a prefix, per class, of the order a ``--train-ratio`` subset takes from, and
    K-shot subsets of growing K are nested. The result keeps the order of ``names``.

    Raises:
        SonoInputError: ``shots`` < 1, or a class with fewer than ``shots`` names (named with
            ``where``, for example ``segmentation/BUSI train split``).
    """
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise SonoInputError("--shots", f"{shots!r} is not a positive whole number of images per class")
    classes: dict[int | None, list[str]] = defaultdict(list)
    for name in names:
        classes[(labels or {}).get(name)].append(name)
    if not classes:
        raise SonoInputError("--shots", f"{where} is empty")
    keep: set[str] = set()
    for label in sorted(classes, key=lambda c: (c is None, c)):
        members = classes[label]
        if len(members) < shots:
            what = "images" if labels is None else f"images of class {_class_name(label)}"
            raise SonoInputError(
                "--shots", f"{where} holds {len(members)} {what}, fewer than the {shots} asked for"
            )
        ordered = sorted(members, key=lambda n: seeded_key(seed, n))
        keep.update(ordered[:shots])
    return [n for n in names if n in keep]


def _class_name(label: int | None) -> str:
    from sonovlm.organs import PATHOLOGIES

    if label is None:
        return "unlabelled"
    return f"{label} ({PATHOLOGIES[label]})" if 0 <= label < len(PATHOLOGIES) else str(label)
