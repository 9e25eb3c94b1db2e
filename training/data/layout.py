"""The public code's dataset folder layout (jinggqu/NextGen-UIA), read and written.

::

    ROOT/
      all/images/NAME            every image of every dataset (file names unique across datasets)
      all/masks/NAME             its lesion mask, same file name (or STEM.png beside a DICOM image);
                                 any 8-bit image, non-zero = lesion
      segmentation/DATASET/{train,val,test}.txt     one file name (with extension) per line
      classification/DATASET/{train,val,test}.txt
      classification/DATASET/labels.csv             ``name,label`` (0 benign, 1 malignant), no header
      {segmentation,classification}/DATASET/dataset.json   (ours, optional) organ, source, split rule

``dataset.json`` is this project's addition: the public release has none, so a dataset without
it takes its organ from :data:`DATASET_ORGANS` by name. The converters in
:mod:`training.data.converters` write the whole layout, ``dataset.json`` included.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from sonovlm.errors import SonoInputError
from sonovlm.organs import ORGAN_LABELS

IMAGES_DIR = Path("all") / "images"
MASKS_DIR = Path("all") / "masks"
TASKS: tuple[str, ...] = ("segmentation", "classification")
SPLITS: tuple[str, ...] = ("train", "val", "test")
INFO_FILE = "dataset.json"
LABELS_FILE = "labels.csv"

#: Organ of the datasets the paper and its public code name, for layouts without ``dataset.json``.
DATASET_ORGANS: dict[str, str] = {
    "BUSI": "breast_lesion",
    "BUS-BRA": "breast_lesion",
    "TN3K": "thyroid_nodule",
    "DDTI": "thyroid_nodule",
    "LN-INT": "lymph_node",
    "LN-EXT": "lymph_node",
    "LymphUs": "lymph_node",
}


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise SonoInputError("task", f"unknown task {task!r} (known: {', '.join(TASKS)})")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise SonoInputError("split", f"unknown split {split!r} (known: {', '.join(SPLITS)})")


class PublicLayout:
    """Read access to a dataset root in the public layout.

    Args:
        root: the folder holding ``all/``, ``segmentation/`` and ``classification/``.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        if not (self.root / IMAGES_DIR).is_dir():
            raise SonoInputError(
                self.root,
                f"not a dataset root: no {IMAGES_DIR}/ folder (make one with `python -m training prepare`)",
            )

    def image_path(self, name: str) -> Path:
        return self.root / IMAGES_DIR / name

    def mask_path(self, name: str) -> Path:
        """``all/masks/NAME``; for an image that is not itself a PNG (a DICOM, say) whose mask is
        not stored under the same name, ``all/masks/STEM.png``."""
        same = self.root / MASKS_DIR / name
        png = same.with_suffix(".png")
        return png if not same.is_file() and png.is_file() else same

    def task_dir(self, task: str, dataset: str) -> Path:
        _check_task(task)
        return self.root / task / dataset

    def datasets(self, task: str) -> list[str]:
        """Names of the datasets that have split lists for ``task``, sorted."""
        _check_task(task)
        folder = self.root / task
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if (p / "train.txt").is_file())

    def split(self, task: str, dataset: str, split: str) -> list[str]:
        """File names listed in ``TASK/DATASET/SPLIT.txt`` (blank lines skipped, order kept)."""
        _check_split(split)
        path = self.task_dir(task, dataset) / f"{split}.txt"
        if not path.is_file():
            known = ", ".join(self.datasets(task)) or "none"
            raise SonoInputError(
                path, f"no {split} list for {task} dataset {dataset!r} (datasets here: {known})"
            )
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        names = [n for n in names if n]
        if len(set(names)) != len(names):
            raise SonoInputError(path, "lists the same file name twice")
        return names

    def labels(self, dataset: str) -> dict[str, int]:
        """``name -> label`` (0 benign, 1 malignant) from ``classification/DATASET/labels.csv``.

        A first row whose label is not a number is taken as a header and skipped.
        """
        path = self.task_dir("classification", dataset) / LABELS_FILE
        if not path.is_file():
            raise SonoInputError(path, f"classification dataset {dataset!r} has no {LABELS_FILE}")
        labels: dict[str, int] = {}
        with path.open(newline="", encoding="utf-8-sig") as stream:
            for row_no, row in enumerate(csv.reader(stream)):
                if not row or not "".join(row).strip():
                    continue
                if len(row) < 2:
                    raise SonoInputError(path, f"row {row_no + 1} has no label column: {row!r}")
                name, value = row[0].strip(), row[1].strip()
                try:
                    label = int(float(value))
                except ValueError:
                    if row_no == 0:
                        continue  # header
                    raise SonoInputError(path, f"row {row_no + 1}: label {value!r} is not 0 or 1") from None
                if label not in (0, 1):
                    raise SonoInputError(
                        path, f"row {row_no + 1}: label {label} is not 0 (benign) or 1 (malignant)"
                    )
                labels[name] = label
        return labels

    def info(self, task: str, dataset: str) -> dict:
        """The dataset's ``dataset.json`` (empty when absent)."""
        path = self.task_dir(task, dataset) / INFO_FILE
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise SonoInputError(path, f"not valid JSON: {exc}") from None

    def organ(self, task: str, dataset: str, override: Mapping[str, str] | None = None) -> str:
        """Organ of ``dataset``: ``override``, else ``dataset.json``, else :data:`DATASET_ORGANS`."""
        organ = (
            (override or {}).get(dataset)
            or self.info(task, dataset).get("organ")
            or DATASET_ORGANS.get(dataset)
        )
        if organ is None:
            raise SonoInputError(
                self.task_dir(task, dataset),
                f'organ of dataset {dataset!r} unknown: add "organ" to its {INFO_FILE} or pass --organ '
                f"{dataset}=ORGAN (organs: {', '.join(ORGAN_LABELS)})",
            )
        if organ not in ORGAN_LABELS:
            raise SonoInputError(dataset, f"unknown organ {organ!r} (known: {', '.join(ORGAN_LABELS)})")
        return organ


