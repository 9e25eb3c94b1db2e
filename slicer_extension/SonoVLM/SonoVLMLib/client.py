"""HTTP client of the SonoVLM MONAI Label server, on the Python standard library alone.

3D Slicer's Python has few packages and no ``cgi`` from Python 3.13 on, so this module imports
nothing outside the standard library: requests are built with :mod:`urllib.request`, multipart
bodies by hand, multipart replies parsed with :mod:`email`. It runs on Python 3.9 (Slicer 5.8)
and later.

The server contract (MONAI Label 0.8.5 endpoints, SonoVLM app):

* ``GET /info/``; ``GET /auth/``; ``POST /auth/token`` (form: username, password).
* ``POST /activelearning/{strategy}`` with a JSON body (``client_id``).
* ``PUT /datastore/image?image=ID`` (multipart: ``file``, ``params``); the server answers 409
  when ``ID`` is taken unless ``params`` says ``"replace": true``;
  ``GET /datastore/image?image=ID`` (the file).
* ``POST /infer/{model}?image=ID`` (multipart: ``params`` JSON and an optional ``file``); the
  reply is multipart (``params`` JSON and the mask file) or JSON only. ``propagate`` runs as a
  job: params ``"as_job": true`` start it, ``{"job": JOB}`` polls it (JSON status while it
  runs, then the result), ``{"job": JOB, "cancel": true}`` stops it.
* ``PUT /datastore/label?image=ID&tag=final`` (multipart: ``params`` JSON and ``label``).
* ``POST /train/{model}`` with the train params as JSON body (never ``run_sync``: that trains
  inside the server and blocks every other request); ``GET /train/``; ``DELETE /train/``.

Every HTTP or network failure is raised as :class:`SonoVLMClientError`.
"""

from __future__ import annotations

import email.message
import email.parser
import email.policy
import http.client
import json
import os
import re
import socket
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any

#: Inference task names served by the SonoVLM app.
SEGMENTATION_MODEL = "segmentation"
CLASSIFICATION_MODEL = "classification"
INTERACTIVE_MODEL = "interactive"
PROPAGATE_MODEL = "propagate"

#: States of a propagation job that is still working, and the seconds between two polls.
PROPAGATION_RUNNING = ("running", "cancelling")
PROPAGATION_POLL_S = 0.25

#: Active-learning strategies of the SonoVLM app.
STRATEGIES = ("diversity", "uncertainty", "random", "first")

#: Pathology values a label may carry; "unknown" (or None) sends none.
PATHOLOGIES = ("benign", "malignant")

#: Mask format the client asks for: one-slice NRRD, as Slicer reads it.
DEFAULT_RESULT_EXTENSION = ".nrrd"


class SonoVLMClientError(Exception):
    """A request to the server failed.

    Attributes:
        status: the HTTP status code, or ``None`` when no HTTP reply came (server unreachable,
            timeout, a reply that could not be read).
        message: the server's message (its ``detail``), or what went wrong.
    """

    def __init__(self, status: int | None, message: str) -> None:
        self.status = status
        self.message = message
        prefix = f"HTTP {status}" if status is not None else "no reply"
        super().__init__(f"{prefix}: {message}")


class ImageExistsError(SonoVLMClientError):
    """The server already has an image under the id an upload asked for (HTTP 409).

    Attributes:
        image_id: the id that is taken.
    """

    def __init__(self, image_id: str, message: str) -> None:
        self.image_id = image_id
        super().__init__(409, message)


def segmentation_params(
    organ: str,
    prompt: str | None = None,
    frame: int | None = None,
    result_extension: str = DEFAULT_RESULT_EXTENSION,
) -> dict[str, Any]:
    """The ``params`` of a ``segmentation`` request.

    Args:
        organ: ``lymph_node``, ``breast_lesion``, ``thyroid_nodule`` or ``auto`` (the server
            checks the name).
        prompt: free text replacing the organ's prompt; blank is left out.
        frame: 0-based frame of a cine; ``None`` lets the server pick (the middle frame).
        result_extension: ``.nrrd``, ``.nii.gz`` or ``.png``.
    """
    params: dict[str, Any] = {"organ": _checked_organ(organ), "result_extension": result_extension}
    if prompt is not None and prompt.strip():
        params["prompt"] = prompt.strip()
    if frame is not None:
        params["frame"] = _checked_frame(frame)
    return params


