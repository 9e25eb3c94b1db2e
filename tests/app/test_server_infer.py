"""End to end: a real server (tiny backbone, sample studies) driven by MONAI Label's own client and
plain HTTP. Info, both infers, mask geometry, labels, strategies and every bad input."""

from __future__ import annotations

import json
import threading
import time

import nibabel as nib
import nrrd
import numpy as np
import pytest
import requests
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException
from PIL import Image
from sonovlm.app.infer import single_lesion
from sonovlm.io import load_image
from sonovlm.model import Predictor, load_model

from tests.dicom_factory import (
    RegionSpec,
    bmode_frame,
    cine_us_dicom,
    jpeg2000_us_dicom,
    us_dataset,
    write_dataset,
)
from tests.server_fixture import make_studies
from tests.sonovlm.io.slicer_files import slicer_nrrd

pytestmark = pytest.mark.slow

GEO_ROWS, GEO_COLS = 72, 120
GEO_SPACING = (0.2, 0.3)  # (row_mm, col_mm): anisotropic, so a swapped axis shows
CINE_FRAMES = 5


def asymmetric_lesion_image(path):
    """A non-square calibrated frame with an L-shaped dark lesion off-centre, imaging region off-centre."""
    frame = bmode_frame(GEO_ROWS, GEO_COLS, seed=3, text=False)
    yy, xx = np.ogrid[:GEO_ROWS, :GEO_COLS]
    lesion = (((yy - 30) / 12) ** 2 + ((xx - 40) / 25) ** 2 < 1) | (
        (yy > 30) & (yy < 55) & (xx > 35) & (xx < 45)
    )
    frame[lesion] = 10
    ds = us_dataset(frame, regions=[RegionSpec((4, 2, 110, 68), spacing_mm=GEO_SPACING)], seed=3)
    return write_dataset(ds, path)


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    root = make_studies(tmp_path_factory.mktemp("infer") / "studies", count=6, seed=0)
    cine_us_dicom(root / "cine_001.dcm", n_frames=CINE_FRAMES, rows=64, cols=80)
    asymmetric_lesion_image(root / "geo_001.dcm")
    return root


@pytest.fixture(scope="module")
def server(server_factory, studies):
    return server_factory(studies, {"backbone": "tiny", "scoring_delay_s": "0"})


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    return MONAILabelClient(
        server.url, tmpdir=str(tmp_path_factory.mktemp("client")), client_id="pytest-sono"
    )


def cases(studies) -> dict[str, dict[str, str]]:
    lines = (studies / "cases.csv").read_text().splitlines()
    header = lines[0].split(",")
    return {row.split(",")[0]: dict(zip(header, row.split(","), strict=True)) for row in lines[1:]}


def unlabelled_sample_id(studies) -> str:
    return next(i for i, row in cases(studies).items() if row["labelled"] == "false")


def http_infer(server, model, image="", params=None, upload=None, timeout=60):
    files = {"file": (upload.name, upload.read_bytes())} if upload is not None else None
    return requests.post(
        f"{server.url}/infer/{model}",
        params={"image": image},
        data={"params": json.dumps(params or {})},
        files=files,
        timeout=timeout,
    )


def put_label(server, image, path, params=None, tag=None):
    query = {"image": image, **({"tag": tag} if tag else {})}
    with open(path, "rb") as fh:
        return requests.put(
            f"{server.url}/datastore/label",
            params=query,
            data={"params": json.dumps(params or {})},
            files={"label": (path.name, fh)},
            timeout=60,
        )


def read_slicer_mask(path) -> tuple[np.ndarray, tuple[float, float] | None]:
    """A returned mask as 3D Slicer reads it: ``(rows, cols)`` and ``(row_mm, col_mm)``."""
    name = str(path)
    if name.endswith(".png"):
        return np.asarray(Image.open(path)), None
    if name.endswith(".nrrd"):
        data, header = nrrd.read(name)  # x first: (i, j, k)
        assert data.shape[2] == 1 and header["dimension"] == 3
        directions = np.asarray(header["space directions"], dtype=float)
        np.testing.assert_allclose(directions, np.diag(np.diag(directions)))  # identity direction
        return data[:, :, 0].T, (directions[1, 1], directions[0, 0])
    image = nib.load(name)
    data = np.asarray(image.dataobj)
    assert data.shape[2] == 1
    zooms = image.header.get_zooms()
    return data[:, :, 0].T, (float(zooms[1]), float(zooms[0]))


