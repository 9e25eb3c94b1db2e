"""Cine propagation as a background job whose per-frame progress a client reads while it runs.

MONAI Label 0.8.5 runs every request's work on the server's event loop: while one ``/infer`` runs,
nothing else is answered, so a client cannot ask how far a long propagation has got. A
propagation asked for with ``"as_job": true`` in its params therefore runs on a thread of its
own, and the same ``POST /infer/propagate?image=ID`` route (same roles, same client code) reads it:

* params ``{..., "as_job": true}``: starts the job; the reply is JSON (status below) at once.
* params ``{"job": JOB}``: while it runs, the status; once done, the propagation's own reply (the
  NRRD labelmap and its JSON, plus ``"job"`` and ``"state": "done"``), after which the job is
  forgotten; a failed job answers with its error's status and message (a 4xx for bad input).
* params ``{"job": JOB, "cancel": true}``: stops it after the frame being segmented.

Status JSON: ``job``, ``image``, ``state`` (``running``/``cancelling``/``done``/``failed``/
``cancelled``), ``frames_done``, ``frames_total`` (``null`` until the image is read),
``frames`` (segmented so far, in the order done), ``confidence`` (``{frame: value}``),
``elapsed_s``. A finished job nobody collects is dropped after :attr:`JobBoard.keep_s`.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException

from .http import bad_input, not_found

logger = logging.getLogger(__name__)

#: Request keys that name uploaded temporary files (MONAI Label removes them after the reply).
_UPLOAD_KEYS = ("image", "label")


class JobCancelled(Exception):
    """Raised inside a job's work when its client cancelled it."""


@dataclass
class PropagationJob:
    """One background propagation and its progress (thread-safe)."""

    id: str
    image: str
    state: str = "running"
    frames_done: int = 0
    frames_total: int | None = None
    frames: list[int] = field(default_factory=list)
    confidence: dict[int, float] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    result: dict[str, Any] | None = None
    error: HTTPException | None = None
    files: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def frame_done(self, frame: int, confidence: float, done: int, total: int) -> None:
        """Record one segmented frame; raises :class:`JobCancelled` when a cancel was asked."""
        with self._lock:
            self.frames.append(int(frame))
            self.confidence[int(frame)] = float(confidence)
            self.frames_done, self.frames_total = int(done), int(total)
            if self.state == "cancelling":
                raise JobCancelled(self.id)

    def cancel(self) -> None:
        with self._lock:
            if self.state == "running":
                self.state = "cancelling"

    def finish(
        self, state: str, result: dict[str, Any] | None = None, error: HTTPException | None = None
    ) -> None:
        with self._lock:
            self.state, self.result, self.error = state, result, error
            self.finished = time.monotonic()
        for path in self.files:  # the job's own copies of the uploads
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    @property
    def running(self) -> bool:
        return self.finished is None

    def status(self) -> dict[str, Any]:
        with self._lock:
            end = self.finished if self.finished is not None else time.monotonic()
            return {
                "job": self.id,
                "image": self.image,
                "state": self.state,
                "frames_done": self.frames_done,
                "frames_total": self.frames_total,
                "frames": list(self.frames),
                "confidence": {str(k): v for k, v in sorted(self.confidence.items())},
                "elapsed_s": round(end - self.started, 3),
            }


