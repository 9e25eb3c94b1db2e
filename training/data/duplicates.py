"""Finding the same image stored under two names (BUSI has such duplicates).

Two tests, both on the decoded grey pixels (so PNG vs JPEG or RGB vs grey storage does not hide
a copy):

* exact: SHA-256 of the pixel array and its shape; equal hashes = the same image;
* near (optional): a 256-bit difference hash (dHash, 17×16 grey thumbnail, one bit per
  horizontal neighbour comparison); two images whose hashes differ in at most
  ``max_hamming_bits`` bits are taken as one image re-encoded or resized.

Groups are the connected components of either relation (union-find), so a chain of copies is one
group. The converters keep each group in one split.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping

import numpy as np
from sonovlm.progress import progress

DHASH_SIZE = 16


def grey_pixels(path: str | os.PathLike) -> np.ndarray:
    """Decoded 8-bit grey pixels ``(rows, cols)`` of an image file (PIL's ITU-R 601 luma)."""
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("L"))


def pixel_hash(grey: np.ndarray) -> str:
    """SHA-256 (hex) of a grey image's shape and pixels."""
    digest = hashlib.sha256(repr(grey.shape).encode())
    digest.update(np.ascontiguousarray(grey).tobytes())
    return digest.hexdigest()


def difference_hash(grey: np.ndarray, size: int = DHASH_SIZE) -> np.ndarray:
    """dHash bits ``(size * size,)`` bool: is each thumbnail pixel brighter than its right neighbour."""
    from PIL import Image

    thumb = np.asarray(
        Image.fromarray(grey).resize((size + 1, size), Image.Resampling.BILINEAR), dtype=np.int16
    )
    return (thumb[:, 1:] > thumb[:, :-1]).ravel()


def find_duplicates(
    images: Mapping[str, str | os.PathLike], max_hamming_bits: int | None = 6
) -> list[list[str]]:
    """Groups of names whose images are the same picture.

    Args:
        images: ``name -> image path``.
        max_hamming_bits: near-duplicate threshold on the 256-bit dHash; ``None`` = exact only.

    Returns:
        Groups with two or more names, each sorted, sorted by their first name.
    """
    names = sorted(images)
    parent = list(range(len(names)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)

    first_with_hash: dict[str, int] = {}
    bits = []
    for i, name in enumerate(progress(names, "duplicate hashing", unit="image")):
        grey = grey_pixels(images[name])
        h = pixel_hash(grey)
        if h in first_with_hash:
            union(first_with_hash[h], i)
        else:
            first_with_hash[h] = i
        if max_hamming_bits is not None:
            bits.append(difference_hash(grey))
    if max_hamming_bits is not None and len(names) > 1:
        packed = np.stack(bits)
        for i in range(len(names) - 1):
            distance = np.count_nonzero(packed[i + 1 :] != packed[i], axis=1)
            for j in np.nonzero(distance <= max_hamming_bits)[0]:
                union(i, i + 1 + int(j))
    groups: dict[int, list[str]] = {}
    for i, name in enumerate(names):
        groups.setdefault(find(i), []).append(name)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])
