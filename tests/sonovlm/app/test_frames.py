"""Decoded images cached per (file, modification) so repeat requests do not decode again."""

from __future__ import annotations

import os

from sonovlm.app.frames import ImageCache


def test_hits_misses_and_invalidation(tmp_path):
    decoded: list[str] = []

    def loader(path):
        decoded.append(path)
        return object()

    studies = tmp_path / "studies"
    studies.mkdir()
    image = studies / "a.dcm"
    image.write_bytes(b"one")
    cache = ImageCache(loader, cache_under=studies)
    first = cache.get(image)
    assert cache.get(image) is first and len(decoded) == 1
    image.write_bytes(b"changed!")  # new size and mtime
    os.utime(image, ns=(1, 1))
    assert cache.get(image) is not first and len(decoded) == 2

    upload = tmp_path / "upload.dcm"
    upload.write_bytes(b"x")
    cache.get(upload)
    cache.get(upload)
    assert len(decoded) == 4  # files outside the studies folder are not kept
    assert cache.stats()["images"] == 1 and cache.stats()["hits"] == 1


def test_bounded_by_count(tmp_path):
    cache = ImageCache(lambda p: object(), max_items=2, cache_under=tmp_path)
    paths = []
    for n in range(3):
        path = tmp_path / f"{n}.png"
        path.write_bytes(bytes([n]))
        paths.append(path)
        cache.get(path)
    assert cache.stats()["images"] == 2