def test_info_lists_both_tasks(client):
    info = client.info()
    seg, cls = info["models"]["segmentation"], info["models"]["classification"]
    assert (seg["type"], seg["dimension"]) == ("segmentation", 2)
    assert seg["labels"] == {"lymph_node": 1, "breast_lesion": 2, "thyroid_nodule": 3}
    assert seg["config"]["organ"][0] == "auto" and seg["config"]["result_extension"][0] == ".nrrd"
    assert "prompt" in seg["config"] and "frame" in seg["config"]
    assert cls["type"] == "classification" and cls["labels"] == ["benign", "malignant"]
    for task in (seg, cls):
        assert task["backbone"] == "tiny (untrained)" and task["adapter"] == "mona"
        assert task["model_version"].startswith("init-")
    for trainer in ("segmentation", "classification"):
        config = info["trainers"][trainer]["config"]
        assert {"max_epochs", "train_batch_size", "learning_rate", "val_split"} <= set(config)
        assert config["tracking"] == "none"
    assert set(info["strategies"]) == {"random", "first", "uncertainty", "diversity"}
    assert info["scoring"] == {}


def test_segmentation_of_a_datastore_image(client, studies):
    image_id = unlabelled_sample_id(studies)
    mask_path, result = client.infer("segmentation", image_id, {})
    organ = cases(studies)[image_id]["organ"]
    assert result["organ"] == organ and result["organ_source"] == "recorded"
    assert result["label"] == {"lymph_node": 1, "breast_lesion": 2, "thyroid_nodule": 3}[organ]
    assert 0.0 <= result["confidence"] <= 1.0 and result["model_version"].startswith("init-")
    assert "measurements" in result and mask_path.endswith(".nrrd")
    mask, spacing = read_slicer_mask(mask_path)
    image = load_image(studies / f"{image_id}.dcm")
    assert mask.shape == (image.height, image.width)
    assert set(np.unique(mask)) <= {0, result["label"]}
    # Slicer's geometry of the DICOM (ITK ignores the ultrasound region: 1 mm); calibration in the JSON.
    assert spacing == pytest.approx((1.0, 1.0)) and result["spacing_mm"] == pytest.approx(image.spacing_mm)
    x0, y0, x1, y1 = image.imaging_bbox()
    outside = np.ones(mask.shape, bool)
    outside[y0:y1, x0:x1] = False
    assert not mask[outside].any()  # 0 outside the ultrasound region
    if result["lesion_pixels"]:
        assert result["measurements"]["calibrated"] is True


def test_segmentation_of_an_uploaded_dicom(client, tmp_path):
    path = jpeg2000_us_dicom(tmp_path / "upload.dcm", rows=48, cols=64)
    mask_path, result = client.infer(
        "segmentation", "", {"organ": "breast_lesion", "prompt": "an oval mass"}, file=str(path)
    )
    assert result["organ"] == "breast_lesion" and result["prompt"] == "an oval mass"
    assert read_slicer_mask(mask_path)[0].shape == (48, 64)


