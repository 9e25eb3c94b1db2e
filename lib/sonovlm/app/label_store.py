"""What the app asks of a datastore besides MONAI Label's interface, and the label flow both share.

:class:`LabelStore` is the protocol the server and the trainers use: organ and pathology per
image, the training lists, and whether an image id is the datastore's. Both SonoVLM datastores
(the studies folder, :class:`~sonovlm.app.datastore.SonoDatastore`, and a PACS over DICOMweb,
:class:`~sonovlm.app.dicomweb.DICOMwebUltrasoundDatastore`) implement it through
:class:`LabelStoreCore`, which holds what they have in common:

* **check, then write**: :meth:`LabelStoreCore.save_label` resolves the image (404 when unknown),
  checks the label against the image's ``(frames, rows, cols)`` with the request's params
  (:func:`sonovlm.app.labels.check_label`; a bad label is 422) and builds the label's record
  (:func:`label_record`: organ, frames, pathology, who saved it and when) before the datastore's
  own ``_store_label`` writes anything;
* **history**: the replaced label's record goes to the new one's history (:func:`history_after`);
* **disk errors** are 503 naming the folder and what became of the label (:func:`disk_error`);
* **organ and pathology** come from the final label, then the image's info, then a
  datastore-specific default (``cases.csv``; the PACS's Body Part Examined);
* **training lists**: one segmentation item per annotated frame of each final label, one
  classification item per image with a known organ and pathology.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from fastapi import HTTPException
from monailabel.interfaces.datastore import DefaultLabelTag

from .http import input_errors_as_http, not_found
from .labels import CheckedLabel, check_label, label_frame_items

logger = logging.getLogger(__name__)

FINAL = DefaultLabelTag.FINAL.value


@runtime_checkable
class LabelStore(Protocol):
    """A SonoVLM datastore, as the server and the trainers use it (besides MONAI Label's
    :class:`~monailabel.interfaces.datastore.Datastore` interface)."""

    def has_image(self, image_id: str) -> bool:
        """Whether ``image_id`` is an image of the datastore (not a file path)."""
        ...

    def recorded_organ(self, image_id: str) -> str | None:
        """The image's organ (final label, image info, then the datastore's default); else None."""
        ...

    def recorded_pathology(self, image_id: str) -> str | None:
        """The image's pathology (final label, image info, then the datastore's default); else None."""
        ...

    def segmentation_items(self) -> list[dict[str, Any]]:
        """One training item per annotated frame of every final label (see :class:`LabelStoreCore`)."""
        ...

    def classification_items(self) -> list[dict[str, Any]]:
        """One training item per image with a known organ and pathology."""
        ...


class ImageShape(Protocol):
    """What a label is checked against: a loaded image, or just its geometry."""

    @property
    def n_frames(self) -> int: ...

    @property
    def height(self) -> int: ...

    @property
    def width(self) -> int: ...

    @property
    def spacing_mm(self) -> tuple[float, float] | None: ...


@dataclass(frozen=True)
class Geometry:
    """An image's geometry: frames, ``height`` x ``width`` pixels, pixel spacing in mm (row, col)."""

    n_frames: int
    height: int
    width: int
    spacing_mm: tuple[float, float] | None


@dataclass(frozen=True)
class LabelSubmission:
    """A label that passed every check, ready for a datastore to store.

    Attributes:
        image_id: the image's id.
        tag: the label tag (``final`` unless the request named another).
        params: the label info as the client sent it.
        merged: ``params`` over the model params it carries (``params["params"]``).
        image_path: the image's local file.
        image: what the label was checked against (``(frames, rows, cols)``, spacing in mm).
        label: the checked label, in canonical form.
        record: the label's record (:func:`label_record`); the datastore adds its own keys.
    """

    image_id: str
    tag: str
    params: dict[str, Any]
    merged: dict[str, Any]
    image_path: str
    image: ImageShape
    label: CheckedLabel
    record: dict[str, Any]


