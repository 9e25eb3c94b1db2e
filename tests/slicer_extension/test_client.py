"""The extension's standard-library client against a real SonoVLM server (``monailabel
start_server``, tiny backbone, sample studies): every method, multipart and JSON-only replies,
error replies; and its HTTP edge cases against a scripted local server."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from slicer_extension_helpers import asymmetric_lesion, other_pythons, write_us_dicom
from SonoVLMLib.client import SonoVLMClient, SonoVLMClientError
from SonoVLMLib.replies import classification_summary, server_summary

MODULE_DIR = Path(__file__).resolve().parents[2] / "slicer_extension" / "SonoVLM"


@pytest.fixture
def client(sonovlm_server, tmp_path):
    return SonoVLMClient(
        sonovlm_server.url, timeout=60, client_id="pytest-client", download_dir=str(tmp_path)
    )


def unlabelled_ids(server) -> list[str]:
    import csv

    with open(server.studies / "cases.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    final = server.studies / "labels" / "final"
    labelled = {p.name.split(".")[0] for p in final.iterdir()} if final.is_dir() else set()
    return [r["id"] for r in rows if r["id"] not in labelled]


# ------------------------------------------------------------------------------- live server


@pytest.mark.slow
def test_info_lists_both_tasks_and_the_served_version(client):
    info = client.info()
    assert set(info["models"]) >= {"segmentation", "classification"}
    summary = server_summary(info)
    assert summary.organs[0] == "auto" and set(summary.organs[1:]) == {
        "lymph_node",
        "breast_lesion",
        "thyroid_nodule",
    }
    assert summary.strategies == ["diversity", "uncertainty", "random", "first"]
    assert summary.model_version and summary.model_version == info["models"]["segmentation"]["model_version"]
    assert client.auth_enabled() is False


@pytest.mark.slow
def test_login_is_refused_when_the_server_has_no_authentication(client):
    with pytest.raises(SonoVLMClientError) as raised:
        client.login("sonographer", "secret")
    assert raised.value.status == 404
    assert client.token is None


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["diversity", "uncertainty", "random", "first"])
def test_next_sample_returns_an_unlabelled_image(client, sonovlm_server, strategy):
    sample = client.next_sample(strategy)
    assert sample["id"] in unlabelled_ids(sonovlm_server)


@pytest.mark.slow
def test_unknown_strategy_is_an_error_with_the_servers_message(client):
    with pytest.raises(SonoVLMClientError) as raised:
        client.next_sample("hardest")
    assert raised.value.status == 404 and "hardest" in raised.value.message


@pytest.mark.slow
def test_download_image_keeps_name_and_bytes(client, sonovlm_server, tmp_path):
    image_id = unlabelled_ids(sonovlm_server)[0]
    path = client.download_image(image_id, str(tmp_path / "images"))
    assert Path(path).name == f"{image_id}.dcm"
    assert Path(path).read_bytes() == (sonovlm_server.studies / f"{image_id}.dcm").read_bytes()
    with pytest.raises(SonoVLMClientError) as raised:
        client.download_image("no-such-image")
    assert raised.value.status == 404


@pytest.mark.slow
@pytest.mark.parametrize("extension", [".nrrd", ".png"])
def test_segment_datastore_image_gives_mask_file_and_json(client, sonovlm_server, extension):
    from sonovlm.io import load_image, load_mask

    image_id = unlabelled_ids(sonovlm_server)[0]
    image = load_image(sonovlm_server.studies / f"{image_id}.dcm")
    mask_path, result = client.segment(image_id=image_id, organ="lymph_node", result_extension=extension)
    assert mask_path is not None and mask_path.endswith(extension) and os.path.getsize(mask_path) > 0
    assert {"organ", "label", "confidence", "measurements", "model_version"} <= set(result)
    assert result["organ"] == "lymph_node" and result["label"] == 1
    mask = load_mask(mask_path, (image.height, image.width))
    assert set(np.unique(mask)) <= {0, 1}
    assert int((mask != 0).sum()) == result["lesion_pixels"]


@pytest.mark.slow
def test_segment_uploaded_file_with_prompt(client, tmp_path):
    rows, cols = 96, 128
    frame = np.random.default_rng(0).integers(40, 90, (rows, cols), dtype=np.uint8)
    frame[asymmetric_lesion(rows, cols)] = 10
    path = write_us_dicom(
        tmp_path / "upload.dcm",
        frame[np.newaxis],
        [{"bbox": (0, 0, cols - 1, rows - 1), "spacing_mm": (0.2, 0.1)}],
    )
    mask_path, result = client.segment(
        file=str(path), organ="breast_lesion", prompt="irregular hypoechoic mass"
    )
    assert result["organ"] == "breast_lesion" and result["prompt"] == "irregular hypoechoic mass"
    assert (
        result["rows"] == rows
        and result["cols"] == cols
        and result["spacing_mm"] == pytest.approx([0.2, 0.1])
    )
    assert os.path.isfile(mask_path)


@pytest.mark.slow
def test_classify_is_a_json_only_reply(client, sonovlm_server):
    image_id = unlabelled_ids(sonovlm_server)[0]
    result = client.classify(image_id=image_id, organ="auto")
    assert sum(p["score"] for p in result["prediction"]) == pytest.approx(1.0)
    assert result["organ"] in ("lymph_node", "breast_lesion", "thyroid_nodule")
    summary = classification_summary(result)
    assert summary.prompts and summary.model_version == result["model_version"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "kwargs, status, words",
    [
        ({"image_id": "no-such-image"}, 404, "no-such-image"),
        ({"organ": "liver"}, 422, "liver"),
        ({"frame": 99}, 422, "frame"),
    ],
)
def test_bad_requests_raise_with_status_and_message(client, sonovlm_server, kwargs, status, words):
    kwargs = {"image_id": unlabelled_ids(sonovlm_server)[0], **kwargs}
    with pytest.raises(SonoVLMClientError) as raised:
        client.segment(**kwargs)
    assert raised.value.status == status and words in raised.value.message
    with pytest.raises(ValueError):
        client.segment(organ="auto")  # neither an image id nor a file


@pytest.mark.slow
def test_upload_then_label_with_organ_and_pathology(client, sonovlm_server, slicer_scene, tmp_path):
    """A label exported by Slicer's own writer is stored with its params; unknown sends none."""
    from sonovlm.io import load_mask
    from SonoVLMLib.scene import UltrasoundSceneLogic

    rows, cols = 90, 120
    pixels = np.random.default_rng(4).integers(0, 256, (1, rows, cols), dtype=np.uint8)
    path = write_us_dicom(
        tmp_path / "client_label_case.dcm",
        pixels,
        [{"bbox": (0, 0, cols - 1, rows - 1), "spacing_mm": (0.15, 0.15)}],
    )
    image_id = client.upload_image(str(path))
    assert image_id == "client_label_case"

    logic = UltrasoundSceneLogic(slicer_scene)
    case = logic.load_image(str(path), image_id=image_id)
    lesion = asymmetric_lesion(rows, cols)
    segment_id = logic.apply_mask(case, lesion, "thyroid_nodule")
    label = logic.export_label(case, segment_id, str(tmp_path / "label.nrrd"))

    reply = client.save_label(image_id, label, "thyroid_nodule", pathology="malignant")
    assert (
        reply["image"] == image_id
        and reply["organ"] == "thyroid_nodule"
        and reply["pathology"] == "malignant"
    )
    stored = next((sonovlm_server.studies / "labels" / "final").glob(f"{image_id}.*"))
    assert np.array_equal(load_mask(stored, (rows, cols)) != 0, lesion)

    reply = client.save_label(image_id, label, "thyroid_nodule", pathology="unknown")
    assert "pathology" not in reply

    wrong_size = tmp_path / "wrong.nrrd"
    import nrrd

    nrrd.write(str(wrong_size), np.ones((cols + 5, rows, 1), np.uint8))
    with pytest.raises(SonoVLMClientError) as raised:
        client.save_label(image_id, str(wrong_size), "thyroid_nodule")
    assert 400 <= raised.value.status < 500 and raised.value.message
    with pytest.raises(SonoVLMClientError) as raised:
        client.save_label("no-such-image", label, "thyroid_nodule")
    assert raised.value.status == 404


