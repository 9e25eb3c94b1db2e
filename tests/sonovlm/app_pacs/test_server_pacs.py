"""End to end: the real SonoVLM app (``monailabel_app/main.py``) with ``--studies
http://127.0.0.1:PORT/dicom-web`` on a real Orthanc.

Checked: US instances listed (not the CT), infer by PACS id (the JPEG 2000 image as stored,
calibrated), ``result_format: dicom_seg`` through ``POST /infer/segmentation`` (over a PACS image, a
local-studies DICOM, and refused for a PNG), a label saved and found in Orthanc as a SEG that decodes
to the submitted mask, next-sample over PACS ids, and no patient identity in the replies or the
server log.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pydicom
import pytest
import requests
from PIL import Image
from requests_toolbelt.multipart.decoder import MultipartDecoder
from sonovlm.dicomseg import read_dicom_seg
from sonovlm.io import save_mask

from tests.server_fixture import make_studies, start_server
from tests.sonovlm.app_pacs.pacs_helpers import lesion_mask, upload


@pytest.fixture(scope="module")
def pacs_server(orthanc, test_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("pacs_server")
    orthanc.reset()
    pacs = upload(orthanc, test_data, root / "uploads")
    server = start_server(
        orthanc.dicomweb_url,
        {"backbone": "tiny", "dicomweb_cache": str(root / "cache"), "dicomweb_refresh_s": "5"},
        work_dir=root / "work",
    )
    try:
        yield server, pacs
    finally:
        server.stop()


@pytest.fixture(scope="module")
def local_server(tmp_path_factory):
    """The same app on a local studies folder (sample DICOMs)."""
    root = tmp_path_factory.mktemp("local_server")
    studies = make_studies(root / "studies", count=2)
    server = start_server(studies, {"backbone": "tiny", "scoring_delay_s": "0"}, work_dir=root / "work")
    try:
        yield server
    finally:
        server.stop()


def _post_infer(url: str, model: str, image_id: str, params: dict, upload=None) -> requests.Response:
    files = {"file": upload} if upload is not None else None
    return requests.post(
        f"{url}/infer/{model}",
        params={"image": image_id},
        data={"params": json.dumps(params)},
        files=files,
        timeout=120,
    )


def _infer(url: str, model: str, image_id: str, params: dict, upload=None) -> tuple[dict, bytes | None]:
    """The JSON reply and the result file (``None`` for a JSON-only reply) of a 200 infer."""
    response = _post_infer(url, model, image_id, params, upload)
    assert response.status_code == 200, response.text
    kind = response.headers["content-type"]
    if not kind.startswith("multipart/"):
        return response.json(), None
    reply, file = {}, None
    for part in MultipartDecoder(response.content, kind).parts:
        if b"application/json" in part.headers.get(b"Content-Type", b""):
            reply = json.loads(part.content)
        else:
            file = part.content
    return reply, file


def _png_mask(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def _check_result_seg(seg_bytes: bytes, source: pydicom.Dataset, reply: dict, png_mask: np.ndarray) -> None:
    """The SEG reply references ``source``, has its geometry and holds the same mask as the PNG reply."""
    assert seg_bytes[128:132] == b"DICM"
    seg = pydicom.dcmread(io.BytesIO(seg_bytes))
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == source.StudyInstanceUID
    read = read_dicom_seg(seg_bytes)
    assert read.source_sop_instance_uid == source.SOPInstanceUID and read.automatic
    assert read.organ == reply["organ"] and read.frames == [reply["frame"]]
    assert (int(seg.Rows), int(seg.Columns)) == (int(source.Rows), int(source.Columns))
    assert read.mask.shape == (reply["rows"], reply["cols"]) == png_mask.shape
    np.testing.assert_array_equal(read.mask, png_mask)
    assert reply["result_format"] == "dicom_seg" and reply["result_extension"] == ".dcm"
    assert int((read.mask != 0).sum()) == reply["lesion_pixels"]


def test_server_over_orthanc(pacs_server):
    server, pacs = pacs_server
    url = server.url
    listing = requests.get(f"{url}/datastore/", params={"output": "all"}, timeout=60).json()
    us = {uid for name, (_, uid) in pacs.files.items() if name != "ct.dcm"}
    assert set(listing["objects"]) == us

    j2k = pacs.uid("j2k.dcm")
    reply, mask_png = _infer(url, "segmentation", j2k, {"organ": "breast_lesion", "result_extension": ".png"})
    assert (reply["rows"], reply["cols"]) == (480, 640)
    assert reply["spacing_mm"] == pytest.approx([0.1, 0.1])  # calibration survived the PACS
    assert mask_png and mask_png.startswith(b"\x89PNG")

    rgb = pacs.uid("examples_rgb_color.dcm")
    mask = lesion_mask(240, 320)
    save_mask(server.work_dir / "label.png", mask)
    png = (server.work_dir / "label.png").read_bytes()
    saved = requests.put(
        f"{url}/datastore/label",
        params={"image": rgb, "tag": "final"},
        files={"label": ("label.png", png, "image/png")},
        data={"params": json.dumps({"organ": "lymph_node", "pathology": "benign", "client_id": "e2e"})},
        timeout=120,
    )
    assert saved.status_code == 200, saved.text
    assert saved.json()["organ"] == "lymph_node"

    (seg,) = pacs.segs()
    read = read_dicom_seg(seg)
    np.testing.assert_array_equal(read.mask, mask)
    assert read.source_sop_instance_uid == rgb and read.pathology == "benign"

    labelled = requests.get(f"{url}/datastore/", timeout=60).json()
    assert labelled["completed"] == 1
    for _ in range(3):
        sample = requests.post(f"{url}/activelearning/random", json={"client_id": "e2e"}, timeout=60)
        assert sample.status_code == 200, sample.text
        assert sample.json()["id"] in us - {rgb}

    bad = requests.put(
        f"{url}/datastore/label",
        params={"image": rgb, "tag": "final"},
        files={"label": ("label.png", png, "image/png")},
        data={"params": json.dumps({"organ": "spleen"})},
        timeout=60,
    )
    assert bad.status_code == 422 and len(pacs.segs()) == 1

    text = json.dumps(listing) + json.dumps(reply) + saved.text + server.log(5000)
    for value in pacs.patient_values:
        assert value not in text, f"patient value {value!r} leaked"


def test_segmentation_as_dicom_seg_helper_over_a_pacs_image(pacs_server):
    """``result_format: dicom_seg`` through the server, on a PACS image: the SEG's mask is the one
    the same request returns as PNG."""
    server, pacs = pacs_server
    uid = pacs.uid("examples_rgb_color.dcm")
    source = pydicom.dcmread(pacs.files["examples_rgb_color.dcm"][0], stop_before_pixels=True)
    params = {"organ": "breast_lesion"}
    reply_png, png = _infer(server.url, "segmentation", uid, {**params, "result_extension": ".png"})
    reply, seg_bytes = _infer(server.url, "segmentation", uid, {**params, "result_format": "dicom_seg"})
    assert seg_bytes is not None and png is not None
    assert reply["organ"] == "breast_lesion" and reply["model_version"] == reply_png["model_version"]
    _check_result_seg(seg_bytes, source, reply, _png_mask(png))


def test_segmentation_as_dicom_seg_of_a_local_study(local_server):
    image_id = sorted(p.stem for p in local_server.studies.glob("*.dcm"))[0]
    source = pydicom.dcmread(local_server.studies / f"{image_id}.dcm", stop_before_pixels=True)
    url, params = local_server.url, {"organ": "thyroid_nodule"}
    _, png = _infer(url, "segmentation", image_id, {**params, "result_extension": ".png"})
    reply, seg_bytes = _infer(url, "segmentation", image_id, {**params, "result_format": "dicom_seg"})
    assert seg_bytes is not None and png is not None
    _check_result_seg(seg_bytes, source, reply, _png_mask(png))


def test_dicom_seg_of_a_png_input_is_422(local_server, tmp_path):
    png = tmp_path / "frame.png"
    Image.fromarray(np.full((40, 60), 90, np.uint8)).save(png)
    response = _post_infer(
        local_server.url,
        "segmentation",
        "",
        {"organ": "lymph_node", "result_format": "dicom_seg"},
        upload=("frame.png", png.read_bytes(), "image/png"),
    )
    assert response.status_code == 422, response.text
    assert "dicom_seg needs a DICOM input" in response.text
    unknown = _post_infer(
        local_server.url,
        "segmentation",
        "",
        {"result_format": "nifti"},
        upload=("frame.png", png.read_bytes(), "image/png"),
    )
    assert unknown.status_code == 422 and "result_format" in unknown.text