def who(info: Mapping[str, Any]) -> str:
    """Who sent a request: its ``user``, ``username`` or ``client_id`` (in that order), else anonymous."""
    for key in ("user", "username", "client_id"):
        value = info.get(key)
        if value:
            return str(value)
    return "anonymous"


def now_iso() -> str:
    """Local time as ``YYYY-MM-DDTHH:MM:SS+ZZZZ``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def merged_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """A request's params over the model params it carries under ``"params"`` (when a dict)."""
    model_params = params.get("params") if isinstance(params.get("params"), dict) else {}
    return {**model_params, **params}


def label_record(label: CheckedLabel, merged: Mapping[str, Any]) -> dict[str, Any]:
    """The fields every stored label has: ``organ``, ``annotated_frames``, ``saved_by``,
    ``saved_at``, and ``pathology`` / ``frame`` when known (a whole-cine label has no ``frame``)."""
    record: dict[str, Any] = {
        "organ": label.organ,
        "annotated_frames": label.annotated_frames,
        "saved_by": who(merged),
        "saved_at": now_iso(),
    }
    if label.pathology is not None:
        record["pathology"] = label.pathology
    if label.frame is not None:
        record["frame"] = label.frame
    return record


def history_after(
    previous: Mapping[str, Any] | None,
    keys: Iterable[str] | None = None,
    limit: int | None = None,
    **where: Any,
) -> list[dict[str, Any]]:
    """The history of a label that replaces ``previous`` (its record; ``None``: a first label).

    ``previous``'s history with one entry added, newest last: ``where`` (where the old label is
    kept, e.g. ``file=...``) and ``previous``'s fields (``keys`` of them when given), never its
    own history. ``limit`` keeps only that many newest entries.
    """
    if not previous:
        return []
    history = list(previous.get("history", []))
    chosen = (k for k in previous if k != "history") if keys is None else (k for k in keys if k in previous)
    history.append({**where, **{k: previous[k] for k in chosen}})
    return history if limit is None else history[-limit:]


def disk_error(tag: str, image_id: str, folder: Path | str, exc: OSError, outcome: str) -> HTTPException:
    """503 for a label the local disk refused (read-only, full), saying what became of it."""
    return HTTPException(
        status_code=503,
        detail=f"cannot store the {tag} label of {image_id!r} in {folder}: {exc.strerror or exc}; {outcome}",
    )


def label_measurements(image: Any, label: CheckedLabel) -> dict[str, Any] | None:
    """Measurements of a one-frame label on ``image`` (:class:`sonovlm.io.UltrasoundImage`: its
    calibrated regions, else its spacing; :meth:`LesionMeasurement.to_dict`, lengths in mm where
    calibrated); ``None`` for a whole-cine label or no lesion."""
    from ..measure import lesion_region, measure_lesion

    if label.is_volume or not label.mask.any():
        return None
    region = lesion_region(image.regions, label.mask) if image.regions else None
    spacing = region.spacing_mm if region is not None and region.spacing_mm else image.spacing_mm
    with input_errors_as_http():
        return measure_lesion(label.mask, spacing).to_dict()


