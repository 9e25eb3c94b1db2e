"""A PACS over DICOMweb as the server's datastore: ultrasound in, DICOM SEG labels back.

``--studies http://HOST:PORT/dicom-web`` makes the app build :class:`DICOMwebUltrasoundDatastore`
through :func:`build_datastore` instead of MONAI Label 0.8.5's ``DICOMWebDatastore``, which does
not fit ultrasound (see the reference notes). What changes:

* **What is listed**: instances of the series matching ``dicomweb_filter`` (default
  ``{"Modality": "US"}``; MONAI Label's default is CT). Image ids are SOP Instance UIDs: an
  ultrasound series holds many separate images and cine loops, each annotated on its own.
* **Nothing is downloaded at start**: no dcmqi (MONAI Label fetches it from the internet when it
  builds its DICOMweb datastore, so the server never starts offline) and no query until a request
  needs the list. Building the datastore only reads the local index.
* **Images as stored**: WADO-RS with ``transfer-syntax=*`` and the instance's bytes written to the
  cache unchanged, then read by :func:`sonovlm.io.load_image`, so ultrasound calibration
  (SequenceOfUltrasoundRegions) and compression survive. MONAI Label converts to NIfTI and loses
  both.
* **Fresh lists**: the listing is re-queried after ``dicomweb_refresh_s`` seconds (default 30;
  MONAI Label caches it for two hours) and the labelled/unlabelled lists change the moment a label
  is saved.
* **No patient identity**: PatientID, patient names and the other patient attributes never enter
  image or label info, replies or log lines; only UIDs, the modality, the frame count and the
  SonoVLM fields (organ, pathology, who saved a label and when) do.
* **Labels go back as DICOM SEG** (:mod:`sonovlm.dicomseg`, STOW-RS), checked first exactly like
  the local datastore checks them (:func:`sonovlm.app.labels.check_label`). A label is written to
  a local outbox before it is sent; when the PACS cannot be reached it stays there, counts as
  labelled, is sent again at the next refresh, and its info says ``"pacs": "pending"``.
* **Labels from the PACS** (manual SEGs referencing a listed image, the newest per image) are read
  with highdicom for training (:func:`sonovlm.dicomseg.read_dicom_seg`).
* **A damaged index** (``index.json`` in the cache) is moved aside and rebuilt from the PACS and
  the outbox; the server keeps running.

The cache (``dicomweb_cache``, default ``~/.cache/sonovlm/dicomweb/<hash of the URL>``) holds
``images/`` (instances as retrieved), ``labels/<tag>/`` (labels in the local datastore's canonical
form, for training), ``outbox/`` (SEGs not yet stored), ``index.json`` and ``.sonovlm/`` (the
app's state: scores, results).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests
from fastapi import HTTPException
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag

from ..errors import SonoInputError
from .atomic import write_atomic, write_bytes_atomic, write_json_atomic
from .http import image_exists, input_errors_as_http, not_found, replace_requested
from .labels import (
    CheckedLabel,
    check_label,
    label_extension,
    label_frame_items,
    resolve_organ,
    resolve_pathology,
    write_label,
)
from .pacs_client import (
    PacsClient,
    connect,
    dicom_datetime_now,
    is_outage,
    pacs_error,
    pacs_unavailable,
)
from .pacs_index import LABEL_INFO_KEYS, Outbox, PacsIndex, pacs_history

__all__ = [
    "BODY_PART_ORGAN",
    "DEFAULT_SEARCH_FILTER",
    "IMAGE_INFO_KEYS",
    "LABEL_INFO_KEYS",
    "DICOMwebUltrasoundDatastore",
    "PacsClient",
    "build_datastore",
    "dicomweb_cache_dir",
    "is_outage",
    "pacs_error",
    "pacs_unavailable",
]

logger = logging.getLogger(__name__)

#: The app's own state folder inside the cache (same name as the local datastore's).
STATE_DIR = ".sonovlm"

#: The search filter MONAI Label would use is CT; ultrasound is what SonoVLM reads.
DEFAULT_SEARCH_FILTER: dict[str, str] = {"Modality": "US"}

#: An unknown image id re-lists the PACS only if the listing is older than this (seconds).
RELIST_UNKNOWN_S = 2.0

#: Keys of an image's info a client may set (PUT /datastore/image/info).
IMAGE_INFO_KEYS = ("organ", "pathology", "comment")

#: Body Part Examined values that tell the organ of an image nobody labelled yet.
BODY_PART_ORGAN = {"BREAST": "breast_lesion", "THYROID": "thyroid_nodule"}


def _iso_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _who(info: dict[str, Any]) -> str:
    for key in ("user", "username", "client_id"):
        if info.get(key):
            return str(info[key])
    return "anonymous"


def _write_json(path: Path, obj: Any) -> None:
    """The index's writer: this module's ``write_json_atomic``, looked up at each call."""
    write_json_atomic(path, obj)


# -- construction -------------------------------------------------------------------------------------


def dicomweb_cache_dir(studies_url: str, conf: dict[str, str] | None = None) -> Path:
    """Where the datastore of ``studies_url`` keeps its cache (``--conf dicomweb_cache`` or default)."""
    conf = conf or {}
    if conf.get("dicomweb_cache"):
        return Path(conf["dicomweb_cache"]).expanduser()
    from monailabel.config import settings

    base = (settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or "").strip()
    digest = hashlib.sha256(studies_url.rstrip("/").encode("utf-8")).hexdigest()[:16]
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "sonovlm" / "dicomweb"
    return root / digest


def build_datastore(studies_url: str, conf: dict[str, str] | None = None) -> DICOMwebUltrasoundDatastore:
    """The app's DICOMweb datastore for ``--studies URL``; no network access until a request.

    ``conf`` keys (all optional): ``dicomweb_cache`` (cache folder), ``dicomweb_refresh_s``
    (listing lifetime, default 30), ``dicomweb_filter`` (JSON QIDO filter for series, default
    ``{"Modality": "US"}``), ``dicomweb_timeout_s`` (per request, default 30). User name and
    password come from MONAI Label's ``MONAI_LABEL_DICOMWEB_USERNAME`` / ``_PASSWORD`` and the
    QIDO/WADO/STOW prefixes from its ``MONAI_LABEL_QIDO_PREFIX`` etc., as for its own datastore.

    Raises :class:`SonoInputError` for a bad ``conf`` value.
    """
    conf = conf or {}
    url = studies_url.rstrip("/").strip()
    try:
        refresh_s = float(conf.get("dicomweb_refresh_s", 30))
        timeout_s = float(conf.get("dicomweb_timeout_s", 30))
    except ValueError as exc:
        raise SonoInputError(
            "--conf dicomweb_refresh_s/dicomweb_timeout_s", f"expected seconds: {exc}"
        ) from None
    if refresh_s < 0 or timeout_s <= 0:
        raise SonoInputError("--conf dicomweb_refresh_s/dicomweb_timeout_s", "must be positive")
    search_filter = dict(DEFAULT_SEARCH_FILTER)
    if conf.get("dicomweb_filter"):
        try:
            search_filter = dict(json.loads(conf["dicomweb_filter"]))
        except (ValueError, TypeError) as exc:
            raise SonoInputError("--conf dicomweb_filter", f"expected a JSON object: {exc}") from None
    return DICOMwebUltrasoundDatastore(
        connect(url),
        dicomweb_cache_dir(url, conf),
        search_filter=search_filter,
        refresh_s=refresh_s,
        timeout_s=timeout_s,
    )


# -- the datastore ---------------------------------------------------------------------------------------


class DICOMwebUltrasoundDatastore(Datastore):
    """MONAI Label datastore over a DICOMweb PACS for ultrasound (see the module notes).

    Args:
        client: the PACS client (:class:`PacsClient`); its requests get ``timeout_s``.
        cache_dir: local cache folder (created).
        search_filter: QIDO filter of the series listed.
        refresh_s: how long a listing is used before the PACS is asked again.
        timeout_s: per-request timeout.
    """

    def __init__(
        self,
        client: PacsClient,
        cache_dir: str | os.PathLike,
        search_filter: dict[str, Any] | None = None,
        refresh_s: float = 30.0,
        timeout_s: float = 30.0,
    ) -> None:
        self._client = client
        self.url = client.base_url
        self.cache_dir = Path(cache_dir)
        self.state_dir = self.cache_dir / STATE_DIR
        self.search_filter = dict(search_filter or DEFAULT_SEARCH_FILTER)
        self.refresh_s = refresh_s
        self.timeout_s = timeout_s
        self._name = f"PACS {self.url}"
        self._description = "Ultrasound images of a DICOMweb PACS; labels stored back as DICOM SEG"
        for sub in ("images", "labels", "outbox", STATE_DIR):
            (self.cache_dir / sub).mkdir(parents=True, exist_ok=True)
        self._outbox = Outbox(self.cache_dir / "outbox")
        self._index = PacsIndex(self.cache_dir / "index.json", self._outbox, write_json=_write_json)
        self._pacs_error: str | None = None
        client.set_timeout(timeout_s)
        with self._index.locked():
            self._index.read()

    # -- listing -----------------------------------------------------------------------------------------

    def _refresh(self, force: bool = False) -> None:
        """Re-list images and labels when the listing is older than ``refresh_s`` (or ``force``).

        A PACS that cannot be reached leaves the last listing in place (logged once per outage).
        """
        index = self._index
        if not force and index.listed_at and time.monotonic() - index.listed_at < self.refresh_s:
            return
        try:
            images = self._client.list_instances(self.search_filter)
            segs = self._client.list_instances({"Modality": "SEG"})
        except (requests.RequestException, ValueError) as exc:
            if self._pacs_error is None:
                logger.warning(
                    "PACS %s unreachable (%s); using the last listing", self.url, type(exc).__name__
                )
            self._pacs_error = type(exc).__name__
            index.listed_at = time.monotonic()  # do not retry on every request
            return
        if self._pacs_error is not None:
            logger.info("PACS %s reachable again", self.url)
        self._pacs_error = None
        with index.locked():
            index.read()
            index.merge_listing(images, segs, self._client)
            index.write()
        index.listed_at = time.monotonic()
        self._outbox.flush(self._client, index)

    # -- images ------------------------------------------------------------------------------------------

    def _image_entry(self, image_id: str) -> dict[str, Any]:
        """The listing entry of ``image_id`` (re-listing once when unknown); 404 if not in the PACS."""
        self._refresh()
        with self._index.locked():
            self._index.read()
            entry = self._index.images.get(image_id)
        stale = time.monotonic() - self._index.listed_at > RELIST_UNKNOWN_S
        if entry is None and self._pacs_error is None and stale:
            self._refresh(force=True)  # it may have arrived in the PACS since the last listing
            entry = self._index.images.get(image_id)
        if entry is None:
            raise not_found(f"image {image_id!r} is not in the datastore")
        return entry

    def has_image(self, image_id: str) -> bool:
        self._refresh()
        return image_id in self._index.images

    def list_images(self) -> list[str]:
        self._refresh()
        return sorted(self._index.images)

    def refresh(self) -> None:
        self._refresh(force=True)

    def _image_path(self, image_id: str) -> Path:
        return self.cache_dir / "images" / f"{image_id}.dcm"

    def get_image_uri(self, image_id: str) -> str:
        """Path of the cached instance (retrieved as stored on first use); 404 unknown, 503 PACS down."""
        path = self._image_path(image_id)
        if path.exists():
            return str(path)
        entry = self._image_entry(image_id)
        try:
            data = self._client.instance_bytes(entry["study"], entry["series"], image_id)
        except (requests.RequestException, ValueError) as exc:
            raise pacs_unavailable(self.url, exc) from exc
        write_bytes_atomic(path, data)
        return str(path)

    def get_image(self, image_id: str, params=None) -> Any:
        with open(self.get_image_uri(image_id), "rb") as fh:
            return fh.read()

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        entry = self._image_entry(image_id)
        info = {
            "name": f"{image_id}.dcm",
            "StudyInstanceUID": entry["study"],
            "SeriesInstanceUID": entry["series"],
            "SOPInstanceUID": image_id,
            "SOPClassUID": entry.get("sop_class"),
            "Modality": entry.get("modality"),
            "frames": entry.get("frames", 1),
        }
        info.update(self._index.image_info.get(image_id, {}))
        path = self._image_path(image_id)
        if path.exists():
            info["path"] = str(path)
        return info

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> dict[str, Any]:
        """Keep ``organ``/``pathology``/``comment`` for an image (locally; the PACS is not changed)."""
        self._image_entry(image_id)
        kept = {k: v for k, v in info.items() if k in IMAGE_INFO_KEYS}
        with input_errors_as_http():
            if "organ" in kept:
                kept["organ"] = resolve_organ(kept["organ"], None)
            if "pathology" in kept:
                kept["pathology"] = resolve_pathology(kept["pathology"])
        with self._index.locked():
            self._index.read()
            current = self._index.image_info.setdefault(image_id, {})
            current.update(kept)
            self._index.write()
            return dict(current)

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        """Store an uploaded ultrasound DICOM in the PACS (STOW-RS); its id is its SOP Instance UID.

        422 for anything but an ultrasound DICOM; 409 when the PACS lists that SOP Instance UID
        already, and 405 when the params ask to replace it: in DICOM one UID is one instance, so
        a different image needs a new UID, and the PACS's copy is changed in the PACS.
        """
        from pydicom import dcmread
        from pydicom.errors import InvalidDicomError

        from ..io import load_image

        info = {k: v for k, v in (image_info or {}).items() if k != "replace"}
        replace = replace_requested(image_info)
        with input_errors_as_http():
            image = load_image(image_filename)
            if image.modality is None:
                raise SonoInputError(image_filename, "only DICOM images can be added to a PACS datastore")
            try:
                sop_uid = str(dcmread(image_filename, stop_before_pixels=True).SOPInstanceUID)
            except (InvalidDicomError, AttributeError, OSError) as exc:
                raise SonoInputError(image_filename, f"has no SOP Instance UID ({exc})") from exc
        self._refresh(force=True)
        if sop_uid in self._index.images:
            if replace:
                raise HTTPException(
                    status_code=405,
                    detail=f"image {sop_uid!r} is in the PACS; an instance is not replaced through "
                    "SonoVLM (one SOP Instance UID is one instance): change it in the PACS",
                )
            raise image_exists(sop_uid)
        try:
            self._client.store_bytes(Path(image_filename).read_bytes())
        except requests.RequestException as exc:
            raise pacs_error(self.url, exc) from exc
        self._refresh(force=True)
        if info:
            self.update_image_info(sop_uid, info)
        logger.info("Stored image %s in the PACS", sop_uid)
        return sop_uid

    def remove_image(self, image_id: str) -> None:
        raise HTTPException(status_code=405, detail="images are removed in the PACS, not through SonoVLM")

    def get_dataset_archive(self, limit_cases: int | None) -> str:
        raise HTTPException(
            status_code=501, detail="no dataset archive for a PACS datastore; export from the PACS"
        )

    # -- labels ------------------------------------------------------------------------------------------

    def _labels(self, tag: str) -> dict[str, dict[str, Any]]:
        return self._index.labels(tag)

    def get_labeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        self._refresh()
        tag = label_tag or DefaultLabelTag.FINAL.value
        with self._index.locked():
            self._index.read()
            images = self._index.images
            return sorted(i for i in self._labels(tag) if i in images)

    def get_unlabeled_images(
        self, label_tag: str | None = None, labels: list[str] | None = None
    ) -> list[str]:
        labelled = set(self.get_labeled_images(label_tag, labels))
        return sorted(i for i in self._index.images if i not in labelled)

    def get_labels_by_image_id(self, image_id: str) -> dict[str, str]:
        return {tag: image_id for tag, records in self._index.label_tags.items() if image_id in records}

    def get_label_by_image_id(self, image_id: str, tag: str) -> str:
        return image_id if image_id in self._labels(tag) else ""

    def get_label_info(self, label_id: str, label_tag: str) -> dict[str, Any]:
        info = self._index.label_info(label_id, label_tag)
        if info is None:
            raise not_found(f"no {label_tag!r} label for image {label_id!r}")
        return info

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> dict[str, Any]:
        with self._index.locked():
            self._index.read()
            record = self._labels(label_tag).get(label_id)
            if record is None:
                raise not_found(f"no {label_tag!r} label for image {label_id!r}")
            record.update({k: v for k, v in info.items() if k in ("comment",)})
            self._index.write()
        return self.get_label_info(label_id, label_tag)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        if label_tag == DefaultLabelTag.FINAL.value:
            raise HTTPException(
                status_code=405,
                detail="final labels live in the PACS as DICOM SEG; remove the SEG series there",
            )
        with self._index.locked():
            self._index.read()
            record = self._labels(label_tag).pop(label_id, None)
            if record is None:
                raise not_found(f"no {label_tag!r} label for image {label_id!r}")
            if record.get("file"):
                (self.cache_dir / record["file"]).unlink(missing_ok=True)
            self._index.write()

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        """Local path of the label in canonical form (PNG, or NRRD for a cine); decoded from the
        SEG in the PACS on first use. ``""`` when the image has no such label."""
        record = self._labels(label_tag).get(label_id)
        if record is None:
            return ""
        if record.get("file") and record.get("file_seg") == record.get("seg"):
            path = self.cache_dir / record["file"]
            if path.exists():
                return str(path)
        return self._materialise_label(label_id, label_tag, record)

    def get_label(self, label_id: str, label_tag: str, params=None) -> Any:
        uri = self.get_label_uri(label_id, label_tag)
        if not uri:
            return None
        with open(uri, "rb") as fh:
            return fh.read()

    def _materialise_label(self, image_id: str, tag: str, record: dict[str, Any]) -> str:
        from ..dicomseg import read_dicom_seg

        try:
            data = self._client.instance_bytes(record["seg_study"], record["seg_series"], record["seg"])
        except (requests.RequestException, ValueError, KeyError) as exc:
            raise pacs_unavailable(self.url, exc) from exc
        with input_errors_as_http():
            seg = read_dicom_seg(data)
            entry = self._index.images.get(image_id, {})
            n_frames = int(entry.get("frames", 1))
            label = _checked_from_seg(seg, n_frames, self._geometry_rows_cols(image_id))
        spacing = self._spacing(image_id)
        ext = label_extension(label)
        rel = f"labels/{tag}/{image_id}{ext}"
        write_atomic(self.cache_dir / rel, lambda tmp: write_label(tmp, label, spacing), suffix=ext)
        with self._index.locked():
            self._index.read()
            current = self._labels(tag).get(image_id)
            if current is not None and current.get("seg") == record.get("seg"):
                current["file"], current["file_seg"] = rel, record.get("seg")
                self._index.write()
        return str(self.cache_dir / rel)

    def _geometry_rows_cols(self, image_id: str) -> tuple[int, int]:
        frames, rows, cols, _ = self._geometry(image_id)
        return rows, cols

    def _spacing(self, image_id: str) -> tuple[float, float] | None:
        return self._geometry(image_id)[3]

    def _geometry(self, image_id: str) -> tuple[int, int, int, tuple[float, float] | None]:
        from ..io import load_image

        with input_errors_as_http():
            image = load_image(self.get_image_uri(image_id))
        return image.n_frames, image.height, image.width, image.spacing_mm

    def save_label(
        self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]
    ) -> str:
        """Check a label, then store it: as a DICOM SEG in the PACS for ``final`` (other tags stay
        local). 404 for an unknown image, 422 for a label that does not fit; a PACS that cannot be
        reached leaves the SEG in the outbox (``"pacs": "pending"``) and it is sent later."""
        from ..io import load_image

        tag = label_tag or DefaultLabelTag.FINAL.value
        params = dict(label_info or {})
        model_params = params.get("params") if isinstance(params.get("params"), dict) else {}
        merged = {**model_params, **params}
        image_path = self.get_image_uri(image_id)  # 404 / 503 before anything is written
        with input_errors_as_http():
            image = load_image(image_path)
            shape = (image.n_frames, image.height, image.width)
            label = check_label(label_filename, shape, merged, self.recorded_organ(image_id))
        measurements = _measurements(image, label)
        stamp = dicom_datetime_now()
        record: dict[str, Any] = {
            "organ": label.organ,
            "annotated_frames": label.annotated_frames,
            "saved_by": _who(merged),
            "saved_at": _iso_now(),
            "content_datetime": stamp,
            "measurements": measurements or {},
        }
        if label.pathology is not None:
            record["pathology"] = label.pathology
        if label.frame is not None:
            record["frame"] = label.frame
        for key in ("client_id", "comment"):
            if merged.get(key) not in (None, ""):
                record[key] = str(merged[key])[:200]

        ext = label_extension(label)
        rel = f"labels/{tag}/{image_id}{ext}"
        try:  # the local copy first: a disk error before anything reached the PACS changes nothing
            staged = self.cache_dir / "labels" / tag / f".{image_id}.staged{ext}"
            write_atomic(staged, lambda tmp: write_label(tmp, label, image.spacing_mm), suffix=ext)
        except OSError as exc:
            raise _disk_error(tag, image_id, self.cache_dir, exc, "nothing was changed") from exc
        try:
            if tag == DefaultLabelTag.FINAL.value:
                record.update(self._store_seg(image_path, image_id, label, record))
        except OSError as exc:  # the SEG could not be written to the outbox: not sent
            staged.unlink(missing_ok=True)
            raise _disk_error(tag, image_id, self.cache_dir, exc, "nothing was changed") from exc
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        record["file"], record["file_seg"] = rel, record.get("seg")
        try:
            with self._index.locked():
                self._index.read()
                records = self._index.label_tags.setdefault(tag, {})
                previous = records.get(image_id)
                record["history"] = pacs_history(previous)
                records[image_id] = self._index.kept(record)
                try:
                    self._index.write()
                except OSError:
                    if previous is None:  # the previous record back in memory
                        records.pop(image_id, None)
                    else:
                        records[image_id] = previous
                    raise
                os.replace(staged, self.cache_dir / rel)
        except OSError as exc:
            staged.unlink(missing_ok=True)
            stored = record.get("pacs") == "stored"
            raise _disk_error(
                tag,
                image_id,
                self.cache_dir,
                exc,
                f"the PACS has the new label (SEG {record['seg']}); the local copy follows at its next "
                "listing"
                if stored
                else "the previous label is kept",
            ) from exc
        logger.info(
            "Saved %s label of %s by %s (PACS: %s)",
            tag,
            image_id,
            record["saved_by"],
            record.get("pacs", "local"),
        )
        return image_id

    def _store_seg(
        self, image_path: str, image_id: str, label: CheckedLabel, record: dict[str, Any]
    ) -> dict[str, Any]:
        """Write the SEG to the outbox, STOW it; returns the label's PACS fields."""
        from io import BytesIO

        from ..dicomseg import segmentation_to_dicom_seg

        masks = (
            {f: label.mask[f] for f in label.annotated_frames}
            if label.is_volume
            else {label.frame or 0: label.mask}
        )
        with input_errors_as_http():
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
        outbox = self._outbox.put(str(seg.SOPInstanceUID), buffer.getvalue())
        fields = {
            "seg": str(seg.SOPInstanceUID),
            "seg_series": str(seg.SeriesInstanceUID),
            "seg_study": str(seg.StudyInstanceUID),
        }
        try:
            self._client.store_bytes(buffer.getvalue())
        except requests.RequestException as exc:
            if not is_outage(exc):
                outbox.unlink()
                raise pacs_error(self.url, exc) from exc
            logger.warning(
                "PACS %s did not take the SEG of %s (%s); kept in the outbox",
                self.url,
                image_id,
                type(exc).__name__,
            )
            return {**fields, "pacs": "pending", "outbox": outbox.name}
        outbox.unlink()
        try:
            self._index_seg(image_id, label, record, fields)
        except OSError as exc:  # the SEG is in the PACS; the listing cache catches up at its next refresh
            logger.error("SEG of %s stored, but the local index could not list it: %s", image_id, exc)
        return {**fields, "pacs": "stored"}

    def _index_seg(
        self, image_id: str, label: CheckedLabel, record: dict[str, Any], fields: dict[str, str]
    ) -> None:
        with self._index.locked():
            self._index.read()
            self._index.add_seg(
                fields["seg"],
                {
                    "source": image_id,
                    "organ": label.organ,
                    "pathology": label.pathology,
                    "frames": label.annotated_frames,
                    "automatic": False,
                    "content_datetime": record["content_datetime"],
                    "study": fields["seg_study"],
                    "series": fields["seg_series"],
                },
            )
            self._index.write()

    # -- what the SonoVLM app asks of a datastore (same contract as the local SonoDatastore) -------------

    def recorded_organ(self, image_id: str) -> str | None:
        """Final label, then image info, then the image's Body Part Examined; else None."""
        final = self._labels(DefaultLabelTag.FINAL.value).get(image_id) or {}
        info = self._index.image_info.get(image_id, {})
        for source in (final, info):
            if source.get("organ"):
                return str(source["organ"])
        body_part = (self._index.images.get(image_id) or {}).get("body_part")
        return BODY_PART_ORGAN.get(str(body_part or "").upper())

    def recorded_pathology(self, image_id: str) -> str | None:
        final = self._labels(DefaultLabelTag.FINAL.value).get(image_id) or {}
        info = self._index.image_info.get(image_id, {})
        for source in (final, info):
            if source.get("pathology"):
                return str(source["pathology"])
        return None

    def segmentation_items(self) -> list[dict[str, Any]]:
        """One item per annotated frame of every image with a final label (see SonoDatastore)."""
        items = []
        for image_id in self.get_labeled_images():
            record = self._labels(DefaultLabelTag.FINAL.value)[image_id]
            organ = record.get("organ") or self.recorded_organ(image_id)
            if organ is None:
                logger.warning("Label of %s has no organ SonoVLM knows; left out of training", image_id)
                continue
            try:
                label = self.get_label_uri(image_id, DefaultLabelTag.FINAL.value)
                image = self.get_image_uri(image_id)
            except HTTPException as exc:
                logger.warning("Label of %s left out of training: %s", image_id, exc.detail)
                continue
            items += label_frame_items(record, image=image, label=label, image_id=image_id, organ=organ)
        return items

    def classification_items(self) -> list[dict[str, Any]]:
        items = []
        for image_id in self.list_images():
            pathology, organ = self.recorded_pathology(image_id), self.recorded_organ(image_id)
            if pathology is None or organ is None:
                continue
            try:
                image = self.get_image_uri(image_id)
            except HTTPException as exc:
                logger.warning("Image %s left out of training: %s", image_id, exc.detail)
                continue
            final = self._labels(DefaultLabelTag.FINAL.value).get(image_id) or {}
            items.append(
                {
                    "image": image,
                    "image_id": image_id,
                    "organ": organ,
                    "pathology": pathology,
                    "frame": final.get("frame"),
                }
            )
        return items

    def datalist(self, full_path: bool = True) -> list[dict[str, Any]]:
        return [{"image": i["image"], "label": i["label"]} for i in self.segmentation_items()]

    # -- MONAI Label bookkeeping ---------------------------------------------------------------------------

    def name(self) -> str:
        return self._name

    def set_name(self, name: str) -> None:
        self._name = name

    def description(self) -> str:
        return self._description

    def set_description(self, description: str) -> None:
        self._description = description

    def status(self) -> dict[str, Any]:
        images = self.list_images()
        tags = {tag: len(records) for tag, records in self._index.label_tags.items() if records}
        pending = sum(
            1 for r in self._labels(DefaultLabelTag.FINAL.value).values() if r.get("pacs") == "pending"
        )
        return {
            "total": len(images),
            "completed": len(self.get_labeled_images()),
            "label_tags": tags,
            "pacs": {
                "url": self.url,
                "reachable": self._pacs_error is None,
                "error": self._pacs_error,
                "pending_labels": pending,
                "filter": self.search_filter,
            },
        }

    def json(self) -> dict[str, Any]:
        objects = {}
        for image_id in self.list_images():
            labels = {
                tag: {"info": self.get_label_info(image_id, tag)}
                for tag, records in self._index.label_tags.items()
                if image_id in records
            }
            objects[image_id] = {"image": {"info": self.get_image_info(image_id)}, "labels": labels}
        return {"name": self._name, "url": self.url, "objects": objects}


def _disk_error(tag: str, image_id: str, folder: Path, exc: OSError, outcome: str) -> HTTPException:
    """503 for a label the local disk refused (read-only, full), as the local datastore answers."""
    return HTTPException(
        status_code=503,
        detail=f"cannot store the {tag} label of {image_id!r} in {folder}: {exc.strerror or exc}; {outcome}",
    )


def _measurements(image: Any, label: CheckedLabel) -> dict[str, Any] | None:
    """Measurements of a one-frame label (``None`` for a whole-cine label or no lesion)."""
    from ..measure import lesion_region, measure_lesion

    if label.is_volume or not label.mask.any():
        return None
    region = lesion_region(image.regions, label.mask) if image.regions else None
    spacing = region.spacing_mm if region is not None and region.spacing_mm else image.spacing_mm
    with input_errors_as_http():
        return measure_lesion(label.mask, spacing).to_dict()


def _checked_from_seg(seg: Any, n_frames: int, rows_cols: tuple[int, int]) -> CheckedLabel:
    """The local canonical label of a SEG read from the PACS."""
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