@pytest.mark.slow
def test_an_existing_image_id_is_409_unless_replace_on_the_real_server(client, sonovlm_server, tmp_path):
    """The client's request shape (params ``{"replace": true}``) is the one the server honours."""
    from SonoVLMLib.client import ImageExistsError

    regions = [{"bbox": (0, 0, 47, 39), "spacing_mm": (0.2, 0.2)}]
    rng = np.random.default_rng(21)
    first = write_us_dicom(tmp_path / "a.dcm", rng.integers(0, 256, (1, 40, 48), dtype=np.uint8), regions)
    second = write_us_dicom(tmp_path / "b.dcm", rng.integers(0, 256, (1, 40, 48), dtype=np.uint8), regions)
    assert client.upload_image(str(first), "us-client-409") == "us-client-409"
    with pytest.raises(ImageExistsError) as raised:
        client.upload_image(str(second), "us-client-409")
    assert raised.value.status == 409 and raised.value.image_id == "us-client-409"
    assert "already in the datastore" in raised.value.message
    downloaded = client.download_image("us-client-409", str(tmp_path / "before"))
    assert Path(downloaded).read_bytes() == first.read_bytes()
    assert client.upload_image(str(second), "us-client-409", replace=True) == "us-client-409"
    downloaded = client.download_image("us-client-409", str(tmp_path / "after"))
    assert Path(downloaded).read_bytes() == second.read_bytes()


