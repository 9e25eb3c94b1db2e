"""The studies folder as MONAI Label's local datastore, kept whole.

Changes to MONAI Label 0.8.5's :class:`LocalDatastore`:

* Ultrasound formats are listed (``*.dcm`` and the others of :data:`DEFAULT_IMAGE_PATTERNS`)
  unless ``MONAI_LABEL_DATASTORE_FILE_EXT`` is set.
* The index ``datastore_v2.json`` is written atomically (temporary file + ``os.replace``) and re-read
  under its lock before every change; one lock object per datastore, so nested use cannot deadlock.
* A label is checked against its image *before* anything is written (MONAI Label writes first and
  calls ``on_save_label`` afterwards); a bad one is a 4xx and nothing stored changes. Labels are
  stored in one canonical form (:mod:`sonovlm.app.labels`), atomically; the previous final label
  moves to the label history; who saved a label and when is kept in its info.
* Unknown image ids are 404, not 500.
* Images and labels added or removed by hand are picked up by :mod:`.studies_watch`, which does
  not watch ``.sonovlm/`` or lock and index reads (MONAI Label's watcher cost every click ~24 ms).
* Organ and pathology per image come from labels, image info, then ``cases.csv``.

The check, the label's record (who, when, organ, frames), its history and the training lists are
the flow the PACS datastore shares (:class:`sonovlm.app.label_store.LabelStoreCore`).

App state that is not part of MONAI Label's index (label history, scores, results) lives in
``STUDIES/.sonovlm/``.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from filelock import FileLock
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore, LocalDatastoreModel
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.utils.others.generic import file_checksum

from ..errors import SonoInputError
from .atomic import file_signature, write_atomic, write_bytes_atomic
from .cases import CaseTable
from .compat import LocalDatastoreCompat
from .config import DEFAULT_IMAGE_PATTERNS
from .http import image_exists, input_errors_as_http, not_found, replace_requested
from .label_store import (
    Geometry,
    LabelStoreCore,
    LabelSubmission,
    disk_error,
    history_after,
    now_iso,
    who,
)
from .labels import label_extension, resolve_organ, resolve_pathology, write_label
from .studies_watch import StudiesWatcher

logger = logging.getLogger(__name__)

STATE_DIR = ".sonovlm"

#: ``(path) -> (frames, rows, cols, spacing_mm)`` of an image; the app passes its cached loader.
ImageGeometry = Callable[[str], tuple[int, int, int, tuple[float, float] | None]]


def image_patterns() -> list[str]:
    """File patterns listed as images: ``MONAI_LABEL_DATASTORE_FILE_EXT`` when set to something
    other than MONAI Label's default (``start_server`` exports the default to the environment
    whether or not it was set), else ours (ultrasound formats, DICOM first)."""
    from monailabel.config import Settings, settings

    configured = list(settings.MONAI_LABEL_DATASTORE_FILE_EXT)
    monai_default = list(Settings.model_fields["MONAI_LABEL_DATASTORE_FILE_EXT"].default)
    if os.environ.get("MONAI_LABEL_DATASTORE_FILE_EXT") and configured != monai_default:
        return configured
    return list(DEFAULT_IMAGE_PATTERNS)


def _default_geometry(path: str) -> tuple[int, int, int, tuple[float, float] | None]:
    from ..io import load_image

    image = load_image(path)
    return image.n_frames, image.height, image.width, image.spacing_mm


class SonoDatastore(LabelStoreCore, LocalDatastoreCompat, LocalDatastore):
    """Local datastore with atomic index writes and labels checked before they are stored
    (the label flow shared with the PACS datastore: :class:`~sonovlm.app.label_store.LabelStoreCore`).

    Args:
        studies: the studies folder.
        geometry: returns ``(frames, rows, cols, spacing_mm)`` of an image path (decoding it);
            raises :class:`SonoInputError` for a file that is not a readable image.
        auto_reload: watch the folder for images and labels added or removed by hand
            (:class:`~sonovlm.app.studies_watch.StudiesWatcher`, not MONAI Label's watcher).
        read_only: as for :class:`LocalDatastore`.
    """

    def __init__(
        self,
        studies: str,
        geometry: ImageGeometry | None = None,
        extensions: list[str] | None = None,
        auto_reload: bool = False,
        read_only: bool = False,
    ) -> None:
        # Set before LocalDatastore.__init__, which already reads the index through our overrides.
        self._index_lock = FileLock(os.path.join(studies, ".lock"))
        self._mutex = threading.RLock()
        self._index_signature: tuple[int, int, int] | None = None
        self._geometry = geometry or _default_geometry
        self.studies_dir = Path(studies)
        self.state_dir = self.studies_dir / STATE_DIR
        self.cases = CaseTable(studies)
        patterns = extensions or image_patterns()
        # MONAI Label's own watcher is left off: it costs every click (see .studies_watch).
        super().__init__(studies, extensions=patterns, auto_reload=False, read_only=read_only)
        self.watcher: StudiesWatcher | None = None
        if auto_reload:
            self.watcher = StudiesWatcher(
                self._datastore.image_path(), self._datastore.label_path(None), patterns, self.refresh
            )
            self.watcher.start()

    # -- the index: atomic, re-read under one lock -------------------------------------------------

    def _locked(self):
        """Process-wide (file lock) and thread-wide exclusion; re-entrant for the holding thread."""
        return _Both(self._mutex, self._index_lock)

    def reload_index(self, throw_exception: bool = False) -> None:
        """Re-read the index file when it changed on disk (MONAI Label's ``_init_from_datastore_file``)."""
        with self._locked():
            signature = file_signature(self._datastore_config_path)
            if signature is None or signature == self._index_signature:
                return
            try:
                with open(self._datastore_config_path, encoding="utf-8") as fh:
                    model = LocalDatastoreModel.model_validate_json(fh.read())
            except ValueError as exc:
                if not throw_exception:
                    # Damaged while running: keep it aside and write back the copy in memory (it
                    # still has the label info that the files alone cannot give).
                    aside = f"{self._datastore_config_path}.broken-{int(time.time())}"
                    os.replace(self._datastore_config_path, aside)
                    logger.error(
                        "Datastore index %s unreadable (%s); moved to %s and rewritten from memory",
                        self._datastore_config_path,
                        exc,
                        aside,
                    )
                    self.write_index()
                    return
                # Only a file written by something else can be broken (ours are atomic): keep it
                # for inspection and rebuild the index from the files on disk.
                aside = f"{self._datastore_config_path}.broken-{int(time.time())}"
                os.replace(self._datastore_config_path, aside)
                logger.error(
                    "Datastore index %s unreadable (%s); moved to %s and rebuilt",
                    self._datastore_config_path,
                    exc,
                    aside,
                )
                self._index_signature = None
                return
            model.base_path = self._datastore_path
            self._datastore = model
            self._index_signature = signature
            self._config_ts = os.stat(self._datastore_config_path).st_mtime

    def write_index(self, lock: bool = True) -> None:
        """Write the index atomically (MONAI Label's ``_update_datastore_file``)."""
        with self._locked():
            self._ignore_event_config = True
            payload = self._datastore.model_dump_json(exclude={"base_path"}, indent=2).encode("utf-8")
            write_bytes_atomic(self._datastore_config_path, payload)
            self._index_signature = file_signature(self._datastore_config_path)
            self._config_ts = os.stat(self._datastore_config_path).st_mtime

    def index_lock(self):
        """The index lock (for MONAI Label's reconciliation, run by :mod:`.compat`)."""
        return self._locked()

    def _object(self, image_id: str) -> ImageLabelModel:
        """The index entry of ``image_id`` (call under the lock after a re-read); 404 if unknown."""
        obj = self._datastore.objects.get(image_id)
        if obj is None:
            raise not_found(f"image {image_id!r} is not in the datastore")
        return obj

    def has_image(self, image_id: str) -> bool:
        with self._locked():
            self.reload_index()
            return image_id in self._datastore.objects

    # -- images ------------------------------------------------------------------------------------

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        """Add an uploaded image; 422 for a file that is not a readable image, 409 for an id the
        datastore has unless ``image_info`` (the request's params) holds ``"replace": true``.

        Replacing never loses what was stored: the previous file goes to
        ``.sonovlm/image_history/ID/``. When the new file's bytes differ from the old one's, the
        image's labels were drawn on another image: they move to the label history and the image
        has none; identical bytes keep them. 503 (nothing changed) when the disk refuses a write.
        """
        info = dict(image_info or {})
        replace = replace_requested(info)
        with input_errors_as_http():
            try:
                self._geometry(image_filename)
            except SonoInputError as exc:
                raise SonoInputError("uploaded file", exc.problem) from exc
        new_id, image_ext = self._to_id(os.path.basename(image_filename))
        image_id = image_id or new_id
        name = self._filename(image_id, image_ext)
        dest = Path(os.path.realpath(os.path.join(self._datastore.image_path(), name)))
        for key in ("replace", "label_info_file"):
            info.pop(key, None)
        info.update({"ts": int(time.time()), "name": name, "added_by": who(info), "added_at": now_iso()})
        with self._locked():
            self.reload_index()
            previous = self._datastore.objects.get(image_id)
            if (previous is not None or dest.exists()) and not replace:
                raise image_exists(image_id)  # a file not indexed yet counts as well
            undo, written = None, False
            try:
                if previous is None:
                    write_atomic(dest, lambda tmp: shutil.copyfile(image_filename, tmp))
                    labels: dict[str, DataModel] = {}
                    finish, written = None, True
                else:
                    labels, finish, undo = self._replace_image(image_id, previous, image_filename, dest, info)
                self._datastore.objects[image_id] = ImageLabelModel(
                    image=DataModel(info=info, ext=image_ext), labels=labels
                )
                self.write_index()
            except OSError as exc:
                if previous is None:
                    self._datastore.objects.pop(image_id, None)
                    if written:
                        dest.unlink(missing_ok=True)
                else:
                    self._datastore.objects[image_id] = previous
                    if undo is not None:
                        undo()
                raise HTTPException(
                    status_code=503,
                    detail=f"cannot store image {image_id!r} in {dest.parent}: {exc.strerror or exc}; "
                    "nothing was changed",
                ) from exc
            if finish is not None:
                finish()
        logger.info("%s image %s => %s", "Replaced" if previous else "Added", image_id, dest)
        return image_id

    def _replace_image(
        self, image_id: str, previous: ImageLabelModel, upload: str, dest: Path, info: dict[str, Any]
    ) -> tuple[dict[str, DataModel], Callable[[], None], Callable[[], None]]:
        """Put ``upload`` in place of the stored image (under the lock).

        Returns the labels kept, ``finish()`` to call once the index is written (removes the old
        file when its extension differs, and the labels not kept) and ``undo()`` for when it
        cannot be written (the old file back).

        The old file is kept in the image history first; ``info["replaced"]`` lists the earlier
        versions. Labels of another image's bytes are moved to the label history (see add_image).
        """
        old_path = Path(self._datastore.image_path()) / self._filename(image_id, previous.image.ext)
        same = old_path.exists() and file_checksum(str(old_path)) == file_checksum(upload)
        stamp = time.strftime("%Y%m%dT%H%M%S") + f"{time.time_ns() % 1_000_000_000:09d}"
        kept = self.state_dir / "image_history" / image_id / f"{stamp}{previous.image.ext}"
        history = list(previous.image.info.get("replaced", []))
        copies: list[Path] = []  # removed again if a later step fails
        try:
            if old_path.exists():
                kept.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(old_path, kept)
                except OSError:  # another file system, or no hard links
                    write_atomic(kept, lambda tmp: shutil.copy2(old_path, tmp))
                copies.append(kept)
                old_info = {k: v for k, v in previous.image.info.items() if k != "replaced"}
                history.append({"file": str(kept.relative_to(self.studies_dir)), **old_info})
            labels = dict(previous.labels)
            if not same:
                archived_labels = {}
                for tag in sorted(labels):
                    label_history, archived = self._archive_previous(image_id, tag, previous)
                    if archived is not None:  # its last entry: the label just archived
                        archived_labels[tag] = label_history
                        copies.append(archived)
                if history and archived_labels:
                    history[-1]["labels"] = archived_labels
                labels = {}
            write_atomic(dest, lambda tmp: shutil.copyfile(upload, tmp))
        except OSError:
            for path in copies:
                path.unlink(missing_ok=True)
            raise
        info["replaced"] = history

        def finish() -> None:  # after the index names the new file: old files out of the way
            if old_path.exists() and old_path.resolve() != dest:
                old_path.unlink()
            if not same:
                for tag, label in previous.labels.items():
                    label_dir = Path(self._datastore.label_path(tag))
                    (label_dir / self._filename(image_id, label.ext)).unlink(missing_ok=True)

        def undo() -> None:  # the index could not be written: the old file back in place
            try:
                if old_path.resolve() == dest and kept.exists():
                    shutil.copy2(kept, dest)
                elif old_path.resolve() != dest:
                    dest.unlink(missing_ok=True)
                for path in copies:
                    path.unlink(missing_ok=True)
            except OSError:
                logger.exception("Could not undo a failed replace of %s (old copy kept: %s)", image_id, kept)

        return labels, finish, undo

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> dict[str, Any]:
        """Merge ``info`` into the image's info; organ/pathology are checked (422 when unknown)."""
        info = dict(info)
        with input_errors_as_http():
            if "organ" in info:
                info["organ"] = resolve_organ(info["organ"], None)
            if "pathology" in info:
                info["pathology"] = resolve_pathology(info["pathology"])
        with self._locked():
            self.reload_index()
            obj = self._object(image_id)
            obj.image.info.update(info)
            self.write_index()
            return dict(obj.image.info)

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> dict[str, Any]:
        with self._locked():
            self.reload_index()
            label = self._datastore.label(label_id, label_tag)
            if label is None:
                raise not_found(f"no {label_tag!r} label for image {label_id!r}")
            label.info.update(info)
            self.write_index()
            return dict(label.info)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        with self._locked():
            super().remove_label(label_id, label_tag)

    def remove_image(self, image_id: str) -> None:
        with self._locked():
            self.reload_index()
            self._object(image_id)
            super().remove_image(image_id)

    # -- labels ------------------------------------------------------------------------------------

    def _label_image(self, image_path: str) -> Geometry:
        return Geometry(*self._geometry(image_path))

    def _store_label(self, submission: LabelSubmission) -> str:
        """Store a checked label (under the lock): the canonical form (PNG for one frame, NRRD for a
        whole cine) written atomically, the previous label of the same tag kept in
        ``.sonovlm/label_history/``; its info is the request's params with the label's record.
        503 (nothing changed) when the disk refuses a write. Returns the file written."""
        image_id, tag, checked = submission.image_id, submission.tag, submission.label
        with self._locked():
            self.reload_index()
            obj = self._object(image_id)
            label_dir = Path(self._datastore.label_path(tag))
            label_dir.mkdir(parents=True, exist_ok=True)
            ext = label_extension(checked)
            dest = label_dir / self._filename(image_id, ext)

            previous, archived, written = obj.labels.get(tag), None, False
            try:
                history, archived = self._archive_previous(image_id, tag, obj)
                spacing_mm = submission.image.spacing_mm
                write_atomic(dest, lambda tmp: write_label(tmp, checked, spacing_mm), suffix=ext)
                written = True
                ignored = ("label_info_file", "pathology", "frame")
                info = {k: v for k, v in submission.params.items() if k not in ignored}
                info.update(submission.record)
                info.update({"history": history, "ts": int(time.time()), "name": dest.name})
                obj.labels[tag] = DataModel(info=info, ext=ext)
                self.write_index()
            except OSError as exc:  # disk read-only or full: put back what was there, say so
                self._undo_save(obj, tag, previous, archived, restore_file=written)
                raise disk_error(tag, image_id, label_dir, exc, "nothing was changed") from exc
            if previous is not None and previous.ext != ext:
                (label_dir / self._filename(image_id, previous.ext)).unlink(missing_ok=True)
        return str(dest)

    def _archive_previous(
        self, image_id: str, label_tag: str, obj: ImageLabelModel
    ) -> tuple[list[dict[str, Any]], Path | None]:
        """Copy the current label of ``label_tag`` to the history folder (a hard link where the file
        system allows); return the new history and the copy. The label itself stays in place until
        the new one replaces it, so a failed save loses nothing."""
        previous = obj.labels.get(label_tag)
        if previous is None:
            return [], None
        src = Path(self._datastore.label_path(label_tag)) / self._filename(image_id, previous.ext)
        if not src.exists():
            return list(previous.info.get("history", [])), None
        stamp = time.strftime("%Y%m%dT%H%M%S") + f"{time.time_ns() % 1_000_000_000:09d}"
        dest = self.state_dir / "label_history" / label_tag / image_id / f"{stamp}{previous.ext}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dest)
        except OSError:  # another file system, or no hard links
            write_atomic(dest, lambda tmp: shutil.copy2(src, tmp))
        return history_after(previous.info, file=str(dest.relative_to(self.studies_dir))), dest

    def _undo_save(
        self,
        obj: ImageLabelModel,
        label_tag: str,
        previous: DataModel | None,
        archived: Path | None,
        restore_file: bool,
    ) -> None:
        """After a failed save: the previous index entry back in memory, the previous label file
        back in place when the new one had replaced it, the history copy removed otherwise."""
        if previous is None:
            obj.labels.pop(label_tag, None)
        else:
            obj.labels[label_tag] = previous
        if archived is None:
            return
        try:
            if restore_file and previous is not None:  # archived.parent.name is the image id
                label_dir = Path(self._datastore.label_path(label_tag))
                shutil.move(archived, label_dir / self._filename(archived.parent.name, previous.ext))
            else:
                archived.unlink(missing_ok=True)
        except OSError:
            logger.exception("Could not undo a failed %s label save (copy kept: %s)", label_tag, archived)

    # -- organ, pathology and training lists (LabelStoreCore) --------------------------------------

    def _image_ids(self) -> list[str]:
        with self._locked():
            self.reload_index()
            return sorted(self._datastore.objects)

    def _final_info(self, image_id: str) -> dict[str, Any] | None:
        obj = self._datastore.objects.get(image_id)
        final = obj.labels.get(DefaultLabelTag.FINAL) if obj is not None else None
        return final.info if final is not None else None

    def _recorded_infos(self, image_id: str) -> list[dict[str, Any]]:
        obj = self._datastore.objects.get(image_id)
        if obj is None:
            return []
        return [self._final_info(image_id) or {}, obj.image.info]

    def _recorded_default(self, image_id: str, key: str) -> str | None:
        """From ``cases.csv``."""
        case = self.cases.get(image_id)
        return getattr(case, key) if case else None

    def status(self) -> dict[str, Any]:
        with self._locked():
            self.reload_index()
            return super().status()


class _Both:
    """Enter two context managers in order, leave them in reverse."""

    def __init__(self, first, second) -> None:
        self._first, self._second = first, second

    def __enter__(self) -> None:
        self._first.__enter__()
        try:
            self._second.__enter__()
        except BaseException:
            self._first.__exit__(None, None, None)
            raise

    def __exit__(self, *exc) -> None:
        try:
            self._second.__exit__(*exc)
        finally:
            self._first.__exit__(*exc)
