"""The PACS datastore's local index and outbox (``index.json`` and ``outbox/`` in its cache folder).

:class:`PacsIndex` is one JSON document, written atomically and re-read under a process-wide and
thread-wide lock before every change (another server process may share the cache)::

    {"version": 1,
     "images": {SOP UID: {study, series, sop_class, modality, frames, body_part}},  # the listing
     "labels": {tag: {SOP UID: label record}},     # final labels: SEGs in the PACS or in the outbox
     "image_info": {SOP UID: {organ, pathology, comment}},    # what clients set, kept locally
     "segs": {SEG UID: header | {"ignored": reason}}}          # SEG headers read, never re-read

A damaged file is moved aside (``index.json.broken-TIME``) and the index starts empty: the labels
still waiting in the outbox are registered again (:meth:`Outbox.recover`) and the next listing
brings back the rest from the PACS.

:class:`Outbox` holds the DICOM SEGs written before they are sent (STOW-RS): a SEG the PACS did
not take because it was away stays there and is sent again at every listing
(:meth:`Outbox.flush`); one it refused moves to ``outbox/rejected/``.

Label records keep only :data:`LABEL_INFO_KEYS` and :data:`INTERNAL_KEYS`: no patient attribute
of the PACS ever enters the index. Also here: where the cache is (:func:`dicomweb_cache_dir`), a
saved label's record (:func:`pacs_label_record`) and history (:func:`pacs_history`), and the
conversions between a checked label and a DICOM SEG (:func:`seg_of_label`, :func:`label_from_seg`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import requests
from filelock import FileLock
from monailabel.interfaces.datastore import DefaultLabelTag

from ..errors import SonoInputError
from .atomic import file_signature, read_json, write_bytes_atomic, write_json_atomic
from .label_store import LabelSubmission, history_after, label_measurements
from .labels import CheckedLabel
from .pacs_client import PacsClient, dicom_datetime_now, is_outage, iso_from_dicom, pacs_error

logger = logging.getLogger(__name__)

#: Keys of a label's info that are kept (a whitelist: nothing else a client sends is stored).
LABEL_INFO_KEYS = (
    "organ",
    "pathology",
    "frame",
    "annotated_frames",
    "measurements",
    "saved_by",
    "saved_at",
    "client_id",
    "client_user",
    "model_version",
    "comment",
)

#: Request params copied into a label's record (cut to 200 characters), besides the shared fields.
CLIENT_KEYS = ("client_id", "client_user", "model_version", "comment")

#: Bookkeeping keys of a label record besides :data:`LABEL_INFO_KEYS`.
INTERNAL_KEYS = (
    "seg",
    "seg_series",
    "seg_study",
    "pacs",
    "outbox",
    "file",
    "file_seg",
    "history",
    "content_datetime",
)

#: Keys of a label record a client is not shown (:meth:`PacsIndex.label_info`).
HIDDEN_KEYS = ("outbox", "file", "file_seg", "content_datetime")

#: Keys of a replaced label kept in the next one's history (the SEG itself stays in the PACS).
HISTORY_KEYS = ("organ", "pathology", "saved_by", "saved_at", "seg", "pacs")

#: Entries of a label's history kept (newest last).
HISTORY_LIMIT = 20

#: ``(path, obj)`` writing ``obj`` as JSON to ``path`` atomically.
JsonWriter = Callable[[Path, Any], None]


def dicomweb_cache_dir(studies_url: str, conf: dict[str, str] | None = None) -> Path:
    """Where the datastore of ``studies_url`` keeps its cache (``--conf dicomweb_cache``, else
    ``MONAI_LABEL_DICOMWEB_CACHE_PATH`` or ``~/.cache/sonovlm/dicomweb``, then a hash of the URL)."""
    conf = conf or {}
    if conf.get("dicomweb_cache"):
        return Path(conf["dicomweb_cache"]).expanduser()
    from monailabel.config import settings

    base = (settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or "").strip()
    digest = hashlib.sha256(studies_url.rstrip("/").encode("utf-8")).hexdigest()[:16]
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "sonovlm" / "dicomweb"
    return root / digest


def label_from_seg(seg: Any, n_frames: int, rows_cols: tuple[int, int]) -> CheckedLabel:
    """The local canonical label of a SEG read from the PACS (:class:`sonovlm.dicomseg.SegLabel`) of
    an ``n_frames`` image of ``rows_cols`` pixels; :class:`SonoInputError` when it does not fit."""
    from ..organs import ORGAN_LABELS

    frames = seg.frames
    for frame, mask in seg.masks.items():
        if mask.shape != tuple(rows_cols):
            raise SonoInputError(
                "DICOM SEG", f"frame size {mask.shape} does not match the image's {rows_cols}"
            )
        if not 0 <= frame < n_frames:
            raise SonoInputError("DICOM SEG", f"references frame {frame + 1} of a {n_frames}-frame image")
    if seg.organ is None:
        raise SonoInputError("DICOM SEG", "its segment is coded for no organ SonoVLM knows")
    value = ORGAN_LABELS[seg.organ]
    if n_frames > 1 and len(frames) > 1:
        volume = np.zeros((n_frames, *rows_cols), dtype=np.uint8)
        for frame, mask in seg.masks.items():
            volume[frame] = np.where(mask != 0, value, 0)
        return CheckedLabel(volume, seg.organ, seg.pathology, None, frames)
    frame = frames[0]
    mask = np.where(seg.masks[frame] != 0, value, 0).astype(np.uint8)
    return CheckedLabel(mask, seg.organ, seg.pathology, frame, [frame])


def seg_of_label(
    image_path: str, label: CheckedLabel, record: dict[str, Any]
) -> tuple[bytes, dict[str, str]]:
    """The DICOM SEG of a checked label of the image at ``image_path`` (Part 10 bytes) and its UIDs
    (``seg``, ``seg_series``, ``seg_study``). ``record`` gives ``saved_by`` (the content creator),
    ``content_datetime`` (DICOM form) and ``measurements``. :class:`SonoInputError` when the image
    cannot be a SEG's source."""
    from io import BytesIO

    from ..dicomseg import segmentation_to_dicom_seg

    masks = (
        {f: label.mask[f] for f in label.annotated_frames}
        if label.is_volume
        else {label.frame or 0: label.mask}
    )
    seg = segmentation_to_dicom_seg(
        image_path,
        masks,
        label.organ,
        pathology=label.pathology,
        measurements=record.get("measurements"),
        content_creator=record["saved_by"],
    )
    seg.ContentDate, seg.ContentTime = record["content_datetime"][:8], record["content_datetime"][8:]
    buffer = BytesIO()
    seg.save_as(buffer, write_like_original=False)
    fields = {
        "seg": str(seg.SOPInstanceUID),
        "seg_series": str(seg.SeriesInstanceUID),
        "seg_study": str(seg.StudyInstanceUID),
    }
    return buffer.getvalue(), fields