def interaction_params(
    foreground: list | tuple = (),
    background: list | tuple = (),
    roi: list | tuple | None = None,
    frame: int | None = None,
    organ: str = "auto",
    prompt: str | None = None,
) -> dict[str, Any]:
    """The ``params`` of an ``interactive`` or ``propagate`` request, in the stock Slicer plugin's form.

    Args:
        foreground, background: positive / negative clicks as ``[i, j, k]`` (or ``[i, j]``)
            0-based voxel indices: i = column, j = row, k = frame; rounded to integers here.
        roi: a box as ``[i_min, i_max, j_min, j_max]`` or with ``k_min, k_max``, inclusive (the
            server sorts reversed pairs); ``None`` = no box.
        frame: the frame the clicks are on (sent as ``frame`` and ``slice``); ``None``: the
            clicks' k.
        organ, prompt: as for :func:`segmentation_params`.
    """
    # The extension measures the segment itself after every change: the server need not.
    params: dict[str, Any] = {"organ": _checked_organ(organ), "measure": False}
    for name, points in (("foreground", foreground), ("background", background)):
        params[name] = [_voxel(point, name) for point in points]
    if roi is not None:
        if len(roi) not in (4, 6):
            raise ValueError(f"roi must be [i_min, i_max, j_min, j_max(, k_min, k_max)], got {roi!r}")
        params["roi"] = [int(round(float(v))) for v in roi]
    if frame is not None:
        params["frame"] = params["slice"] = _checked_frame(frame)
    if prompt is not None and prompt.strip():
        params["prompt"] = prompt.strip()
    return params


def classification_params(organ: str, frame: int | None = None) -> dict[str, Any]:
    """The ``params`` of a ``classification`` request (see :func:`segmentation_params`)."""
    params: dict[str, Any] = {"organ": _checked_organ(organ)}
    if frame is not None:
        params["frame"] = _checked_frame(frame)
    return params


def label_params(
    organ: str,
    pathology: str | None = None,
    frame: int | None = None,
    unannotated_frames: list | tuple | None = None,
) -> dict[str, Any]:
    """The ``params`` stored with a final label: organ, pathology when known, and for a cine
    either ``frame`` (a one-frame label) or ``unannotated_frames`` (a whole-cine label, one slice
    per frame: the frames nobody contoured).

    ``pathology`` ``None`` or ``"unknown"`` sends no pathology at all.
    """
    params: dict[str, Any] = {"organ": _checked_organ(organ)}
    if pathology is not None and pathology != "unknown":
        if pathology not in PATHOLOGIES:
            raise ValueError(f"pathology must be one of {PATHOLOGIES} or 'unknown', got {pathology!r}")
        params["pathology"] = pathology
    if frame is not None:
        params["frame"] = _checked_frame(frame)
    if unannotated_frames:
        if frame is not None:
            raise ValueError("a label is either one frame (frame) or the whole cine (unannotated_frames)")
        params["unannotated_frames"] = [_checked_frame(f) for f in unannotated_frames]
    return params