def test_cine_frames(client):
    _, default = client.infer("segmentation", "cine_001", {})
    assert (default["frame"], default["n_frames"]) == (CINE_FRAMES // 2, CINE_FRAMES)
    for frame in (0, CINE_FRAMES - 1):
        mask_path, result = client.infer(
            "segmentation", "cine_001", {"frame": frame, "result_extension": ".png"}
        )
        assert result["frame"] == frame and read_slicer_mask(mask_path)[0].shape == (64, 80)


@pytest.mark.parametrize("extension", [".png", ".nrrd", ".nii.gz"])
def test_mask_geometry(client, studies, extension):
    """The mask is the model's output on the frame's own grid, whatever the format."""
    mask_path, result = client.infer(
        "segmentation", "geo_001", {"organ": "lymph_node", "result_extension": extension}
    )
    assert mask_path.endswith(extension)
    mask, spacing = read_slicer_mask(mask_path)
    assert mask.shape == (GEO_ROWS, GEO_COLS)
    if spacing is not None:  # the geometry Slicer gives the DICOM (1 mm); calibration in the JSON
        assert spacing == pytest.approx((1.0, 1.0)) and result["spacing_mm"] == pytest.approx(GEO_SPACING)

    model = load_model(backbone="tiny", adapter="mona")
    assert model.version == result["model_version"]  # the same (untrained, seeded) model
    expected = Predictor(model).segment(load_image(studies / "geo_001.dcm"), "lymph_node").mask
    assert (
        expected.any()
        and not np.array_equal(expected, expected[::-1])
        and not np.array_equal(expected, expected[:, ::-1])
    )
    # The mask sent is the lesion measured: largest component, holes filled (issue 15 item 2).
    np.testing.assert_array_equal(mask, single_lesion(expected, 1))
    assert result["single_lesion"] is True and result["lesion_pixels"] == int((mask != 0).sum())
    if result["measurements"]:
        assert result["measurements"]["area_px"] == result["lesion_pixels"]
    if extension == ".png":  # multi-focal: the model's every component, as predicted
        raw_path, raw = client.infer(
            "segmentation",
            "geo_001",
            {"organ": "lymph_node", "result_extension": ".png", "single_lesion": False},
        )
        np.testing.assert_array_equal(read_slicer_mask(raw_path)[0], expected)
        assert raw["single_lesion"] is False


def test_classification(client, studies):
    image_id = unlabelled_sample_id(studies)
    mask_path, raw = client.infer("classification", image_id, {})
    assert mask_path is None
    result = json.loads(raw) if isinstance(raw, bytes | str) else raw  # JSON-only reply: raw bytes
    labels = [p["label"] for p in result["prediction"]]
    assert labels == ["benign", "malignant"]
    assert sum(p["score"] for p in result["prediction"]) == pytest.approx(1.0)
    assert result["organ"] == cases(studies)[image_id]["organ"]
    assert set(result["prompts"]) == {"benign", "malignant"} and result["prompts"]["malignant"]
    assert result["zero_shot_only"] is True and result["model_version"].startswith("init-")


def test_repeat_requests_use_the_decoded_frame_cache(client, server):
    before = client.info()["sonovlm"]["image_cache"]
    for _ in range(3):
        client.infer("segmentation", "geo_001", {"result_extension": ".png"})
    after = client.info()["sonovlm"]["image_cache"]
    assert after["hits"] - before["hits"] == 3 and after["misses"] == before["misses"]


def test_bad_inputs_are_4xx_with_a_message(server, studies, tmp_path):
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes((studies / "geo_001.dcm").read_bytes()[:-3000])
    not_an_image = tmp_path / "notes.dcm"
    not_an_image.write_text("patient notes, not an image\n" * 20)
    image_id = "geo_001"
    cases_ = [
        (http_infer(server, "segmentation", "no_such_image"), 404, "not in the datastore"),
        (http_infer(server, "classification", "no_such_image"), 404, "not in the datastore"),
        (http_infer(server, "segmentation", upload=not_an_image), 422, "uploaded file"),
        (http_infer(server, "segmentation", upload=truncated), 422, "uploaded file"),
        (http_infer(server, "segmentation", image_id, {"frame": 1}), 422, "out of range"),
        (http_infer(server, "segmentation", "cine_001", {"frame": CINE_FRAMES}), 422, "out of range"),
        (http_infer(server, "segmentation", image_id, {"organ": "liver"}), 422, "unknown organ"),
        (http_infer(server, "classification", image_id, {"organ": "kidney"}), 422, "unknown organ"),
        (http_infer(server, "segmentation", image_id, {"result_extension": ".jpg"}), 422, "result_extension"),
        (http_infer(server, "no_such_model", image_id), 404, "no infer task"),
        (
            requests.post(f"{server.url}/activelearning/no_such_strategy", json={}, timeout=30),
            404,
            "no strategy",
        ),
        (
            requests.put(
                f"{server.url}/datastore/image",
                params={"image": "junk"},
                files={"file": ("junk.dcm", not_an_image.read_bytes())},
                timeout=30,
            ),
            422,
            "uploaded file",
        ),
    ]
    for response, status, message in cases_:
        assert response.status_code == status, response.text
        assert message in response.json()["detail"]
    assert requests.get(f"{server.url}/info/", timeout=30).status_code == 200  # still serving


def test_eight_clients_at_once(server, studies, capsys):
    latencies: list[float] = []
    errors: list[str] = []
    ids = ["geo_001", "cine_001", *cases(studies)]

    def one(n):
        start = time.perf_counter()
        response = http_infer(
            server, "segmentation", ids[n % len(ids)], {"result_extension": ".png"}, timeout=120
        )
        latencies.append(time.perf_counter() - start)
        if response.status_code != 200:
            errors.append(response.text)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(latencies) == 8
    with capsys.disabled():
        print(f"\n8 concurrent segment requests: p95 {np.percentile(latencies, 95):.2f} s (tiny backbone)")


def test_labels_in_slicer_format_and_refusal(server, client, studies, tmp_path):
    image_id = unlabelled_sample_id(studies)
    image = load_image(studies / f"{image_id}.dcm")
    lesion = np.zeros((image.height, image.width), np.uint8)
    lesion[200:260, 300:330] = 1  # an L: tall bar and a foot to the right
    lesion[250:260, 300:380] = 1
    slicer = slicer_nrrd(tmp_path / "Segmentation-label.nrrd", lesion, spacing_mm=image.spacing_mm)
    reply = client.save_label(image_id, str(slicer), params={"pathology": "malignant"})
    organ = cases(studies)[image_id]["organ"]
    assert reply["organ"] == organ and reply["saved_by"] == "pytest-sono" and reply["saved_at"]
    stored = np.asarray(Image.open(studies / "labels" / "final" / f"{image_id}.png"))
    np.testing.assert_array_equal(stored != 0, lesion != 0)
    info = requests.get(
        f"{server.url}/datastore/label/info", params={"label": image_id, "tag": "final"}, timeout=30
    ).json()
    assert info["pathology"] == "malignant" and info["organ"] == organ

    index_before = requests.get(f"{server.url}/datastore/", params={"output": "all"}, timeout=30).json()
    label_before = (studies / "labels" / "final" / f"{image_id}.png").read_bytes()
    wrong = tmp_path / "wrong.png"
    Image.fromarray(np.ones((image.height, image.width + 2), np.uint8)).save(wrong)
    response = put_label(server, image_id, wrong)
    assert response.status_code == 422 and "does not match" in response.json()["detail"]
    response = put_label(server, image_id, slicer, {"organ": "spleen"})
    assert response.status_code == 422 and "unknown organ" in response.json()["detail"]
    response = put_label(server, "no_such_image", slicer)
    assert response.status_code == 404
    assert (
        requests.get(f"{server.url}/datastore/", params={"output": "all"}, timeout=30).json() == index_before
    )
    assert (studies / "labels" / "final" / f"{image_id}.png").read_bytes() == label_before

    # A cine frame; then the previous label goes to history when a new one is saved.
    frame_label = tmp_path / "frame.png"
    Image.fromarray((np.arange(64 * 80).reshape(64, 80) % 7 == 0).astype(np.uint8)).save(frame_label)
    assert put_label(server, "cine_001", frame_label, {"organ": "thyroid_nodule"}).status_code == 422
    assert (
        put_label(server, "cine_001", frame_label, {"organ": "thyroid_nodule", "frame": 1}).status_code == 200
    )
    assert (
        put_label(server, "cine_001", frame_label, {"organ": "thyroid_nodule", "frame": 3}).status_code == 200
    )
    info = requests.get(
        f"{server.url}/datastore/label/info", params={"label": "cine_001", "tag": "final"}, timeout=30
    ).json()
    assert info["frame"] == 3 and [h["frame"] for h in info["history"]] == [1]
    assert (studies / info["history"][0]["file"]).exists()


def test_an_upload_never_overwrites_unless_asked(server, client, tmp_path):
    """PUT /datastore/image to a known id: 409 and nothing changes; ``{"replace": true}`` replaces,
    keeping the old image and its label in history (MONAI Label's own client)."""
    first = jpeg2000_us_dicom(tmp_path / "first.dcm", rows=48, cols=64)
    second = write_dataset(us_dataset(bmode_frame(48, 64, seed=11), seed=11), tmp_path / "second.dcm")
    assert client.upload_image(str(first), "upload_409")["image"] == "upload_409"
    lesion = tmp_path / "lesion.png"
    Image.fromarray(np.pad(np.ones((10, 12), np.uint8), ((5, 33), (7, 45)))).save(lesion)
    assert put_label(server, "upload_409", lesion, {"organ": "breast_lesion"}).status_code == 200

    def stored() -> tuple[bytes, dict]:
        image = requests.get(f"{server.url}/datastore/image", params={"image": "upload_409"}, timeout=30)
        index = requests.get(f"{server.url}/datastore/", params={"output": "all"}, timeout=30).json()
        return image.content, index["objects"]["upload_409"]

    before = stored()
    assert before[0] == first.read_bytes() and "final" in before[1]["labels"]
    with pytest.raises(MONAILabelClientException) as refused:
        client.upload_image(str(second), "upload_409")
    assert "Status: 409" in refused.value.msg and "already in the datastore" in refused.value.msg
    with pytest.raises(MONAILabelClientException) as refused:
        client.upload_image(str(second), "upload_409", params={"replace": "yes"})
    assert "Status: 422" in refused.value.msg and "params.replace" in refused.value.msg
    assert stored() == before

    assert client.upload_image(str(second), "upload_409", params={"replace": True})["image"] == "upload_409"
    image, entry = stored()
    assert image == second.read_bytes() and entry["labels"] == {}  # the label was drawn on another image
    [old] = entry["image"]["info"]["replaced"]
    assert (server.studies / old["file"]).read_bytes() == first.read_bytes()
    assert old["labels"]["final"][-1]["organ"] == "breast_lesion"
    assert (server.studies / old["labels"]["final"][-1]["file"]).exists()


def test_strategies(client, server):
    deadline = time.monotonic() + 60
    while client.info()["sonovlm"]["scoring"]["state"] != "idle" and time.monotonic() < deadline:
        time.sleep(0.5)
    datastore = client.datastore()["objects"]
    unlabelled = {i for i, obj in datastore.items() if "final" not in obj["labels"]}
    assert len(unlabelled) >= 3
    for strategy in ("random", "first", "uncertainty", "diversity"):
        first = client.next_sample(strategy, {})
        second = client.next_sample(strategy, {})
        assert {first["id"], second["id"]} <= unlabelled and first["id"] != second["id"], strategy
        assert first["selected_by"] == strategy and first["path"].endswith(".dcm")
        if strategy in ("uncertainty", "diversity"):
            assert "fallback" not in first and isinstance(first["score"], float), first
            assert first["model_version"].startswith("init-")
    # Another client starts its own walk through the images.
    other = MONAILabelClient(server.url, client_id="someone-else")
    assert other.next_sample("first", {})["id"] == min(unlabelled)


def test_no_unlabelled_images_left_is_404(server, client, tmp_path):
    """Last in this module: labels every image."""
    for image_id, obj in client.datastore()["objects"].items():
        if "final" in obj["labels"]:
            continue
        image = load_image(server.studies / f"{image_id}.dcm")
        mask = np.zeros((image.height, image.width), np.uint8)
        mask[image.height // 3 : image.height // 2, image.width // 3 : image.width // 2] = 1
        path = tmp_path / f"{image_id}.png"
        Image.fromarray(mask).save(path)
        params = {"organ": "lymph_node", "frame": 0}
        assert put_label(server, image_id, path, params).status_code == 200
    for strategy in ("random", "first", "uncertainty", "diversity"):
        with pytest.raises(MONAILabelClientException) as caught:
            client.next_sample(strategy, {})
        assert "Status: 404" in caught.value.msg and "no unlabelled images left" in caught.value.msg


def test_studies_folder_kept_whole(studies):
    index = json.loads((studies / "datastore_v2.json").read_text())
    assert set(index["objects"]) >= {"geo_001", "cine_001"}
    assert not [p for p in studies.iterdir() if ".tmp" in p.name]
