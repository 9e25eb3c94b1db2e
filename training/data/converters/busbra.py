"""BUS-BRA (Gómez-Flores et al., Medical Physics 2024) with its official folds.

Source structure (Zenodo 10.5281/zenodo.7730709)::

    BUSBRA/Images/bus_0001-l.png        1,875 images of 1,064 patients
    BUSBRA/Masks/mask_0001-l.png
    BUSBRA/bus_data.csv                 ID, Case, Histology, Pathology (benign|malignant), BIRADS, ...
    BUSBRA/5-fold-cv.csv                ID, Pathology, kFold (1..5)  [, valid_1 .. valid_5]
    BUSBRA/10-fold-cv.csv               the same with 10 folds

Output: names ``busbra_{ID}.png``; classification benign 0 / malignant 1 from ``Pathology``.
Splits: the official patient-level folds. Test = fold ``K`` (``--fold``, default 1). Validation =
the rows the file marks ``valid_K == 0`` when it has that column (the official inner split),
else the next fold (``K mod n + 1``). Train = the rest. Patients (``Case``) never straddle splits.

The fold columns as published loaders read the distributed file (``pd.merge(bus_data, folds,
on=["ID", "Pathology"])``; test = ``kFold == K``, train = ``valid_K == 1``, validation =
``valid_K == 0``, blank/NaN on the test fold's rows). The authors' own reader is MATLAB code in
their repository's ``BUSBRA-Codes.zip`` (wgomezf/BUS-BRA), which we could not read; a file whose
header lacks ``ID`` or ``kFold`` is refused with the columns it has.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from sonovlm.errors import SonoInputError

from .base import SourceCase, write_dataset

PATHOLOGY = {"benign": 0, "malignant": 1}


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise SonoInputError(path, "BUS-BRA file missing")
    with path.open(newline="", encoding="utf-8-sig") as stream:
        return [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in csv.DictReader(stream)]


def find_root(src: Path) -> Path:
    for candidate in (src, src / "BUSBRA"):
        if (candidate / "Images").is_dir() and (candidate / "bus_data.csv").is_file():
            return candidate
    raise SonoInputError(src, "not a BUS-BRA folder: expected Images/, Masks/ and bus_data.csv")


def _flag(value: str | None) -> float | None:
    """A ``valid_K`` cell: 0 or 1, ``None`` when blank or NaN (the test fold's rows)."""
    try:
        number = float(value) if value not in (None, "") else math.nan
    except ValueError:
        return None
    return None if math.isnan(number) else number


def read_cases(src: Path, fold: int = 1, folds: int = 5) -> list[SourceCase]:
    root = find_root(src)
    data = {row["ID"]: row for row in _read_csv(root / "bus_data.csv")}
    fold_file = root / f"{folds}-fold-cv.csv"
    fold_table = _read_csv(fold_file)
    missing = [c for c in ("ID", "kFold") if fold_table and c not in fold_table[0]]
    if missing or not fold_table:
        have = ", ".join(fold_table[0]) if fold_table else "no rows"
        raise SonoInputError(
            fold_file, f"expected columns ID and kFold (and valid_1..valid_{folds}); has {have}"
        )
    fold_rows = {row["ID"]: row for row in fold_table}
    if not 1 <= fold <= folds:
        raise SonoInputError("--fold", f"{fold} is not in 1..{folds}")
    valid_col = f"valid_{fold}"
    has_valid = any(valid_col in row for row in fold_rows.values())
    val_fold = fold % folds + 1
    cases = []
    for case_id, row in sorted(data.items()):
        if case_id not in fold_rows:
            raise SonoInputError(root / f"{folds}-fold-cv.csv", f"no fold for image {case_id}")
        pathology = row.get("Pathology", "").lower()
        if pathology not in PATHOLOGY:
            raise SonoInputError(
                root / "bus_data.csv", f"{case_id}: pathology {pathology!r} not benign/malignant"
            )
        frow = fold_rows[case_id]
        k = int(float(frow["kFold"]))
        if k == fold:
            split = "test"
        elif has_valid:
            split = "val" if _flag(frow.get(valid_col)) == 0 else "train"
        else:
            split = "val" if k == val_fold else "train"
        mask_id = case_id.replace("bus_", "mask_", 1)
        cases.append(
            SourceCase(
                name=f"busbra_{case_id.removeprefix('bus_')}.png",
                image=root / "Images" / f"{case_id}.png",
                masks=[root / "Masks" / f"{mask_id}.png"],
                label=PATHOLOGY[pathology],
                group=f"case:{row.get('Case') or case_id.removeprefix('bus_').split('-')[0]}",
                split=split,
            )
        )
    return cases


def convert(
    src: Path,
    dst: Path,
    *,
    seed: int = 0,
    fold: int = 1,
    folds: int = 5,
    near_duplicate_bits: int | None = 6,
    **_: object,
) -> dict:
    cases = read_cases(src, fold, folds)
    return write_dataset(
        cases,
        dst,
        "BUS-BRA",
        "breast_lesion",
        source=str(src),
        split_rule=f"official {folds}-fold-cv.csv: test = fold {fold}; val = valid_{fold} == 0 when the file "
        f"has that column, else fold {fold % folds + 1}; train = the rest (patient-level)",
        seed=seed,
        near_duplicate_bits=near_duplicate_bits,
    )
