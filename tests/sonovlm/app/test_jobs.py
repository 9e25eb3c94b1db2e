"""Background propagation jobs: progress, collection, limits, expiry and the uploads they keep."""

from __future__ import annotations

import os
import tempfile
import threading
import time

import pytest
from fastapi import HTTPException
from sonovlm.app.jobs import JobBoard, JobCancelled


def _wait(board: JobBoard, job_id: str, timeout: float = 10.0) -> dict:
    job = board._jobs[job_id]
    end = time.monotonic() + timeout
    while job.running and time.monotonic() < end:
        time.sleep(0.01)
    return board.poll({"job": job_id})


def test_progress_then_the_result_once():
    board = JobBoard()
    go = threading.Event()

    def run(request):
        job = board.running(request["propagation_job"])
        job.frame_done(4, 1.0, 1, 3)
        go.wait(5)
        job.frame_done(5, 0.5, 2, 3)
        job.frame_done(3, 0.25, 3, 3)
        return {"file": None, "params": {"confidence": [0.25, 1.0, 0.5]}}

    status = board.start({"image_id": "cine"}, run)
    assert status["state"] == "running" and status["image"] == "cine"
    for _ in range(500):
        if board.poll({"job": status["job"]})["params"]["frames_done"] == 1:
            break
        time.sleep(0.01)
    running = board.poll({"job": status["job"], "image_id": "cine"})["params"]
    assert (running["frames"], running["confidence"], running["frames_total"]) == ([4], {"4": 1.0}, 3)
    go.set()
    result = _wait(board, status["job"])
    assert result["params"]["state"] == "done" and result["params"]["confidence"] == [0.25, 1.0, 0.5]
    with pytest.raises(HTTPException) as gone:
        board.poll({"job": status["job"]})
    assert gone.value.status_code == 404


def test_cancel_failure_limits_and_bad_ids():
    board = JobBoard(max_running=1)
    release = threading.Event()

    def slow(request):
        job = board.running(request["propagation_job"])
        release.wait(5)
        job.frame_done(0, 0.5, 1, 10)  # raises once cancelled
        raise AssertionError("not cancelled")

    job_id = board.start({"image_id": "a"}, slow)["job"]
    with pytest.raises(HTTPException) as busy:
        board.start({"image_id": "b"}, slow)
    assert busy.value.status_code == 429
    with pytest.raises(HTTPException) as other:
        board.poll({"job": job_id, "image_id": "b"})
    assert other.value.status_code == 404
    assert board.poll({"job": job_id, "cancel": True})["params"]["state"] == "cancelling"
    release.set()
    assert _wait(board, job_id)["params"]["state"] == "cancelled"

    def bad(request):
        raise HTTPException(status_code=422, detail="frame: out of range")

    failed = board.start({"image_id": "a"}, bad)["job"]
    with pytest.raises(HTTPException) as caught:
        _wait(board, failed)
    assert caught.value.status_code == 422 and caught.value.detail == "frame: out of range"
    for params, words in [({"job": 3}, "params.job"), ({"job": "x", "cancel": "yes"}, "params.cancel")]:
        with pytest.raises(HTTPException) as caught:
            board.poll(params)
        assert caught.value.status_code == 422 and words in caught.value.detail
    assert JobCancelled  # the exception a job's work raises when cancelled


def test_uploads_are_kept_for_the_job_and_removed_after(tmp_path):
    fd, upload = tempfile.mkstemp(suffix=".nii.gz")  # as MONAI Label keeps an uploaded file
    os.write(fd, b"seed")
    os.close(fd)
    seen = {}
    board = JobBoard()

    def run(request):
        os.unlink(upload)  # MONAI Label removes its file once the first reply is sent
        seen["path"] = request["label"]
        with open(request["label"], "rb") as fh:
            seen["bytes"] = fh.read()
        return {"file": None, "params": {}}

    job_id = board.start({"label": upload}, run)["job"]
    _wait(board, job_id)
    assert seen["bytes"] == b"seed" and seen["path"].endswith(".nii.gz")
    assert not os.path.exists(seen["path"])


def test_a_result_nobody_collects_is_dropped_with_its_file(tmp_path):
    result_file = tmp_path / "mask.nrrd"
    result_file.write_bytes(b"x")
    board = JobBoard(keep_s=0.0)
    job_id = board.start({}, lambda r: {"file": str(result_file), "params": {}})["job"]
    job = board._jobs[job_id]
    for _ in range(500):
        if not job.running:
            break
        time.sleep(0.01)
    time.sleep(0.01)
    assert board.statuses() == [] and not result_file.exists()