@pytest.mark.slow
def test_training_starts_in_the_background_reports_and_stops(client):
    assert client.train_status() is None or client.train_status()["status"] != "RUNNING"
    task = client.train("segmentation", max_epochs=50)
    assert task["status"] in ("SUBMITTED", "RUNNING") and task["request"]["max_epochs"] == 50
    deadline = time.monotonic() + 30
    while client.train_status()["status"] == "SUBMITTED" and time.monotonic() < deadline:
        time.sleep(0.2)  # MONAI Label registers the process once its executor picks the task up
    with pytest.raises(SonoVLMClientError) as raised:
        client.train("segmentation", max_epochs=1)
    assert raised.value.status == 429
    started = time.monotonic()
    client.info()  # the server keeps answering while it trains
    assert time.monotonic() - started < 10
    assert client.train_status()["status"] in ("SUBMITTED", "RUNNING")
    stopped = client.stop_training()
    assert stopped["status"] == "STOPPED"
    assert client.train_status()["status"] == "STOPPED"
    assert client.stop_training() is None  # nothing running any more


# ------------------------------------------------------------------------------- other Pythons


SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
from SonoVLMLib.client import SonoVLMClient, SonoVLMClientError
from SonoVLMLib.replies import server_summary
client = SonoVLMClient(sys.argv[2], download_dir=sys.argv[3])
summary = server_summary(client.info())
mask, result = client.segment(image_id=sys.argv[4], organ="auto")
prediction = client.classify(image_id=sys.argv[4], organ="auto")["prediction"]
try:
    client.segment(image_id="no-such-image")
    error = None
except SonoVLMClientError as exc:
    error = exc.status
with open(mask, "rb") as handle:
    mask_bytes = len(handle.read())