def pacs_label_record(submission: LabelSubmission) -> dict[str, Any]:
    """The record of a label saved here, before it is stored: the shared fields
    (:func:`sonovlm.app.label_store.label_record`), ``content_datetime`` (DICOM form, the SEG's
    Content Date/Time), ``measurements`` (of a one-frame label) and :data:`CLIENT_KEYS` sent."""
    record: dict[str, Any] = {
        **submission.record,
        "content_datetime": dicom_datetime_now(),
        "measurements": label_measurements(submission.image, submission.label) or {},
    }
    for key in CLIENT_KEYS:
        if submission.merged.get(key) not in (None, ""):
            record[key] = str(submission.merged[key])[:200]
    return record


def pacs_history(previous: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The label history after ``previous`` is replaced (newest last, at most 20 entries)."""
    return history_after(previous, keys=HISTORY_KEYS, limit=HISTORY_LIMIT)


class PacsIndex:
    """``index.json`` of a PACS datastore's cache (see the module notes).

    Args:
        path: the index file.
        outbox: the SEGs not sent yet, registered again when the file was damaged.
        write_json: writes the document (atomically); the datastore passes its own so that its
            module decides how its files are written.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        outbox: Outbox | None = None,
        write_json: JsonWriter = write_json_atomic,
    ) -> None:
        self.path = Path(path)
        self.outbox = outbox
        self._write_json = write_json
        self._file_lock = FileLock(str(self.path.parent / ".lock"))
        self._mutex = threading.RLock()
        self._signature: tuple[int, int, int] | None = None
        self.data: dict[str, Any] = self.empty()
        #: ``time.monotonic()`` of the last listing taken in this process (0: none, list again).
        self.listed_at = 0.0

    @staticmethod
    def empty() -> dict[str, Any]:
        return {"version": 1, "images": {}, "labels": {}, "image_info": {}, "segs": {}}

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Process-wide (file lock) and thread-wide exclusion; re-entrant for the holding thread."""
        with self._mutex, self._file_lock:
            yield

    @contextmanager
    def fresh(self) -> Iterator[PacsIndex]:
        """Under the lock, re-read (``with index.fresh(): ...``)."""
        with self.locked():
            self.read()
            yield self

    @contextmanager
    def change(self) -> Iterator[PacsIndex]:
        """Under the lock, re-read; written when the block ends without an exception."""
        with self.fresh():
            yield self
            self.write()

    def read(self) -> bool:
        """Re-read the file when another writer changed it (call under :meth:`locked`).

        Returns ``True`` when it was damaged: moved aside, and the index holds only the labels
        waiting in the outbox now (the next listing brings back the rest).
        """
        signature = file_signature(self.path)
        if signature is None or signature == self._signature:
            return False
        try:
            data = read_json(self.path, default=None)
            if not isinstance(data, dict) or not isinstance(data.get("images"), dict):
                raise ValueError("not a SonoVLM DICOMweb index")
        except ValueError as exc:
            aside = self.path.with_name(f"{self.path.name}.broken-{int(time.time())}")
            os.replace(self.path, aside)
            logger.error(
                "DICOMweb index unreadable (%s); kept as %s, rebuilding from the PACS", exc, aside.name
            )
            self.data = self.empty()
            self._signature = None
            self.listed_at = 0.0
            if self.outbox is not None:
                self.outbox.recover(self)
            return True
        index = self.empty()
        index.update(data)
        self.data = index
        self._signature = signature
        return False

    def write(self) -> None:
        """Write the document (call under :meth:`locked`); ``OSError`` when the disk refuses."""
        self._write_json(self.path, self.data)
        self._signature = file_signature(self.path)

    # -- views -------------------------------------------------------------------------------------

    @property
    def images(self) -> dict[str, dict[str, Any]]:
        """The last listing: ``{SOP UID: entry}``."""
        return self.data["images"]

    @property
    def image_info(self) -> dict[str, dict[str, Any]]:
        return self.data["image_info"]

    @property
    def label_tags(self) -> dict[str, dict[str, dict[str, Any]]]:
        return self.data["labels"]

    def labels(self, tag: str) -> dict[str, dict[str, Any]]:
        """The label records of ``tag`` (a fresh empty dict when there are none: read only)."""
        return self.data["labels"].get(tag, {})

    def finals(self) -> dict[str, dict[str, Any]]:
        """The final label records, created when missing (to change them)."""
        return self.data["labels"].setdefault(DefaultLabelTag.FINAL.value, {})

    def label_info(self, image_id: str, tag: str) -> dict[str, Any] | None:
        """The info a client is shown of a label record (``None`` when there is none)."""
        record = self.labels(tag).get(image_id)
        if record is None:
            return None
        return {k: v for k, v in record.items() if k not in HIDDEN_KEYS}

    @staticmethod
    def kept(record: dict[str, Any]) -> dict[str, Any]:
        """``record`` with only the keys an index keeps (see the module notes)."""
        return {k: v for k, v in record.items() if k in LABEL_INFO_KEYS or k in INTERNAL_KEYS}

    def put_label(self, tag: str, image_id: str, record: dict[str, Any]) -> None:
        """Make ``record`` the ``tag`` label of ``image_id`` and write the index (call under the
        lock; re-read first); the record it replaces goes to ``record["history"]``. ``OSError``
        when the write fails: the previous record is back in memory."""
        self.read()
        records = self.label_tags.setdefault(tag, {})
        previous = records.get(image_id)
        record["history"] = pacs_history(previous)
        records[image_id] = self.kept(record)
        try:
            self.write()
        except OSError:
            if previous is None:
                records.pop(image_id, None)
            else:
                records[image_id] = previous
            raise

    # -- the listing and the SEGs in the PACS ------------------------------------------------------

    def add_stored_seg(
        self, image_id: str, label: CheckedLabel, content_datetime: str, fields: dict[str, str]
    ) -> None:
        """Remember the header of a SEG this server stored (so the next listing need not read it)
        and write the index; ``fields`` as :func:`seg_of_label` gives them. Takes the lock."""
        with self.change():
            self.data["segs"][fields["seg"]] = {
                "source": image_id,
                "organ": label.organ,
                "pathology": label.pathology,
                "frames": label.annotated_frames,
                "automatic": False,
                "content_datetime": content_datetime,
                "study": fields["seg_study"],
                "series": fields["seg_series"],
            }

    def merge_listing(
        self, images: dict[str, dict[str, Any]], segs: dict[str, dict[str, Any]], client: PacsClient
    ) -> None:
        """Take a new listing (call under the lock): ``images`` as listed, and ``segs`` (``{SEG UID:
        {study, series, ...}}``) whose headers not seen before are read through ``client``. The
        newest manual SEG of each listed image becomes its final label, unless a label saved here
        is newer; a final label whose SEG was deleted in the PACS goes (an older SEG takes its place)."""
        from ..dicomseg.reader import read_dicom_seg_header

        self.data["images"] = images
        known = self.data["segs"]
        for seg_uid, where in segs.items():
            if seg_uid in known:
                continue
            try:
                dataset = client.instance_header(where["study"], where["series"], seg_uid)
                header = read_dicom_seg_header(dataset)
            except (requests.RequestException, ValueError, KeyError, SonoInputError) as exc:
                logger.warning("SEG %s ignored: %s", seg_uid, exc)
                known[seg_uid] = {"ignored": type(exc).__name__}
                continue
            known[seg_uid] = {**header, "study": where["study"], "series": where["series"]}
        for name in [uid for uid in known if uid not in segs and not known[uid].get("ignored")]:
            known.pop(name)  # deleted in the PACS
        finals = self.finals()
        newest: dict[str, dict[str, Any]] = {}
        for seg_uid, header in known.items():
            source = header.get("source")
            if header.get("ignored") or header.get("automatic") or source not in images:
                continue
            if source not in newest or header["content_datetime"] > newest[source]["content_datetime"]:
                newest[source] = {**header, "seg": seg_uid}
        for source, record in list(finals.items()):
            if record.get("pacs") == "stored" and record.get("seg") not in known:
                finals.pop(source)  # its SEG was deleted in the PACS: fall back to an older one, if any
                if source in newest:
                    finals[source] = self.record_from_header(newest[source], previous=None)
        for source, header in newest.items():
            current = finals.get(source)
            if current and current.get("seg") == header["seg"]:
                continue
            if current and current.get("content_datetime", "") >= header["content_datetime"]:
                continue  # saved here later (or pending) than anything in the PACS
            finals[source] = self.record_from_header(header, previous=current)

    def record_from_header(self, header: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
        """The final label record of a SEG header (:func:`sonovlm.dicomseg.reader.read_dicom_seg_header`
        plus ``seg``, ``series``, ``study``); ``previous`` (the record it replaces) goes to its history."""
        frames = header.get("frames") or [0]
        n_frames = self.images.get(header["source"], {}).get("frames", 1)
        record: dict[str, Any] = {
            "organ": header.get("organ"),
            "pathology": header.get("pathology"),
            "measurements": header.get("measurements") or {},
            "saved_by": header.get("creator") or "unknown",
            "saved_at": iso_from_dicom(header["content_datetime"]),
            "content_datetime": header["content_datetime"],
            "seg": header["seg"],
            "seg_series": header.get("series"),
            "seg_study": header.get("study"),
            "pacs": "stored",
        }
        if n_frames > 1 and len(frames) > 1:
            record["annotated_frames"] = list(frames)
        else:
            record["frame"] = int(frames[0])
            record["annotated_frames"] = [int(frames[0])]
        record["history"] = pacs_history(previous)
        return record

    def record_from_seg(self, seg: Any, pacs: str) -> dict[str, Any]:
        """The final label record of a SEG read whole (:class:`sonovlm.dicomseg.SegLabel`)."""
        header = {
            "source": seg.source_sop_instance_uid,
            "organ": seg.organ,
            "pathology": seg.pathology,
            "measurements": seg.measurements,
            "creator": seg.content_creator,
            "content_datetime": seg.content_datetime,
            "frames": seg.frames,
            "seg": seg.seg_sop_instance_uid,
            "series": seg.seg_series_instance_uid,
            "study": seg.study_instance_uid,
        }
        record = self.record_from_header(header, previous=None)
        record["pacs"] = pacs
        return record


class Outbox:
    """SEGs written here before they are sent (``outbox/`` of the cache; see the module notes)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    def put(self, seg_uid: str, data: bytes) -> Path:
        """Keep a SEG's Part 10 bytes until the PACS took it; ``OSError`` when the disk refuses."""
        path = self.folder / f"{seg_uid}.dcm"
        write_bytes_atomic(path, data)
        return path

    def send(self, client: PacsClient, seg_uid: str, data: bytes) -> Path | None:
        """Keep a SEG here, then STOW it. ``None`` when the PACS took it (removed from here); its
        path here when the PACS is away (sent again by :meth:`flush`). ``OSError`` when the disk
        refuses (nothing sent); ``requests.RequestException`` when the PACS refused it (removed)."""
        path = self.put(seg_uid, data)
        try:
            client.store_bytes(data)
        except requests.RequestException as exc:
            if is_outage(exc):
                logger.warning(
                    "PACS %s did not take SEG %s (%s); kept in the outbox",
                    client.base_url,
                    seg_uid,
                    type(exc).__name__,
                )
                return path
            path.unlink()
            raise
        path.unlink()
        return None

    def pending(self) -> list[Path]:
        return sorted(self.folder.glob("*.dcm"))

    def recover(self, index: PacsIndex) -> None:
        """Register again the labels whose SEG waits here and write the index (after the index was
        lost; call under its lock)."""
        from ..dicomseg import read_dicom_seg

        for path in self.pending():
            try:
                seg = read_dicom_seg(path)
            except SonoInputError as exc:
                logger.error("Outbox file %s unreadable, left in place: %s", path.name, exc)
                continue
            record = index.record_from_seg(seg, pacs="pending")
            record["outbox"] = path.name
            index.finals()[seg.source_sop_instance_uid] = record
        index.write()

    def flush(self, client: PacsClient, index: PacsIndex) -> None:
        """Send the SEGs that could not be stored before; keep each until the PACS accepted it.

        Stops at the first that finds the PACS away; one it refuses moves to ``rejected/``
        (sending it again would not help) and its label says ``"pacs": "rejected"``.
        """
        for path in self.pending():
            state = "stored"
            try:
                client.store_bytes(path.read_bytes())
            except requests.RequestException as exc:
                if is_outage(exc):
                    logger.warning("Pending SEG %s still not stored: %s", path.name, type(exc).__name__)
                    return
                state = "rejected"
                logger.error(
                    "The PACS refused pending SEG %s: %s", path.name, pacs_error(client.base_url, exc).detail
                )
            with index.change():
                for record in index.labels(DefaultLabelTag.FINAL.value).values():
                    if record.get("outbox") == path.name:
                        record["pacs"] = state
                        record.pop("outbox", None)
            if state == "stored":
                path.unlink()
                logger.info("Pending SEG %s stored in the PACS", path.name)
            else:
                rejected = path.parent / "rejected"
                rejected.mkdir(exist_ok=True)
                os.replace(path, rejected / path.name)