class SonoVLMClient:
    """Client of one SonoVLM server.

    Args:
        server_url: e.g. ``http://127.0.0.1:8000`` (a path prefix is kept).
        timeout: seconds to wait for each reply.
        token: bearer token sent with every request (the server's authentication), or ``None``.
        client_id: sent with next-sample and label requests so that the server can tell
            annotators apart.
        download_dir: where masks and images are written; a temporary folder by default.
    """

    def __init__(
        self,
        server_url: str,
        timeout: float = 120.0,
        token: str | None = None,
        client_id: str | None = None,
        download_dir: str | None = None,
    ) -> None:
        url = server_url.strip().rstrip("/")
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"server URL must be http(s)://host[:port], got {server_url!r}")
        self.server_url = url
        self.timeout = timeout
        self.token = token
        self.client_id = client_id
        self.download_dir = download_dir or tempfile.mkdtemp(prefix="sonovlm-")
        # In memory only, for the silent re-login when the token expires (never written anywhere).
        self._credentials: tuple[str, str] | None = None

    # ---------------------------------------------------------------- server and authentication

    def info(self) -> dict[str, Any]:
        """``GET /info/``: models, trainers, strategies, train stats, datastore."""
        return self._json("GET", "/info/")

    def auth_enabled(self) -> bool:
        """Whether the server asks for a login (``GET /auth/``; MONAI Label serves it only when
        authentication is on, so 404 means off)."""
        try:
            reply = self._json("GET", "/auth/", authenticate=False)
        except SonoVLMClientError as error:
            if error.status == 404:
                return False
            raise
        return bool(reply.get("enabled"))

    def login(self, username: str, password: str) -> str | None:
        """Log in through MONAI Label's ``POST /auth/token``; keep and return the access token.

        The server answers a null token when authentication is off; the client then sends none.
        The user name and password are kept in memory (only) so that an expired token is renewed
        silently: a request answered 401 logs in again and is retried once.
        """
        body = urllib.parse.urlencode({"username": username, "password": password, "grant_type": "password"})
        reply = self._json(
            "POST",
            "/auth/token",
            body=body.encode("utf-8"),
            content_type="application/x-www-form-urlencoded",
            authenticate=False,
        )
        self.token = reply.get("access_token") or None
        self._credentials = (username, password) if self.token else None
        return self.token

    # ---------------------------------------------------------------- datastore

    def next_sample(self, strategy: str) -> dict[str, Any]:
        """``POST /activelearning/{strategy}``: the next image to annotate (``id`` and its info).

        Returns an empty dict when the server has nothing left (stock MONAI Label answers ``{}``;
        the SonoVLM app answers 404, raised as :class:`SonoVLMClientError`).
        """
        body: dict[str, Any] = {"client_id": self.client_id} if self.client_id else {}
        return self._json("POST", f"/activelearning/{_quote(strategy)}", json_body=body)

    def upload_image(self, path: str, image_id: str | None = None, replace: bool = False) -> str:
        """``PUT /datastore/image``: add the file at ``path``; returns the image id the server gave.

        ``image_id`` defaults to the file name without its extension (the server's rule). An id
        the server already has is :class:`ImageExistsError` (409) unless ``replace``.
        """
        query = {"image": image_id} if image_id else {}
        params: dict[str, Any] = {"client_id": self.client_id} if self.client_id else {}
        if replace:
            params["replace"] = True
        fields = {"params": json.dumps(params)}
        try:
            reply = self._json("PUT", "/datastore/image", query=query, fields=fields, files={"file": path})
        except SonoVLMClientError as error:
            if error.status == 409:
                raise ImageExistsError(image_id or os.path.basename(path), error.message) from None
            raise
        if "image" not in reply:
            raise SonoVLMClientError(200, f"upload reply has no image id: {reply!r}")
        return str(reply["image"])

    def download_image(self, image_id: str, directory: str | None = None) -> str:
        """``GET /datastore/image``: write the image file to ``directory`` and return its path.

        The file keeps the name (and so the extension) the server sends.
        """
        status, headers, body = self._request("GET", "/datastore/image", query={"image": image_id})
        name = _filename(headers.get("Content-Disposition")) or f"{_safe_name(image_id)}.bin"
        return _write_file(directory or self.download_dir, name, body)

    def save_label(
        self,
        image_id: str,
        label_path: str,
        organ: str,
        pathology: str | None = None,
        frame: int | None = None,
        tag: str = "final",
        unannotated_frames: list | tuple | None = None,
    ) -> dict[str, Any]:
        """``PUT /datastore/label``: store ``label_path`` as the image's final label.

        The label's params carry the organ, the pathology (none when ``None``/``"unknown"``) and,
        for one frame of a cine, the frame; for a whole-cine label (one slice per frame) the
        frames nobody contoured.
        """
        params = label_params(organ, pathology, frame, unannotated_frames)
        if self.client_id:
            params["client_id"] = self.client_id
        return self._json(
            "PUT",
            "/datastore/label",
            query={"image": image_id, "tag": tag},
            fields={"params": json.dumps(params)},
            files={"label": label_path},
        )

    # ---------------------------------------------------------------- inference

    def segment(
        self,
        image_id: str | None = None,
        file: str | None = None,
        organ: str = "auto",
        prompt: str | None = None,
        frame: int | None = None,
        result_extension: str = DEFAULT_RESULT_EXTENSION,
    ) -> tuple[str | None, dict[str, Any]]:
        """Auto-segment a datastore image (``image_id``) or an uploaded ``file``.

        Returns ``(mask_path, result)``: the mask file written to :attr:`download_dir` (``None``
        when the server sent JSON only) and the result JSON (``organ``, ``label``, confidence,
        ``measurements``, ``model_version``).
        """
        params = segmentation_params(organ, prompt, frame, result_extension)
        return self._infer(SEGMENTATION_MODEL, image_id, file, params)

    def interactive(
        self,
        image_id: str | None = None,
        file: str | None = None,
        previous_mask: str | None = None,
        result_extension: str = DEFAULT_RESULT_EXTENSION,
        **prompts: Any,
    ) -> tuple[str | None, dict[str, Any]]:
        """Refine one frame's mask with clicks, a box and/or the current mask (``interactive``).

        ``prompts`` are :func:`interaction_params`'s arguments; ``previous_mask`` is a mask file
        (one frame, or a labelmap of the whole cine) uploaded as the request's ``label``. Returns
        ``(mask_path, result)`` as :meth:`segment`; ``result["interaction"]`` says what was used.
        """
        params = dict(interaction_params(**prompts), result_extension=result_extension)
        return self._infer(INTERACTIVE_MODEL, image_id, file, params, label=previous_mask)

    def propagate(
        self,
        image_id: str | None = None,
        file: str | None = None,
        seed_mask: str | None = None,
        first_frame: int | None = None,
        last_frame: int | None = None,
        **prompts: Any,
    ) -> tuple[str | None, dict[str, Any]]:
        """Follow a lesion through a cine from one seeded frame (``propagate``).

        The seed is ``seed_mask`` (a mask file of frame ``frame``) and/or clicks and a box
        (``prompts``, as :func:`interaction_params`); without either, the seed frame's automatic
        result. Returns ``(labelmap_path, result)``: an NRRD labelmap of every frame (zero outside
        ``first_frame..last_frame``) and ``result["confidence"]`` per frame (``None`` outside the
        range), ``result["review_first"]`` the frames weakest first.
        """
        path, reply = self.propagate_start(image_id, file, seed_mask, first_frame, last_frame, **prompts)
        while path is None and reply.get("state") in PROPAGATION_RUNNING:
            time.sleep(PROPAGATION_POLL_S)
            path, reply = self.propagate_poll(image_id, reply["job"])
        _check_propagation_done(reply)
        return path, reply

    def propagate_start(
        self,
        image_id: str | None = None,
        file: str | None = None,
        seed_mask: str | None = None,
        first_frame: int | None = None,
        last_frame: int | None = None,
        **prompts: Any,
    ) -> tuple[str | None, dict[str, Any]]:
        """Start :meth:`propagate` as a job on the server (params ``"as_job": true``).

        Returns ``(None, status)`` with ``status["job"]``, ``"state": "running"``,
        ``frames_done`` / ``frames_total``; poll it with :meth:`propagate_poll`. A server that
        answers at once (no jobs) gives the finished ``(labelmap_path, result)`` instead.
        """
        params = interaction_params(**prompts)
        for name, value in (("first_frame", first_frame), ("last_frame", last_frame)):
            if value is not None:
                params[name] = _checked_frame(value)
        params["as_job"] = True
        return self._infer(PROPAGATE_MODEL, image_id, file, params, label=seed_mask)

    def propagate_poll(
        self, image_id: str | None, job: str, cancel: bool = False
    ) -> tuple[str | None, dict[str, Any]]:
        """How far propagation ``job`` has got: ``(None, status)`` while it runs (``frames_done``
        of ``frames_total``, ``frames`` and ``confidence`` so far), then once its result as
        :meth:`propagate` returns it (the server then forgets the job). A job that failed raises
        its error (:class:`SonoVLMClientError` with the server's status); ``cancel`` stops it after
        the frame being segmented (the status then says ``cancelling`` / ``cancelled``).
        """
        params: dict[str, Any] = {"job": str(job)}
        if cancel:
            params["cancel"] = True
        query = {"image": image_id} if image_id else {}
        if self.client_id:
            params["client_id"] = self.client_id
        # A job of an uploaded file has no image id; MONAI Label still wants an image argument.
        query.setdefault("image", f"job:{job}")
        status, headers, body = self._request(
            "POST", f"/infer/{_quote(PROPAGATE_MODEL)}", query=query, fields={"params": json.dumps(params)}
        )
        content_type = headers.get("Content-Type", "")
        if content_type.startswith("multipart/"):
            return self._multipart_result(content_type, body)
        return None, _decode_json(status, body)

    def classify(
        self,
        image_id: str | None = None,
        file: str | None = None,
        organ: str = "auto",
        frame: int | None = None,
    ) -> dict[str, Any]:
        """Benign/malignant classification: ``prediction`` (``[{label, score}]``), ``organ``,
        the prompts behind it and ``model_version``."""
        _, result = self._infer(CLASSIFICATION_MODEL, image_id, file, classification_params(organ, frame))
        return result

    def _infer(
        self,
        model: str,
        image_id: str | None,
        file: str | None,
        params: dict[str, Any],
        label: str | None = None,
    ) -> tuple[str | None, dict[str, Any]]:
        if not image_id and not file:
            raise ValueError("give an image_id (datastore image) or a file to upload")
        query = {"image": image_id} if image_id else {}
        if self.client_id:
            params = dict(params, client_id=self.client_id)
        files = {"file": file} if file else {}
        if label:  # a mask file: the server reads it from the request's "label" part
            files["label"] = label
        status, headers, body = self._request(
            "POST", f"/infer/{_quote(model)}", query=query, fields={"params": json.dumps(params)}, files=files
        )
        content_type = headers.get("Content-Type", "")
        if content_type.startswith("multipart/"):
            return self._multipart_result(content_type, body)
        return None, _decode_json(status, body)

    def _multipart_result(self, content_type: str, body: bytes) -> tuple[str | None, dict[str, Any]]:
        """Split a multipart infer reply into (saved mask path, params JSON)."""
        head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
        if not message.is_multipart():
            raise SonoVLMClientError(200, "the server's multipart reply could not be parsed")
        result: dict[str, Any] = {}
        mask_path = None
        for part in message.iter_parts():
            payload = part.get_payload(decode=True) or b""
            filename = part.get_filename()
            if filename:
                mask_path = _write_file(self.download_dir, os.path.basename(filename), payload)
            elif part.get_param("name", header="content-disposition") == "params":
                result = _decode_json(200, payload)
        return mask_path, result

    # ---------------------------------------------------------------- training

    def train(self, model: str, **params: Any) -> dict[str, Any]:
        """``POST /train/{model}``: start training in the server's background process.

        ``params`` (``max_epochs``, ``train_batch_size``, ``learning_rate``, ``val_split``...) go
        as the JSON body. Returns the task (``id``, ``status``...). A training already running is
        :class:`SonoVLMClientError` 429. Poll :meth:`train_status` for progress.
        """
        return self._json("POST", f"/train/{_quote(model)}", json_body=dict(params))

    def train_status(self) -> dict[str, Any] | None:
        """``GET /train/``: the latest training task (``status`` RUNNING/DONE/ERROR/STOPPED,
        ``details``...), or ``None`` when no training has run since the server started."""
        try:
            return self._json("GET", "/train/")
        except SonoVLMClientError as error:
            if error.status == 404 and "no train task" in error.message.lower():
                return None
            raise

    def stop_training(self) -> dict[str, Any] | None:
        """``DELETE /train/``: stop the running training; its task, or ``None`` when none ran."""
        return self._json("DELETE", "/train/")

    # ---------------------------------------------------------------- HTTP

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        status, _, body = self._request(method, path, **kwargs)
        return _decode_json(status, body)

    def _request(
        self,
        method: str,
        path: str,
        query: dict[str, str] | None = None,
        json_body: Any = None,
        fields: dict[str, str] | None = None,
        files: dict[str, str] | None = None,
        body: bytes | None = None,
        content_type: str | None = None,
        authenticate: bool = True,
    ) -> tuple[int, Any, bytes]:
        """Send one request; return ``(status, headers, body)`` of a 2xx reply, else raise.

        A 401 after a login made with :meth:`login` (the token expired) logs in again with the
        same credentials and sends the request once more.
        """
        args = (method, path, query, json_body, fields, files, body, content_type, authenticate)
        try:
            return self._send(*args)
        except SonoVLMClientError as error:
            if error.status != 401 or not authenticate or self._credentials is None:
                raise
            self.login(*self._credentials)
            return self._send(*args)

    def _send(
        self,
        method: str,
        path: str,
        query: dict[str, str] | None,
        json_body: Any,
        fields: dict[str, str] | None,
        files: dict[str, str] | None,
        body: bytes | None,
        content_type: str | None,
        authenticate: bool,
    ) -> tuple[int, Any, bytes]:
        url = self.server_url + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        headers = {"Accept": "application/json, multipart/form-data, */*"}
        if json_body is not None:
            body = json.dumps(json_body).encode("utf-8")
            content_type = "application/json"
        elif fields is not None or files:
            content_type, body = _multipart_body(fields or {}, files or {})
        if content_type:
            headers["Content-Type"] = content_type
        if authenticate and self.token:
            headers["Authorization"] = f"Bearer {self.token}"

        request = urllib.request.Request(url, data=body, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                return reply.status, reply.headers, reply.read()
        except urllib.error.HTTPError as error:
            raise SonoVLMClientError(error.code, _error_message(error)) from None
        except urllib.error.URLError as error:
            raise SonoVLMClientError(None, f"cannot reach {self.server_url}: {error.reason}") from None
        except (socket.timeout, TimeoutError):
            raise SonoVLMClientError(None, f"{method} {path}: no reply within {self.timeout:g} s") from None
        except (ConnectionError, OSError, http.client.HTTPException) as error:
            raise SonoVLMClientError(None, f"{method} {path}: connection failed: {error!r}") from None


def _checked_organ(organ: str) -> str:
    if not isinstance(organ, str) or not organ.strip():
        raise ValueError(f"organ must be a non-empty name, got {organ!r}")
    return organ.strip()


def _checked_frame(frame: int) -> int:
    if isinstance(frame, bool) or not isinstance(frame, int) or frame < 0:
        raise ValueError(f"frame must be a 0-based integer, got {frame!r}")
    return frame


def _voxel(point: Any, name: str) -> list[int]:
    if not isinstance(point, (list, tuple)) or len(point) not in (2, 3):
        raise ValueError(f"each {name} point must be [i, j, k] (column, row, frame), got {point!r}")
    return [int(round(float(v))) for v in point]


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def _multipart_body(fields: dict[str, str], files: dict[str, str]) -> tuple[str, bytes]:
    """``multipart/form-data`` body of text ``fields`` and ``files`` (field name -> path)."""
    boundary = f"sonovlm-{uuid.uuid4().hex}"
    chunks: list[bytes] = []
    for name, value in fields.items():
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + value.encode("utf-8")
            + b"\r\n"
        )
    for name, path in files.items():
        with open(path, "rb") as handle:
            data = handle.read()
        filename = os.path.basename(path).replace('"', "_")
        chunks.append(
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + data
            + b"\r\n"
        )
    chunks.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(chunks)