scores = sum(p["score"] for p in prediction)
print(json.dumps({"organs": summary.organs, "mask_bytes": mask_bytes, "organ": result["organ"],
                  "scores": scores, "error": error}))
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "python", other_pythons() or [pytest.param(None, marks=pytest.mark.skip("no Python 3.9/3.12/3.13 here"))]
)
def test_client_runs_on_slicers_pythons_without_third_party_packages(python, sonovlm_server, tmp_path):
    image_id = unlabelled_ids(sonovlm_server)[0]
    run = subprocess.run(
        [python, "-I", "-c", SCRIPT, str(MODULE_DIR), sonovlm_server.url, str(tmp_path), image_id],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["mask_bytes"] > 0 and out["scores"] == pytest.approx(1.0) and out["error"] == 404
    assert out["organs"][0] == "auto" and out["organ"] in out["organs"]


# ------------------------------------------------------------------------------- HTTP edge cases


class _Scripted(BaseHTTPRequestHandler):
    """Answers by path: each path is one kind of reply the client must handle."""

    seen_headers: dict = {}

    def _answer(self):
        type(self).seen_headers = dict(self.headers)
        if self.headers.get("Content-Length"):
            self.rfile.read(int(self.headers["Content-Length"]))
        replies = {
            "/detail": (422, "application/json", json.dumps({"detail": "frame: frame 9 is out of range"})),
            "/validation": (
                422,
                "application/json",
                json.dumps({"detail": [{"loc": ["body"], "msg": "field required"}]}),
            ),
            "/crash": (500, "text/plain", "Internal Server Error"),
            "/notjson": (200, "text/html", "<html>proxy login</html>"),
            "/info/": (200, "application/json", json.dumps({"name": "scripted"})),
            "/infer/segmentation": (
                200,
                "application/json",
                json.dumps({"organ": "lymph_node", "mask": None}),
            ),
        }
        if self.path.startswith("/slow"):
            time.sleep(1.5)
        status, content_type, body = replies.get(self.path.split("?")[0], (200, "application/json", "{}"))
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    "path, status, message",
    [
        ("/detail", 422, "frame: frame 9 is out of range"),
        ("/validation", 422, "field required"),
        ("/crash", 500, "Internal Server Error"),
        ("/notjson", 200, "expected JSON"),
    ],
)
def test_error_replies_become_one_exception_type(scripted_server, path, status, message):
    client = SonoVLMClient(scripted_server, timeout=5)
    with pytest.raises(SonoVLMClientError) as raised:
        client._json("GET", path)
    assert raised.value.status == status and message in raised.value.message
    assert str(status) in str(raised.value)


def test_segment_reply_without_a_mask_gives_none_and_the_json(scripted_server):
    mask_path, result = SonoVLMClient(scripted_server, timeout=5).segment(image_id="x", organ="lymph_node")
    assert mask_path is None and result == {"organ": "lymph_node", "mask": None}


def test_bearer_token_is_sent_when_set(scripted_server):
    client = SonoVLMClient(scripted_server, timeout=5, token="abc.def")
    assert client.info() == {"name": "scripted"}
    assert _Scripted.seen_headers.get("Authorization") == "Bearer abc.def"
    SonoVLMClient(scripted_server, timeout=5).info()
    assert "Authorization" not in _Scripted.seen_headers


def _closed_port() -> int:
    """A port nothing listens on (bound and released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_timeout_and_unreachable_server_have_no_status(scripted_server):
    with pytest.raises(SonoVLMClientError) as raised:
        SonoVLMClient(scripted_server, timeout=0.3)._json("GET", "/slow")
    assert raised.value.status is None
    with pytest.raises(SonoVLMClientError) as raised:
        SonoVLMClient(f"http://127.0.0.1:{_closed_port()}", timeout=2).info()
    assert raised.value.status is None and "cannot reach" in raised.value.message


def test_bad_server_url_is_refused():
    for url in ("127.0.0.1:8000", "ftp://host", "http://"):
        with pytest.raises(ValueError, match="server URL"):
            SonoVLMClient(url)


def test_multipart_reply_parsed_byte_exact(tmp_path):
    """The server's encoder (requests_toolbelt's MultipartEncoder, as MONAI Label uses it) with
    binary payloads full of CR/LF and boundary-like bytes."""
    from requests_toolbelt import MultipartEncoder

    client = SonoVLMClient("http://127.0.0.1:1", download_dir=str(tmp_path))
    rng = np.random.default_rng(2)
    for trial in range(25):
        payload = (
            b"\r\n--\r\n"
            + rng.integers(0, 256, int(rng.integers(0, 4000)), dtype=np.uint8).tobytes()
            + b"\r\n"
        )
        (tmp_path / "src.bin").write_bytes(payload)
        params = {"organ": "lymph_node", "trial": trial, "note": "é"}
        with open(tmp_path / "src.bin", "rb") as handle:
            encoder = MultipartEncoder(
                fields={
                    "params": (None, json.dumps(params), "application/json"),
                    "image": (f"tmp{trial}.nrrd", handle, "application/octet-stream"),
                }
            )
            body = encoder.to_string()
        mask_path, result = client._multipart_result(encoder.content_type, body)
        assert result == params
        assert Path(mask_path).name == f"tmp{trial}.nrrd" and Path(mask_path).read_bytes() == payload
