"""Fixtures for the training pipeline's tests: tiny synthetic datasets in the public layout.

Every image is a speckled grey frame with a black strip at the left (outside the imaging area,
so the region crop is exercised) and a darker rectangular lesion whose mask is known exactly.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `training` is a top-level package beside lib/, not installed
    sys.path.insert(0, str(REPO))


def synthetic_case(
    rng: np.random.Generator, rows: int = 80, cols: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """``(image uint8, mask uint8 0/1)``: speckle, a black left strip, a dark lesion."""
    image = np.clip(rng.rayleigh(55.0, (rows, cols)) + 40, 0, 255).astype(np.uint8)
    image[:, :6] = 0
    mask = np.zeros((rows, cols), np.uint8)
    r0, c0 = int(rng.integers(10, rows - 35)), int(rng.integers(15, cols - 40))
    mask[r0 : r0 + 20, c0 : c0 + 25] = 1
    image[mask > 0] //= 3
    return image, mask


def write_layout(root: Path, datasets: dict[str, int], seed: int = 0) -> Path:
    """Datasets (name -> image count) in the public layout, segmentation and classification.

    Splits: the first 60 % train, the next 20 % val, the rest test; labels alternate 0/1.
    """
    from training.data.layout import LayoutWriter

    writer = LayoutWriter(root)
    rng = np.random.default_rng(seed)
    for dataset, count in datasets.items():
        names, labels = [], {}
        for i in range(count):
            image, mask = synthetic_case(rng)
            name = f"{dataset.lower()}_{i:03d}.png"
            writer.write_image(name, image)
            writer.write_mask(name, mask)
            names.append(name)
            labels[name] = i % 2
        n_train, n_val = int(count * 0.6), int(count * 0.2)
        splits = {
            "train": names[:n_train],
            "val": names[n_train : n_train + n_val],
            "test": names[n_train + n_val :],
        }
        for task in ("segmentation", "classification"):
            for split, members in splits.items():
                writer.write_split(task, dataset, split, members)
        writer.write_labels(dataset, labels)
    return root


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread: the tiny models gain nothing from more, and on a CPU shared with other
    jobs OpenMP threads that spin for each other make small steps tens of times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BUSI (10 images) and TN3K (10 images), synthetic, in the public layout."""
    return write_layout(tmp_path_factory.mktemp("layout"), {"BUSI": 10, "TN3K": 10})


@pytest.fixture(scope="session")
def pairs_file(tiny_layout: Path) -> Path:
    """Image-caption pairs over the BUSI images: raw and refined captions, 8 train, 2 val."""
    path = tiny_layout / "pairs.csv"
    with path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=["image", "caption", "refined_caption", "split"])
        writer.writeheader()
        for i in range(10):
            kind = "irregular hypoechoic mass" if i % 2 else "oval circumscribed mass"
            writer.writerow(
                {
                    "image": f"all/images/busi_{i:03d}.png",
                    "caption": f"breast ultrasound, {kind}",
                    "refined_caption": f"B-mode breast ultrasound image showing an {kind} in the breast",
                    "split": "val" if i >= 8 else "train",
                }
            )
    return path


@pytest.fixture(scope="session")
def make_layout():
    """:func:`write_layout`, for tests that need their own dataset sizes."""
    return write_layout
