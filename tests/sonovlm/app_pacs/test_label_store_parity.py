"""The local and the PACS datastore store the same label the same way (one shared core), on a real Orthanc."""

from __future__ import annotations

import shutil

import pytest
from fastapi import HTTPException
from sonovlm.app.datastore import SonoDatastore
from sonovlm.app.dicomweb import build_datastore

from tests.sonovlm.app_pacs.pacs_helpers import lesion_mask, upload, write_png

SHARED = (
    "organ",
    "pathology",
    "frame",
    "annotated_frames",
    "saved_by",
    "comment",
    "client_id",
    "client_user",
)


@pytest.fixture()
def stores(orthanc, test_data, tmp_path):
    """``(local, pacs, image id in each)``: the same sample in a studies folder and in the PACS."""
    orthanc.reset()
    pacs = upload(orthanc, test_data, tmp_path / "uploads")
    studies = tmp_path / "studies"
    studies.mkdir()
    shutil.copy(pacs.files["examples_rgb_color.dcm"][0], studies / "rgb.dcm")
    local = SonoDatastore(str(studies))
    remote = build_datastore(
        pacs.url, {"dicomweb_cache": str(tmp_path / "cache"), "dicomweb_refresh_s": "3600"}
    )
    return local, remote, {"local": "rgb", "pacs": pacs.uid("examples_rgb_color.dcm")}


def test_the_same_label_gets_the_same_record_in_both(stores, tmp_path):
    local, remote, ids = stores
    label = write_png(tmp_path / "l.png", lesion_mask(240, 320))
    params = {
        "organ": "thyroid_nodule",
        "pathology": "Malignant",
        "user": "ann",
        "client_user": "eve",  # what the annotator wrapper keeps when the signed-in user differs
        "client_id": "slicer",
        "comment": "irregular margin",
        "model_version": "v3",
    }
    for store, key in ((local, "local"), (remote, "pacs")):
        store.save_label(ids[key], label, "final", dict(params))
        store.save_label(ids[key], label, "final", {**params, "pathology": "benign", "user": "bob"})
    info = {
        key: store.get_label_info(ids[key], "final") for store, key in ((local, "local"), (remote, "pacs"))
    }
    for key in SHARED:
        assert info["local"].get(key) == info["pacs"].get(key), key
    assert info["pacs"]["model_version"] == info["local"]["model_version"] == "v3"
    assert info["pacs"]["pathology"] == "benign" and info["pacs"]["saved_by"] == "bob"
    for key in ("local", "pacs"):
        [previous] = info[key]["history"]
        assert (previous["pathology"], previous["saved_by"]) == ("malignant", "ann"), key

    items = {key: store.segmentation_items() for store, key in ((local, "local"), (remote, "pacs"))}
    assert [(i["organ"], i["frame"], i["label_frame"]) for i in items["local"]] == [("thyroid_nodule", 0, 0)]
    assert [(i["organ"], i["frame"], i["label_frame"]) for i in items["pacs"]] == [("thyroid_nodule", 0, 0)]
    assert local.classification_items()[0]["pathology"] == "benign"
    assert {i["image_id"]: i["pathology"] for i in remote.classification_items()} == {ids["pacs"]: "benign"}


@pytest.mark.parametrize("problem", ["wrong size", "unknown organ", "unknown image"])
def test_both_refuse_a_bad_label_alike(stores, tmp_path, problem):
    local, remote, ids = stores
    mask = lesion_mask(100, 100) if problem == "wrong size" else lesion_mask(240, 320)
    label = write_png(tmp_path / "l.png", mask)
    organ = "spleen" if problem == "unknown organ" else "lymph_node"
    answers = []
    for store, key in ((local, "local"), (remote, "pacs")):
        image_id = "1.2.3.4" if problem == "unknown image" else ids[key]
        with pytest.raises(HTTPException) as err:
            store.save_label(image_id, label, "final", {"organ": organ})
        answers.append((err.value.status_code, err.value.detail.replace(repr(image_id), "ID")))
        assert store.get_labeled_images() == []
    assert answers[0] == answers[1]
