"""Talking to a PACS over DICOMweb: instances as stored, STOW-RS, QIDO listings, PACS errors as HTTP.

:class:`PacsClient` is dicomweb-client's ``DICOMwebClient`` with raw-byte retrieval and storage
(ultrasound instances keep their transfer syntax and calibration) and the paged QIDO listing the
PACS datastore (:mod:`sonovlm.app.dicomweb`) keeps in its index (:mod:`sonovlm.app.pacs_index`).
The module also holds the DICOM JSON tag helpers, DICOM date-time stamps, and the mapping of a
failed request to the HTTP answer the server gives (503 away, 502 refused). Nothing here reads or
writes the local cache.
"""

from __future__ import annotations

import time
from typing import Any

import requests
from fastapi import HTTPException
from pydicom.dataset import Dataset

from .compat import DICOMwebClientCompat

#: QIDO page size (servers cap results; we page until a short page).
PAGE_SIZE = 500

#: WADO-RS Accept header: DICOM in the transfer syntax it was stored in (PS3.18 8.7.3.5.2).
ACCEPT_AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'

# DICOM JSON (PS3.18 F.2) tags read from QIDO replies.
SOP_INSTANCE = "00080018"
SOP_CLASS = "00080016"
STUDY = "0020000D"
SERIES = "0020000E"
FRAMES = "00280008"
BODY_PART = "00180015"
MODALITY = "00080060"


def tag_value(item: dict[str, Any], tag: str) -> Any:
    """The first value of ``tag`` in a DICOM JSON object (``None`` when absent or empty)."""
    values = item.get(tag, {}).get("Value") or [None]
    return values[0]


def no_bulk_data(*_: Any) -> bytes:
    """Bulk data (pixels) of a metadata response is not fetched: only the header is read."""
    return b""


def dicom_datetime_now() -> str:
    """``YYYYMMDDHHMMSS.ffffff`` (the form of DICOM Content Date + Time, so both sort together)."""
    now = time.time()
    return time.strftime("%Y%m%d%H%M%S", time.localtime(now)) + f".{int(now % 1 * 1e6):06d}"


def iso_from_dicom(stamp: str) -> str:
    """``YYYY-MM-DDTHH:MM:SS`` of a DICOM ``YYYYMMDDHHMMSS[.ffffff]`` (as given when not that form)."""
    digits = stamp.split(".")[0]
    if len(digits) < 14 or not digits.isdigit():
        return stamp
    return f"{digits[:4]}-{digits[4:6]}-{digits[6:8]}T{digits[8:10]}:{digits[10:12]}:{digits[12:14]}"