class LabelStoreCore:
    """The label flow and the :class:`LabelStore` methods both SonoVLM datastores share.

    A datastore using it (listed before MONAI Label's datastore class) gives ``get_image_uri`` and
    ``get_label_uri`` (MONAI Label's) and these hooks:

    * ``_label_image(path)``: the image's :class:`ImageShape` (decoding it);
    * ``_store_label(submission)``: write a checked label and its record, keeping the previous one
      in the history; returns where it went (for the log);
    * ``_image_ids()``: the images' ids, sorted; ``_final_info(image_id)``: the final label's
      record (``None`` when there is none);
    * ``_recorded_infos(image_id)``: the records organ and pathology are read from, first first;
      ``_recorded_default(image_id, key)``: the value when none has it.
    """

    # -- the hooks ---------------------------------------------------------------------------------

    def _label_image(self, image_path: str) -> ImageShape:
        raise NotImplementedError

    def _store_label(self, submission: LabelSubmission) -> str:
        raise NotImplementedError

    def _image_ids(self) -> list[str]:
        raise NotImplementedError

    def _final_info(self, image_id: str) -> Mapping[str, Any] | None:
        raise NotImplementedError

    def _recorded_infos(self, image_id: str) -> list[Mapping[str, Any]]:
        raise NotImplementedError

    def _recorded_default(self, image_id: str, key: str) -> str | None:
        raise NotImplementedError

    # -- labels ------------------------------------------------------------------------------------

    def save_label(
        self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]
    ) -> str:
        """Check a label, then store it; 404 for an unknown image, 422 for a label that does not
        fit its image (nothing is written before every check passed), 503 when the disk refuses."""
        tag = label_tag or FINAL
        params = dict(label_info or {})
        merged = merged_params(params)
        image_path = self.get_image_uri(image_id)  # type: ignore[attr-defined]
        if not image_path:
            raise not_found(f"image {image_id!r} is not in the datastore")
        with input_errors_as_http():
            image = self._label_image(image_path)
            shape = (image.n_frames, image.height, image.width)
            label = check_label(label_filename, shape, merged, self.recorded_organ(image_id))
        record = label_record(label, merged)
        submission = LabelSubmission(image_id, tag, params, merged, image_path, image, label, record)
        where = self._store_label(submission)
        logger.info("Saved %s label of %s by %s (%s)", tag, image_id, record["saved_by"], where)
        return image_id

    # -- organ, pathology and training lists -------------------------------------------------------

    def recorded_organ(self, image_id: str) -> str | None:
        """The image's organ: final label, then image info, then the datastore's default; else None."""
        return self._recorded(image_id, "organ")

    def recorded_pathology(self, image_id: str) -> str | None:
        """The image's pathology: final label, then image info, then the datastore's default."""
        return self._recorded(image_id, "pathology")

    def _recorded(self, image_id: str, key: str) -> str | None:
        for info in self._recorded_infos(image_id):
            if info.get(key):
                return str(info[key])
        return self._recorded_default(image_id, key)

    def segmentation_items(self) -> list[dict[str, Any]]:
        """One item per annotated frame of every image with a final label.

        Each item: ``image`` (path), ``label`` (path), ``image_id``, ``organ``, ``frame`` and
        ``label_frame`` (the slice of the label file: 0 for a one-frame label, else ``frame``).
        A label without an organ, or whose files cannot be had, is left out (logged).
        """
        items = []
        for image_id in self._image_ids():
            final = self._final_info(image_id)
            if final is None:
                continue
            organ = final.get("organ") or self.recorded_organ(image_id)
            if organ is None:
                logger.warning("Label of %s has no organ SonoVLM knows; left out of training", image_id)
                continue
            try:
                label = self.get_label_uri(image_id, FINAL)  # type: ignore[attr-defined]
                image = self.get_image_uri(image_id)  # type: ignore[attr-defined]
            except HTTPException as exc:
                logger.warning("Label of %s left out of training: %s", image_id, exc.detail)
                continue
            items += label_frame_items(final, image=image, label=label, image_id=image_id, organ=organ)
        return items

    def classification_items(self) -> list[dict[str, Any]]:
        """One item per image with a known pathology and organ: ``image`` (path), ``image_id``,
        ``organ``, ``pathology``, ``frame`` (the labelled frame, else ``None`` = the middle one)."""
        items = []
        for image_id in self._image_ids():
            pathology, organ = self.recorded_pathology(image_id), self.recorded_organ(image_id)
            if pathology is None or organ is None:
                continue
            try:
                image = self.get_image_uri(image_id)  # type: ignore[attr-defined]
            except HTTPException as exc:
                logger.warning("Image %s left out of training: %s", image_id, exc.detail)
                continue
            final = self._final_info(image_id) or {}
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
