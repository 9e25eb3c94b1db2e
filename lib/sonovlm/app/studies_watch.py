"""Watch the studies folder for images and labels added or removed outside the server.

This is MONAI Label's ``auto_reload`` (``MONAI_LABEL_DATASTORE_AUTO_RELOAD``, on by default): a
file copied into the studies folder while the server runs becomes an image of the datastore. It
replaces the local datastore's own watcher, which costs each click time:

* MONAI Label 0.8.5 watches the whole studies tree, recursively, for every kind of inotify event,
  opens and closes included. It matches each event's path against every pattern, which is one per
  extension for each of the image folder and the label folders, on a watchdog thread that holds
  the GIL.
* A click on this server opens the index lock twice and writes its result under
  ``STUDIES/.sonovlm/results/``: about 12 events a click, none of them about an image.
* Measured on a 2-core CPU, vit-b16, a later click through HTTP: 39.3 ms p50 with that watcher,
  15.4 ms without it (``benchmarks.bench_interactive``).

:class:`StudiesWatcher` watches less and asks for less:

* the studies folder itself, not recursively, so ``.sonovlm/`` is not watched;
* ``labels/``, recursively, for the label folders of every tag;
* only creations, deletions and moves. The inotify mask then asks the kernel for no open, close
  or modify events, so opening the lock or writing a file in place reaches no Python code;
* a name counts when its basename matches one of the datastore's extension patterns.

The index file needs no watching: :meth:`~sonovlm.app.datastore.SonoDatastore.reload_index`
re-reads it whenever its size or time stamp changed, before each use.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from collections.abc import Callable, Sequence

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

logger = logging.getLogger(__name__)

#: The events asked for; the inotify mask is built from them (no open, close or modify events).
WATCHED_EVENTS: tuple[type[FileSystemEvent], ...] = (
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
)


def on_mount(path: str) -> bool:
    """Whether ``path`` lies under a mount point other than ``/`` (MONAI Label's rule for a
    polling watcher: inotify sees no change made by another machine on a network share)."""
    path = os.path.abspath(path)
    while path != os.path.dirname(path):
        if os.path.ismount(path):
            return True
        path = os.path.dirname(path)
    return False


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: StudiesWatcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = [event.src_path, getattr(event, "dest_path", "") or ""]
        if any(self.watcher.concerns(os.fsdecode(p)) for p in paths if p):
            logger.debug("Studies folder changed: %s", event)
            try:
                self.watcher.on_change()
            except Exception:  # the watcher must outlive one failed refresh
                logger.exception("Refreshing the datastore after %s failed", event)


class StudiesWatcher:
    """Call ``on_change()`` when an image or label file appears, disappears or is renamed.

    Args:
        image_dir: the folder of the images (the studies folder); watched without its sub-folders.
        labels_dir: the folder of the label folders (``labels/``); watched with its sub-folders,
            also when it is created later.
        extensions: the datastore's file patterns (``*.dcm``, ``*.nii.gz``, ...), matched
            against the basename, case-insensitively.
        on_change: what to run (the datastore's reconciliation), on the watcher's thread.
        polling: poll the folders instead of inotify; ``None`` polls on a mount (see
            :func:`on_mount`).
    """

    def __init__(
        self,
        image_dir: str,
        labels_dir: str,
        extensions: Sequence[str],
        on_change: Callable[[], None],
        polling: bool | None = None,
    ) -> None:
        self.image_dir = os.path.realpath(image_dir)
        self.labels_dir = os.path.realpath(labels_dir)
        self.patterns = tuple(p.lower() for p in extensions)
        self.on_change = on_change
        self.polling = on_mount(self.image_dir) if polling is None else polling
        self._observer: Observer | PollingObserver | None = None

    def concerns(self, path: str) -> bool:
        """Whether a change of ``path`` can change the datastore: an image file in the studies
        folder, a label file under ``labels/``, or ``labels/`` or one of its folders itself."""
        path = os.path.realpath(path)
        parent, name = os.path.split(path)
        if path == self.labels_dir or parent == self.labels_dir:
            return True  # labels/ itself, or the folder of a label tag
        if parent != self.image_dir and not parent.startswith(self.labels_dir + os.sep):
            return False
        name = name.lower()
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.patterns)

    def start(self) -> None:
        observer = PollingObserver() if self.polling else Observer()
        handler = _Handler(self)
        event_filter = list(WATCHED_EVENTS)
        observer.schedule(handler, self.image_dir, recursive=False, event_filter=event_filter)
        os.makedirs(self.labels_dir, exist_ok=True)
        observer.schedule(handler, self.labels_dir, recursive=True, event_filter=event_filter)
        observer.daemon = True
        observer.start()
        self._observer = observer
        logger.info(
            "Watching %s and %s for images and labels (%s)",
            self.image_dir,
            self.labels_dir,
            "polling" if self.polling else "inotify",
        )

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