# -- failures as HTTP answers ----------------------------------------------------------------------


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` means the PACS is away (try again later), not that it refused the request."""
    if isinstance(exc, requests.ConnectionError | requests.Timeout):
        return True
    response = getattr(exc, "response", None)
    return response is not None and (response.status_code >= 500 or response.status_code in (408, 429))


def pacs_error(url: str, exc: BaseException) -> HTTPException:
    """503 when the PACS is away, 502 when it refused (the reason only: its text may hold UIDs)."""
    if is_outage(exc) or not isinstance(exc, requests.HTTPError):
        return pacs_unavailable(url, exc)
    status = getattr(getattr(exc, "response", None), "status_code", None)
    reason = f"HTTP {status}" if status else str(exc)[:200]
    return HTTPException(status_code=502, detail=f"the PACS at {url} refused the request ({reason})")


def pacs_unavailable(url: str, exc: BaseException) -> HTTPException:
    """503 naming the PACS; the reason is the exception's class only (its text may hold URLs with UIDs)."""
    return HTTPException(
        status_code=503, detail=f"the PACS at {url} cannot be reached ({type(exc).__name__})"
    )


# -- the client ------------------------------------------------------------------------------------


class PacsClient(DICOMwebClientCompat):
    """dicomweb-client with raw-byte retrieval and storage (instances kept exactly as stored)."""

    def instance_bytes(self, study_uid: str, series_uid: str, sop_uid: str) -> bytes:
        """The Part 10 bytes of one instance, in its stored transfer syntax."""
        url = self.instance_url(study_uid, series_uid, sop_uid)
        response = self.http_get(url, headers={"Accept": ACCEPT_AS_STORED})
        if response.headers.get("Content-Type", "").startswith("application/dicom"):
            return response.content  # a non-conforming single part; dicomweb-client accepts it too
        parts = self.multipart_parts(response)
        if len(parts) != 1:
            raise ValueError(f"expected one instance, the PACS sent {len(parts)}")
        return bytes(parts[0])

    def store_bytes(self, data: bytes) -> None:
        """STOW-RS one Part 10 file; ``requests.HTTPError`` when the PACS refuses it."""
        url = self.store_url()
        reply = self.post_instances(url, [data])
        failed = reply.get("FailedSOPSequence")
        if failed:
            reasons = ", ".join(str(item.get("FailureReason", "?")) for item in failed)
            raise requests.HTTPError(f"the PACS refused the instance (failure reason {reasons})")

    def instance_header(self, study_uid: str, series_uid: str, sop_uid: str) -> Dataset:
        """The header of one instance (WADO-RS metadata; bulk data such as pixels left out)."""
        metadata = self.retrieve_instance_metadata(study_uid, series_uid, sop_uid)
        return Dataset.from_json(metadata, no_bulk_data)

    def set_timeout(self, timeout_s: float) -> None:
        """Give every request of this client a ``timeout_s`` timeout (dicomweb-client has no
        setting for it; its session does). Call once."""
        session = self.session
        original = session.request

        def request(method, url, **kwargs):
            kwargs.setdefault("timeout", timeout_s)
            return original(method, url, **kwargs)

        session.request = request

    def search_all(self, level: str, **kwargs: Any) -> list[dict[str, Any]]:
        """Every QIDO result at ``level`` (``"series"`` or ``"instances"``), paged by :data:`PAGE_SIZE`."""
        results: list[dict[str, Any]] = []
        offset = 0
        search = self.search_for_series if level == "series" else self.search_for_instances
        while True:
            page = search(limit=PAGE_SIZE, offset=offset, **kwargs)
            results.extend(page)
            if len(page) < PAGE_SIZE:
                return results
            offset += len(page)

    def list_instances(self, series_filter: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """``{SOP Instance UID: {study, series, sop_class, modality, frames, body_part}}`` of every
        instance of the series matching ``series_filter`` (a QIDO filter such as ``{"Modality": "US"}``).

        Raises ``requests.RequestException`` (or ``ValueError`` for a malformed reply).
        """
        found: dict[str, dict[str, Any]] = {}
        for series in self.search_all("series", search_filters=series_filter):
            study_uid, series_uid = tag_value(series, STUDY), tag_value(series, SERIES)
            if not study_uid or not series_uid:
                continue
            body_part = tag_value(series, BODY_PART)
            modality = tag_value(series, MODALITY)
            instances = self.search_all(
                "instances",
                study_instance_uid=study_uid,
                series_instance_uid=series_uid,
                fields=["NumberOfFrames", "BodyPartExamined"],
            )
            for item in instances:
                sop_uid = tag_value(item, SOP_INSTANCE)
                if not sop_uid:
                    continue
                frames = tag_value(item, FRAMES)
                found[str(sop_uid)] = {
                    "study": str(study_uid),
                    "series": str(series_uid),
                    "sop_class": str(tag_value(item, SOP_CLASS) or ""),
                    "modality": str(modality or ""),
                    "frames": int(frames) if frames not in (None, "") else 1,
                    "body_part": str(tag_value(item, BODY_PART) or body_part or "").upper() or None,
                }
        return found


def connect(url: str) -> PacsClient:
    """A client of the DICOMweb root ``url`` configured as MONAI Label configures its own:
    ``MONAI_LABEL_DICOMWEB_USERNAME`` / ``_PASSWORD`` and the ``MONAI_LABEL_QIDO_PREFIX`` etc.;
    no retries (an outage is handled by the caller; see :meth:`PacsClient.set_timeout`)."""
    from monailabel.config import settings

    session = requests.Session()
    if settings.MONAI_LABEL_DICOMWEB_USERNAME and settings.MONAI_LABEL_DICOMWEB_PASSWORD:
        session.auth = (settings.MONAI_LABEL_DICOMWEB_USERNAME, settings.MONAI_LABEL_DICOMWEB_PASSWORD)
    client = PacsClient(
        url=url,
        session=session,
        qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
        wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX,
        stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX,
    )
    client.set_http_retry_params(retry=False)
    return client