class LayoutWriter:
    """Writes a dataset into the public layout (used by the converters).

    Images and masks are written as PNG: images keep their decoded pixels (8-bit grey or RGB),
    masks become 0/255. Text files are written whole to a temporary name, then moved into place.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        (self.root / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
        (self.root / MASKS_DIR).mkdir(parents=True, exist_ok=True)

    def write_image(self, name: str, pixels: np.ndarray) -> Path:
        """Write ``pixels`` (rows, cols) or (rows, cols, 3), uint8, as ``all/images/NAME``."""
        from PIL import Image

        if pixels.dtype != np.uint8:
            raise ValueError(f"{name}: image pixels must be uint8, got {pixels.dtype}")
        path = self.root / IMAGES_DIR / name
        Image.fromarray(pixels).save(path)
        return path

    def write_mask(self, name: str, mask: np.ndarray) -> Path:
        """Write ``mask`` (rows, cols), non-zero = lesion, as a 0/255 PNG ``all/masks/NAME``."""
        from PIL import Image

        if mask.ndim != 2:
            raise ValueError(f"{name}: mask must be (rows, cols), got shape {mask.shape}")
        path = self.root / MASKS_DIR / name
        Image.fromarray(np.where(mask > 0, 255, 0).astype(np.uint8)).save(path)
        return path

    def write_split(self, task: str, dataset: str, split: str, names: Iterable[str]) -> Path:
        _check_task(task)
        _check_split(split)
        return _write_text(self.root / task / dataset / f"{split}.txt", "".join(f"{n}\n" for n in names))

    def write_labels(self, dataset: str, labels: Mapping[str, int]) -> Path:
        lines = "".join(f"{name},{int(label)}\n" for name, label in sorted(labels.items()))
        return _write_text(self.root / "classification" / dataset / LABELS_FILE, lines)

    def write_info(self, task: str, dataset: str, info: Mapping) -> Path:
        _check_task(task)
        return _write_text(
            self.root / task / dataset / INFO_FILE, json.dumps(info, indent=2, sort_keys=True) + "\n"
        )


def _write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
