"""Decoded images kept in memory so repeat requests do not decode the file again.

Keys are ``(real path, inode, modification time in ns, size)``: a file replaced or rewritten in
place is decoded again, and an uploaded temporary file never matches a datastore image. A cine's
frames are decoded once, together, and every frame request of that file hits the same entry.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .atomic import file_signature

#: A frame cache entry's key.
CacheKey = tuple[str, int, int, int]


def image_key(path: str | os.PathLike) -> CacheKey | None:
    """Cache key of an image file, or ``None`` when it does not exist."""
    real = os.path.realpath(path)
    signature = file_signature(real)
    return None if signature is None else (real, *signature)


class ImageCache:
    """LRU of decoded images, bounded by count and bytes.

    Args:
        loader: ``path -> UltrasoundImage`` (normally :func:`sonovlm.io.load_image`).
        max_items: images kept at most.
        max_bytes: pixel bytes kept at most (a long cine alone may exceed it: it is then not kept).
        cache_under: only files inside this folder are kept (the studies folder: uploads are
            temporary files that would never be asked for again).
    """

    def __init__(
        self,
        loader: Callable[[str], Any] | None = None,
        max_items: int = 16,
        max_bytes: int = 512 * 1024 * 1024,
        cache_under: str | os.PathLike | None = None,
    ) -> None:
        if loader is None:
            from ..io import load_image

            loader = load_image
        self._loader = loader
        self._root = os.path.realpath(cache_under) + os.sep if cache_under else None
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._entries: OrderedDict[CacheKey, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, path: str | os.PathLike) -> Any:
        """The decoded image at ``path`` (decoding it on a miss); loader errors pass through."""
        return self.lookup(path)[0]

    def lookup(self, path: str | os.PathLike) -> tuple[Any, bool]:
        """``(image, decoded)``: the image at ``path`` and whether it was decoded now (a miss)."""
        key = image_key(path)
        if key is not None and self._root is not None and not key[0].startswith(self._root):
            key = None
        if key is not None:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    self._entries.move_to_end(key)
                    self.hits += 1
                    return entry[0], False
        image = self._loader(os.fspath(path))
        with self._lock:
            self.misses += 1
        if key is not None:
            self._put(key, image)
        return image, True

    def _put(self, key: CacheKey, image: Any) -> None:
        size = int(getattr(getattr(image, "frames", None), "nbytes", 0))
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._entries:
                return
            for stale in [k for k in self._entries if k[0] == key[0]]:  # the file changed
                self._bytes -= self._entries.pop(stale)[1]
            self._entries[key] = (image, size)
            self._bytes += size
            while len(self._entries) > self.max_items or self._bytes > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "images": len(self._entries),
                "bytes": self._bytes,
                "hits": self.hits,
                "misses": self.misses,
            }