class JobBoard:
    """The server's propagation jobs.

    Args:
        keep_s: seconds a finished job waits to be collected before it is dropped.
        max_running: jobs that may run at once (more is 429).
    """

    def __init__(self, keep_s: float = 600.0, max_running: int = 2) -> None:
        self.keep_s = keep_s
        self.max_running = max_running
        self._jobs: dict[str, PropagationJob] = {}
        self._lock = threading.Lock()

    def running(self, job_id: Any) -> PropagationJob | None:
        """The running job ``job_id`` (``None`` for no job: a request answered directly)."""
        if not isinstance(job_id, str):
            return None
        with self._lock:
            job = self._jobs.get(job_id)
        return job if job is not None and job.running else None

    def statuses(self) -> list[dict[str, Any]]:
        """Every job's status (for ``/info``)."""
        self._expire()
        with self._lock:
            jobs = list(self._jobs.values())
        return [job.status() for job in jobs]

    def start(
        self, request: dict[str, Any], run: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> dict[str, Any]:
        """Start ``run(request)`` (MONAI Label's infer of the request) on a thread; returns the status.

        ``request["propagation_job"]`` tells the task which job's progress to report. Uploaded
        files are copied first: MONAI Label deletes its temporary files once the reply is sent.
        """
        self._expire()
        with self._lock:
            active = sum(1 for job in self._jobs.values() if job.running)
            if active >= self.max_running:
                raise HTTPException(
                    status_code=429,
                    detail=f"{active} propagations are running (at most {self.max_running}); "
                    "wait for one to finish",
                )
            job = PropagationJob(id=uuid.uuid4().hex, image=str(request.get("image_id") or ""))
            self._jobs[job.id] = job
        request = dict(request, propagation_job=job.id)
        try:
            for key in _UPLOAD_KEYS:
                path = request.get(key)
                if isinstance(path, str) and path and os.path.isfile(path) and _is_temporary(path):
                    fd, copy = tempfile.mkstemp(prefix="sonovlm-job-", suffix=_suffixes(path))
                    os.close(fd)
                    shutil.copyfile(path, copy)
                    job.files.append(copy)
                    request[key] = copy
        except OSError as exc:
            job.finish("failed")
            with self._lock:
                self._jobs.pop(job.id, None)
            raise HTTPException(status_code=503, detail=f"cannot keep the uploaded files: {exc}") from exc
        thread = threading.Thread(
            target=self._work, args=(job, run, request), daemon=True, name=f"propagate-{job.id[:8]}"
        )
        thread.start()
        logger.info("Propagation job %s started on %s", job.id, job.image or "an uploaded file")
        return job.status()

    def _work(
        self, job: PropagationJob, run: Callable[[dict[str, Any]], dict[str, Any]], request: dict[str, Any]
    ) -> None:
        try:
            result = run(request)
        except JobCancelled:
            job.finish("cancelled")
            logger.info("Propagation job %s cancelled after %d frame(s)", job.id, job.frames_done)
            return
        except HTTPException as exc:
            logger.info("Propagation job %s failed: %s %s", job.id, exc.status_code, exc.detail)
            job.finish("failed", error=exc)
            return
        except Exception as exc:  # reported to the client as a 500 with the reason, and logged
            logger.exception("Propagation job %s failed", job.id)
            job.finish("failed", error=HTTPException(status_code=500, detail=f"propagation failed: {exc}"))
            return
        job.finish("done", result=result)
        logger.info("Propagation job %s done (%d frames)", job.id, job.frames_done)

    def poll(self, request: dict[str, Any]) -> dict[str, Any]:
        """Answer ``{"job": ID[, "cancel": true]}``: MONAI Label's infer result (see the module
        notes); raises the job's error when it failed, 404 for an unknown job."""
        job_id, cancel = request.get("job"), request.get("cancel", False)
        if not isinstance(job_id, str) or not job_id:
            raise bad_input("params.job", f"must be a job id from a background propagation, not {job_id!r}")
        if not isinstance(cancel, bool):
            raise bad_input("params.cancel", f"must be true or false, not {cancel!r}")
        self._expire()
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise not_found(f"no propagation job {job_id!r} (finished jobs are dropped once collected)")
        image = request.get("image_id")
        if image and job.image and image != job.image:
            raise not_found(f"propagation job {job_id!r} is not one of image {image!r}")
        if cancel:
            job.cancel()
        if job.running:
            return _json_only(job.status())
        with self._lock:
            self._jobs.pop(job_id, None)
        if job.error is not None:
            raise job.error
        if job.state == "cancelled" or job.result is None:
            return _json_only(job.status())
        result = dict(job.result)
        params = dict(result.get("params") or {})
        params.update({"job": job.id, "state": "done", "elapsed_s": job.status()["elapsed_s"]})
        result["params"] = params
        return result

    def _expire(self) -> None:
        now = time.monotonic()
        with self._lock:
            stale = [
                j for j in self._jobs.values() if j.finished is not None and now - j.finished > self.keep_s
            ]
            for job in stale:
                del self._jobs[job.id]
        for job in stale:
            path = (job.result or {}).get("file")
            if path:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            logger.info("Propagation job %s dropped: nobody collected it in %.0f s", job.id, self.keep_s)


def _json_only(status: dict[str, Any]) -> dict[str, Any]:
    """An infer result that MONAI Label sends as JSON alone."""
    return {"label": None, "tag": None, "file": None, "params": status}


def _is_temporary(path: str) -> bool:
    return os.path.realpath(path).startswith(os.path.realpath(tempfile.gettempdir()) + os.sep)


def _suffixes(path: str) -> str:
    name = os.path.basename(path)
    return name[name.index(".") :] if "." in name else ""
