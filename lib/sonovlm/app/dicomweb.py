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
* **Labels go back as DICOM SEG** (:mod:`sonovlm.dicomseg`, STOW-RS), checked first by the flow
  the local datastore uses too (:class:`sonovlm.app.label_store.LabelStoreCore`). A label is
  written to a local outbox before it is sent; when the PACS cannot be reached it stays there,
  counts as labelled, is sent again at the next refresh, and its info says ``"pacs": "pending"``.
* **Labels from the PACS** (manual SEGs referencing a listed image, the newest per image) are read
  with highdicom for training (:func:`sonovlm.dicomseg.read_dicom_seg`).
* **A damaged index** (``index.json`` in the cache) is moved aside and rebuilt from the PACS and
  the outbox; the server keeps running.

The cache (``dicomweb_cache``, default ``~/.cache/sonovlm/dicomweb/<hash of the URL>``) holds
``images/`` (instances as retrieved), ``labels/<tag>/`` (labels in the local datastore's canonical
form, for training), ``outbox/`` and ``index.json`` (:mod:`sonovlm.app.pacs_index`) and
``.sonovlm/`` (the app's state: scores, results). The PACS is reached through
:class:`sonovlm.app.pacs_client.PacsClient`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from fastapi import HTTPException
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag

from ..errors import SonoInputError
from .atomic import write_atomic, write_bytes_atomic, write_json_atomic
from .http import image_exists, input_errors_as_http, not_found, replace_requested
from .label_store import FINAL, LabelStoreCore, LabelSubmission, disk_error
from .labels import CheckedLabel, label_extension, resolve_organ, resolve_pathology, write_label
from .pacs_client import (
    PacsClient,
    connect,
    pacs_error,
    pacs_unavailable,
)
from .pacs_index import (
    Outbox,
    PacsIndex,
    dicomweb_cache_dir,
    label_from_seg,
    pacs_label_record,
    seg_of_label,
)

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


#: ``(path) -> image`` (:class:`sonovlm.io.UltrasoundImage`); :class:`SonoInputError` for a bad file.
ImageLoader = Callable[[str], Any]


def _load_image(path: str) -> Any:
    from ..io import load_image

    return load_image(path)


def _write_json(path: Path, obj: Any) -> None:
    """The index's writer: this module's ``write_json_atomic``, looked up at each call."""
    write_json_atomic(path, obj)


# -- construction -------------------------------------------------------------------------------------


def build_datastore(
    studies_url: str, conf: dict[str, str] | None = None, load_image: ImageLoader | None = None
) -> DICOMwebUltrasoundDatastore:
    """The app's DICOMweb datastore for ``--studies URL``; no network access until a request.
    ``load_image`` decodes cached instances (see :class:`DICOMwebUltrasoundDatastore`).

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
        load_image=load_image,
    )


# -- the datastore ---------------------------------------------------------------------------------------


class DICOMwebUltrasoundDatastore(LabelStoreCore, Datastore):
    """MONAI Label datastore over a DICOMweb PACS for ultrasound (see the module notes); the label
    flow is the one it shares with the local datastore (:class:`~sonovlm.app.label_store.LabelStoreCore`).

    Args:
        client: the PACS client (:class:`PacsClient`); its requests get ``timeout_s``.
        cache_dir: local cache folder (created).
        search_filter: QIDO filter of the series listed.
        refresh_s: how long a listing is used before the PACS is asked again.
        timeout_s: per-request timeout.
        load_image: decodes a cached instance (the server passes its image cache); default
            :func:`sonovlm.io.load_image`.
    """

    def __init__(
        self,
        client: PacsClient,
        cache_dir: str | os.PathLike,
        search_filter: dict[str, Any] | None = None,
        refresh_s: float = 30.0,
        timeout_s: float = 30.0,
        load_image: ImageLoader | None = None,
    ) -> None:
        self._client = client
        self._load_image = load_image or _load_image
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
        with index.change():
            index.merge_listing(images, segs, self._client)
        index.listed_at = time.monotonic()
        self._outbox.flush(self._client, index)

    # -- images ------------------------------------------------------------------------------------------

    def _image_entry(self, image_id: str) -> dict[str, Any]:
        """The listing entry of ``image_id`` (re-listing once when unknown); 404 if not in the PACS."""
        self._refresh()
        with self._index.fresh():
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
        with self._index.change():
            current = self._index.image_info.setdefault(image_id, {})
            current.update(kept)
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
        with self._index.fresh():
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
        with self._index.change():
            record = self._labels(label_tag).get(label_id)
            if record is None:
                raise not_found(f"no {label_tag!r} label for image {label_id!r}")
            record.update({k: v for k, v in info.items() if k in ("comment",)})
        return self.get_label_info(label_id, label_tag)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        if label_tag == DefaultLabelTag.FINAL.value:
            raise HTTPException(
                status_code=405,
                detail="final labels live in the PACS as DICOM SEG; remove the SEG series there",
            )
        with self._index.change():
            record = self._labels(label_tag).pop(label_id, None)
            if record is None:
                raise not_found(f"no {label_tag!r} label for image {label_id!r}")
            if record.get("file"):
                (self.cache_dir / record["file"]).unlink(missing_ok=True)

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
        image_path = self.get_image_uri(image_id)
        with input_errors_as_http():
            image = self._label_image(image_path)
            seg = read_dicom_seg(data)
            n_frames = int(self._index.images.get(image_id, {}).get("frames", 1))
            label = label_from_seg(seg, n_frames, (image.height, image.width))
        ext = label_extension(label)
        rel = f"labels/{tag}/{image_id}{ext}"
        spacing = image.spacing_mm
        write_atomic(self.cache_dir / rel, lambda tmp: write_label(tmp, label, spacing), suffix=ext)
        with self._index.fresh():
            current = self._labels(tag).get(image_id)
            if current is not None and current.get("seg") == record.get("seg"):
                current["file"], current["file_seg"] = rel, record.get("seg")
                self._index.write()
        return str(self.cache_dir / rel)

    def _label_image(self, image_path: str) -> Any:
        return self._load_image(image_path)

    def _store_label(self, submission: LabelSubmission) -> str:
        """Store a checked label: as a DICOM SEG in the PACS for ``final`` (other tags stay local),
        with a local copy in canonical form for training. A PACS that cannot be reached leaves the
        SEG in the outbox (``"pacs": "pending"``) and it is sent later; one that refuses it is 502
        and nothing is kept. 503 when the local disk refuses (the reply says whether the PACS has
        the new SEG). Returns the PACS state (``stored``, ``pending``; ``local`` for other tags)."""
        image_id, tag, label = submission.image_id, submission.tag, submission.label
        record = pacs_label_record(submission)

        ext = label_extension(label)
        rel = f"labels/{tag}/{image_id}{ext}"
        try:  # the local copy first: a disk error before anything reached the PACS changes nothing
            staged = self.cache_dir / "labels" / tag / f".{image_id}.staged{ext}"
            spacing_mm = submission.image.spacing_mm
            write_atomic(staged, lambda tmp: write_label(tmp, label, spacing_mm), suffix=ext)
        except OSError as exc:
            raise disk_error(tag, image_id, self.cache_dir, exc, "nothing was changed") from exc
        try:
            if tag == FINAL:
                record.update(self._store_seg(submission.image_path, image_id, label, record))
        except OSError as exc:  # the SEG could not be written to the outbox: not sent
            staged.unlink(missing_ok=True)
            raise disk_error(tag, image_id, self.cache_dir, exc, "nothing was changed") from exc
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        record["file"], record["file_seg"] = rel, record.get("seg")
        try:
            with self._index.locked():
                self._index.put_label(tag, image_id, record)
                os.replace(staged, self.cache_dir / rel)
        except OSError as exc:
            staged.unlink(missing_ok=True)
            stored = record.get("pacs") == "stored"
            raise disk_error(
                tag,
                image_id,
                self.cache_dir,
                exc,
                f"the PACS has the new label (SEG {record['seg']}); the local copy follows at its next "
                "listing"
                if stored
                else "the previous label is kept",
            ) from exc
        return f"PACS: {record.get('pacs', 'local')}"

    def _store_seg(
        self, image_path: str, image_id: str, label: CheckedLabel, record: dict[str, Any]
    ) -> dict[str, Any]:
        """Write the SEG to the outbox, STOW it; returns the label's PACS fields."""
        with input_errors_as_http():
            data, fields = seg_of_label(image_path, label, record)
        try:
            kept = self._outbox.send(self._client, fields["seg"], data)
        except requests.RequestException as exc:  # refused (an outage keeps it in the outbox)
            raise pacs_error(self.url, exc) from exc
        if kept is not None:
            return {**fields, "pacs": "pending", "outbox": kept.name}
        try:
            self._index.add_stored_seg(image_id, label, record["content_datetime"], fields)
        except OSError as exc:  # the SEG is in the PACS; the listing cache catches up at its next refresh
            logger.error("SEG of %s stored, but the local index could not list it: %s", image_id, exc)
        return {**fields, "pacs": "stored"}

    # -- organ, pathology and training lists (LabelStoreCore) --------------------------------------

    def _image_ids(self) -> list[str]:
        self._refresh()
        with self._index.fresh():
            return sorted(self._index.images)

    def _final_info(self, image_id: str) -> dict[str, Any] | None:
        return self._labels(FINAL).get(image_id)

    def _recorded_infos(self, image_id: str) -> list[dict[str, Any]]:
        return [self._final_info(image_id) or {}, self._index.image_info.get(image_id, {})]

    def _recorded_default(self, image_id: str, key: str) -> str | None:
        """The organ from the image's Body Part Examined (:data:`BODY_PART_ORGAN`); no pathology."""
        if key != "organ":
            return None
        body_part = (self._index.images.get(image_id) or {}).get("body_part")
        return BODY_PART_ORGAN.get(str(body_part or "").upper())

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
