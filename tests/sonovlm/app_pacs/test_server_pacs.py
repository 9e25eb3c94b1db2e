"""End to end: a real SonoVLM server with ``--studies http://127.0.0.1:PORT/dicom-web`` on a real Orthanc.

The server runs a copy of the app whose ``main.py`` (``PACS_APP`` below) is ``monailabel_app/main.py``
plus the PACS wiring this issue asks the app for: ``init_datastore`` builds the DICOMweb datastore,
the organ lookup and image-id resolution accept it, and the auth fix is installed. Once the app
itself carries that wiring, ``PACS_APP`` can go and the server can run the app as it is.

Checked: US instances listed (not the CT), infer by PACS id (the JPEG 2000 image as stored,
calibrated), ``result_format: dicom_seg``, a label saved and found in Orthanc as a SEG that decodes
to the submitted mask, next-sample over PACS ids, and no patient identity in the replies or the
server log.
"""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pydicom
import pytest
import requests
from requests_toolbelt.multipart.decoder import MultipartDecoder
from sonovlm.dicomseg import read_dicom_seg
from sonovlm.io import save_mask

from tests.server_fixture import start_server
from tests.sonovlm.app_pacs.pacs_helpers import lesion_mask, upload

PACS_APP = '''
"""SonoVLM with the PACS wiring (what monailabel_app/main.py and sonovlm.app.server need)."""

from monailabel.interfaces.app import MONAILabelApp
from sonovlm.app import server
from sonovlm.app.auth import install_auth_fix
from sonovlm.app.dicomweb import DICOMwebUltrasoundDatastore, build_datastore

install_auth_fix()


class SonoVLMPacsApp(server.SonoVLMServer, MONAILabelApp):
    def init_datastore(self):
        if self.studies.startswith(("http://", "https://")):
            return build_datastore(self.studies, self.conf)
        return super().init_datastore()

    def _recorded_organ(self, image_id):
        datastore = self.datastore()
        if image_id and isinstance(datastore, DICOMwebUltrasoundDatastore):
            return datastore.recorded_organ(image_id)
        return super()._recorded_organ(image_id)

    def infer(self, request, datastore=None):
        datastore = datastore or self.datastore()
        image = request.get("image")
        if isinstance(datastore, DICOMwebUltrasoundDatastore) and isinstance(image, str):
            if datastore.has_image(image):
                request = {**request, "image": datastore.get_image_uri(image), "image_id": image}
        return super().infer(request, datastore)
'''


@pytest.fixture(scope="module")
def pacs_server(orthanc, test_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("pacs_server")
    orthanc.reset()
    pacs = upload(orthanc, test_data, root / "uploads")
    work = root / "work"
    (work / "app").mkdir(parents=True)
    (work / "app" / "main.py").write_text(textwrap.dedent(PACS_APP))
    server = start_server(
        orthanc.dicomweb_url,
        {"backbone": "tiny", "dicomweb_cache": str(root / "cache"), "dicomweb_refresh_s": "5"},
        work_dir=work,
    )
    try:
        yield server, pacs
    finally:
        server.stop()


def _infer(url: str, model: str, image_id: str, params: dict) -> tuple[dict, bytes | None]:
    response = requests.post(
        f"{url}/infer/{model}", params={"image": image_id}, data={"params": json.dumps(params)}, timeout=120
    )
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
    """``result_format: dicom_seg`` needs the task's writer to call the helper; until then the
    helper is checked on the instance exactly as the server cached it from the PACS."""
    from sonovlm.app.seg_result import write_result_seg

    server, pacs = pacs_server
    cached = next((server.work_dir.parent / "cache" / "images").glob("*.dcm"))
    source = pydicom.dcmread(cached, stop_before_pixels=True)
    mask = lesion_mask(int(source.Rows), int(source.Columns))
    read = read_dicom_seg(write_result_seg(cached, mask, "breast_lesion", frame=0, model_version="tiny@test"))
    np.testing.assert_array_equal(read.mask, mask * 2)
    assert read.automatic and read.source_sop_instance_uid == source.SOPInstanceUID