def _decode_json(status: int, body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8")) if body else None
    except (UnicodeDecodeError, ValueError):
        raise SonoVLMClientError(status, f"expected JSON, got {body[:200]!r}") from None


def _error_message(error: urllib.error.HTTPError) -> str:
    """The server's message: FastAPI's ``detail`` (text or validation list), else the body."""
    try:
        body = error.read()
    except OSError:
        body = b""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        detail = json.loads(text).get("detail", text)
    except (ValueError, AttributeError):
        detail = text
    if isinstance(detail, list):  # FastAPI validation errors: [{"loc": [...], "msg": ...}]
        detail = "; ".join(
            str(item.get("msg", item)) if isinstance(item, dict) else str(item) for item in detail
        )
    return str(detail) or (error.reason if isinstance(error.reason, str) else "") or f"HTTP {error.code}"


def _filename(content_disposition: str | None) -> str | None:
    """File name of a ``Content-Disposition`` header (RFC 2231/5987 forms included)."""
    if not content_disposition:
        return None
    message = email.message.EmailMessage()
    message["Content-Disposition"] = content_disposition
    name = message.get_filename()
    if not name:
        match = re.search(r'filename="?([^";]+)"?', content_disposition)
        name = match.group(1) if match else None
    return os.path.basename(name) if name else None


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text) or "image"


def _write_file(directory: str, name: str, data: bytes) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, _safe_name(name))
    with open(path, "wb") as handle:
        handle.write(data)
    return path


def _check_propagation_done(reply: dict[str, Any]) -> None:
    """A propagation reply that is not a result (a cancelled job) is an error."""
    if reply.get("state") == "cancelled":
        raise SonoVLMClientError(200, f"propagation job {reply.get('job')} was cancelled")
