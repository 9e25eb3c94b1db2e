"""The app's datastore: DICOM listed, labels checked before anything is written, atomic index."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from fastapi import HTTPException
from PIL import Image
from sonovlm.app.datastore import SonoDatastore

from tests.dicom_factory import RegionSpec, bmode_frame, cine_us_dicom, us_dataset, write_dataset
from tests.sonovlm.io.slicer_files import slicer_nifti, slicer_nrrd

ROWS, COLS = 40, 56  # not square: a transposed label cannot pass


def l_shape() -> np.ndarray:
    """An asymmetric lesion: an L in the upper left."""
    mask = np.zeros((ROWS, COLS), np.uint8)
    mask[5:25, 8:14] = 1
    mask[20:25, 8:30] = 1
    return mask


@pytest.fixture
def studies(tmp_path):
    folder = tmp_path / "studies"
    folder.mkdir()
    for n in (1, 2):
        ds = us_dataset(
            bmode_frame(ROWS, COLS, seed=n), regions=[RegionSpec((0, 0, COLS - 1, ROWS - 1), (0.2, 0.3))]
        )
        write_dataset(ds, folder / f"case_{n}.dcm")
    Image.fromarray(bmode_frame(ROWS, COLS, seed=3)).save(folder / "still.png")
    cine_us_dicom(folder / "cine.dcm", n_frames=4, rows=ROWS, cols=COLS)
    (folder / "cases.csv").write_text("id,organ,pathology,labelled\ncase_1,thyroid_nodule,malignant,false\n")
    return folder


@pytest.fixture
def store(studies):
    return SonoDatastore(str(studies))


def index_bytes(studies) -> bytes:
    return (studies / "datastore_v2.json").read_bytes()


def save_png(path, mask):
    Image.fromarray(mask).save(path)
    return str(path)


def test_lists_dicom_and_png(store):
    assert sorted(store.list_images()) == ["case_1", "case_2", "cine", "still"]
    assert store.get_image_uri("missing") == ""


def test_label_saved_in_canonical_form_with_who_and_when(store, studies, tmp_path):
    label = save_png(tmp_path / "in.png", l_shape() * 255)
    store.save_label(
        "case_2", label, "final", {"organ": "breast_lesion", "pathology": "Benign", "client_id": "ann"}
    )
    stored = np.asarray(Image.open(studies / "labels" / "final" / "case_2.png"))
    np.testing.assert_array_equal(stored, l_shape() * 2)  # breast_lesion = 2
    info = store.get_label_info("case_2", "final")
    assert info["organ"] == "breast_lesion" and info["pathology"] == "benign"
    assert info["saved_by"] == "ann" and info["saved_at"] and info["history"] == []
    assert (
        json.loads(index_bytes(studies))["objects"]["case_2"]["labels"]["final"]["info"]["saved_by"] == "ann"
    )
    assert store.get_labeled_images() == ["case_2"]


@pytest.mark.parametrize("writer", ["nrrd", "nifti"])
def test_slicer_one_slice_labels(store, studies, tmp_path, writer):
    """3D Slicer submits a 2D image's label as a one-slice volume, x fastest, value 1."""
    if writer == "nrrd":
        path = slicer_nrrd(tmp_path / "label.nrrd", l_shape(), spacing_mm=(0.2, 0.3))
    else:
        path = slicer_nifti(tmp_path / "label.nii.gz", l_shape(), spacing_mm=(0.2, 0.3))
    store.save_label("case_1", str(path), "final", {})
    stored = np.asarray(Image.open(studies / "labels" / "final" / "case_1.png"))
    np.testing.assert_array_equal(stored, l_shape() * 3)  # organ from cases.csv: thyroid_nodule
    assert store.get_label_info("case_1", "final")["organ"] == "thyroid_nodule"


@pytest.mark.parametrize(
    "shape, params, status, message",
    [
        ((ROWS, COLS + 1), {"organ": "lymph_node"}, 422, "does not match"),
        ((COLS, ROWS), {"organ": "lymph_node"}, 422, "does not match"),
        ((ROWS, COLS), {"organ": "liver"}, 422, "unknown organ"),
        ((ROWS, COLS), {"organ": "lymph_node", "pathology": "suspicious"}, 422, "unknown pathology"),
        ((ROWS, COLS), {"organ": "lymph_node", "frame": 3}, 422, "out of range"),
        (None, {"organ": "lymph_node"}, 422, "no lesion"),
    ],
)
def test_bad_labels_change_nothing(store, studies, tmp_path, shape, params, status, message):
    store.save_label("case_2", save_png(tmp_path / "ok.png", l_shape()), "final", {"organ": "lymph_node"})
    before_index = index_bytes(studies)
    before_label = (studies / "labels" / "final" / "case_2.png").read_bytes()
    mask = np.zeros((ROWS, COLS), np.uint8) if shape is None else np.ones(shape, np.uint8)
    with pytest.raises(HTTPException) as caught:
        store.save_label("case_2", save_png(tmp_path / "bad.png", mask), "final", params)
    assert caught.value.status_code == status and message in caught.value.detail
    assert index_bytes(studies) == before_index
    assert (studies / "labels" / "final" / "case_2.png").read_bytes() == before_label
    assert not (studies / ".sonovlm" / "label_history").exists()


def test_organ_needed_when_none_recorded(store, studies, tmp_path):
    with pytest.raises(HTTPException, match="no organ recorded") as caught:
        store.save_label("still", save_png(tmp_path / "l.png", l_shape()), "final", {})
    assert caught.value.status_code == 422
    assert store.get_labeled_images() == []


def test_not_a_mask_file(store, tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(HTTPException) as caught:
        store.save_label("case_2", str(junk), "final", {"organ": "lymph_node"})
    assert caught.value.status_code == 422


def test_unknown_image_is_404(store, tmp_path):
    with pytest.raises(HTTPException) as caught:
        store.save_label("nope", save_png(tmp_path / "l.png", l_shape()), "final", {"organ": "lymph_node"})
    assert caught.value.status_code == 404
    with pytest.raises(HTTPException) as caught:
        store.update_image_info("nope", {"organ": "lymph_node"})
    assert caught.value.status_code == 404


def test_previous_label_kept_as_history(store, studies, tmp_path):
    first = l_shape()
    store.save_label(
        "case_2", save_png(tmp_path / "a.png", first), "final", {"organ": "lymph_node", "user": "a"}
    )
    second = np.zeros_like(first)
    second[30:38, 40:50] = 1
    store.save_label(
        "case_2", save_png(tmp_path / "b.png", second), "final", {"organ": "lymph_node", "user": "b"}
    )
    info = store.get_label_info("case_2", "final")
    assert info["saved_by"] == "b"
    [previous] = info["history"]
    assert previous["saved_by"] == "a"
    np.testing.assert_array_equal(np.asarray(Image.open(studies / previous["file"])), first)
    np.testing.assert_array_equal(np.asarray(Image.open(studies / "labels" / "final" / "case_2.png")), second)


def test_cine_labels(store, studies, tmp_path):
    one = save_png(tmp_path / "one.png", l_shape())
    with pytest.raises(HTTPException, match="give 'frame'") as caught:
        store.save_label("cine", one, "final", {"organ": "lymph_node"})
    assert caught.value.status_code == 422
    store.save_label("cine", one, "final", {"organ": "lymph_node", "frame": 2})
    assert store.get_label_info("cine", "final")["frame"] == 2
    assert store.segmentation_items()[0]["frame"] == 2

    volume = np.zeros((4, ROWS, COLS), np.uint8)
    volume[:, 10:20, 30:40] = 1
    np.save(tmp_path / "all.npy", volume)
    store.save_label(
        "cine", str(tmp_path / "all.npy"), "final", {"organ": "lymph_node", "unannotated_frames": [1]}
    )
    info = store.get_label_info("cine", "final")
    assert info["annotated_frames"] == [0, 2, 3] and "frame" not in info
    items = [i for i in store.segmentation_items() if i["image_id"] == "cine"]
    assert [(i["frame"], i["label_frame"]) for i in items] == [(0, 0), (2, 2), (3, 3)]
    assert (studies / "labels" / "final" / "cine.nrrd").exists()
    with pytest.raises(HTTPException, match="3 slices but the image has 4"):
        np.save(tmp_path / "short.npy", volume[:3])
        store.save_label("cine", str(tmp_path / "short.npy"), "final", {"organ": "lymph_node"})


def test_index_reread_under_lock_no_lost_update(store, studies, tmp_path):
    """Another process (a second datastore object) changes the index; ours must not undo it."""
    other = SonoDatastore(str(studies))
    other.update_image_info("still", {"organ": "lymph_node", "pathology": "benign"})
    store.save_label("case_2", save_png(tmp_path / "l.png", l_shape()), "final", {"organ": "lymph_node"})
    data = json.loads(index_bytes(studies))
    assert data["objects"]["still"]["image"]["info"]["pathology"] == "benign"
    assert "final" in data["objects"]["case_2"]["labels"]
    assert store.recorded_pathology("still") == "benign"
    assert not [p for p in os.listdir(studies) if ".tmp" in p]  # no temporary files left


def test_broken_index_is_set_aside_and_rebuilt(studies):
    (studies / "datastore_v2.json").write_text('{"name": "x", "objects": {"case_1": ')  # a truncated write
    store = SonoDatastore(str(studies))
    assert sorted(store.list_images()) == ["case_1", "case_2", "cine", "still"]
    assert [p.name for p in studies.glob("datastore_v2.json.broken-*")]


def test_training_lists(store, tmp_path):
    store.save_label("case_2", save_png(tmp_path / "l.png", l_shape()), "final", {"organ": "lymph_node"})
    seg = store.segmentation_items()
    assert [(i["image_id"], i["organ"], i["frame"]) for i in seg] == [("case_2", "lymph_node", 0)]
    cls = store.classification_items()
    assert [(i["image_id"], i["pathology"]) for i in cls] == [("case_1", "malignant")]  # from cases.csv


def test_add_image_refuses_non_images(store, tmp_path):
    junk = tmp_path / "upload.dcm"
    junk.write_bytes(b"not an image" * 20)
    with pytest.raises(HTTPException) as caught:
        store.add_image("junk", str(junk), {})
    assert caught.value.status_code == 422 and caught.value.detail.startswith("uploaded file")
    assert "junk" not in store.list_images()


def _upload(tmp_path, name, seed):
    """A calibrated one-frame ultrasound DICOM upload file (bytes differ by ``seed``)."""
    ds = us_dataset(
        bmode_frame(ROWS, COLS, seed=seed), regions=[RegionSpec((0, 0, COLS - 1, ROWS - 1), (0.2, 0.3))]
    )
    return str(write_dataset(ds, tmp_path / name))


def test_an_upload_to_a_known_id_is_409_and_changes_nothing(store, studies, tmp_path):
    store.save_label("case_2", save_png(tmp_path / "l.png", l_shape()), "final", {"organ": "lymph_node"})
    before = (studies / "case_2.dcm").read_bytes(), index_bytes(studies)
    with pytest.raises(HTTPException) as caught:
        store.add_image("case_2", _upload(tmp_path, "new.dcm", seed=9), {"client_id": "ann"})
    assert caught.value.status_code == 409 and "'case_2' is already in the datastore" in caught.value.detail
    assert '{"replace": true}' in caught.value.detail
    assert ((studies / "case_2.dcm").read_bytes(), index_bytes(studies)) == before
    with pytest.raises(HTTPException) as caught:
        store.add_image("case_2", _upload(tmp_path, "new.dcm", seed=9), {"replace": "yes"})
    assert caught.value.status_code == 422 and caught.value.detail.startswith("params.replace")
    assert ((studies / "case_2.dcm").read_bytes(), index_bytes(studies)) == before


def test_replace_with_the_same_bytes_keeps_the_labels(store, studies, tmp_path):
    store.save_label("case_2", save_png(tmp_path / "l.png", l_shape()), "final", {"organ": "lymph_node"})
    same = tmp_path / "case_2.dcm"
    same.write_bytes((studies / "case_2.dcm").read_bytes())
    assert store.add_image("case_2", str(same), {"replace": True, "client_id": "ann"}) == "case_2"
    assert store.get_labeled_images() == ["case_2"]
    info = store.get_image_info("case_2")
    assert "replace" not in info and info["added_by"] == "ann" and len(info["replaced"]) == 1
    assert "labels" not in info["replaced"][0]


def test_replace_with_another_image_keeps_the_old_one_and_its_label_in_history(store, studies, tmp_path):
    store.save_label("case_2", save_png(tmp_path / "l.png", l_shape()), "final", {"organ": "lymph_node"})
    old_image = (studies / "case_2.dcm").read_bytes()
    old_label = (studies / "labels" / "final" / "case_2.png").read_bytes()
    new = _upload(tmp_path, "other.dcm", seed=9)
    assert store.add_image("case_2", new, {"replace": True}) == "case_2"

    assert (studies / "case_2.dcm").read_bytes() == open(new, "rb").read()
    assert store.get_labeled_images() == [] and not (studies / "labels" / "final" / "case_2.png").exists()
    [entry] = store.get_image_info("case_2")["replaced"]
    assert (studies / entry["file"]).read_bytes() == old_image
    [archived] = entry["labels"]["final"]
    assert archived["organ"] == "lymph_node" and (studies / archived["file"]).read_bytes() == old_label
    # Another extension: the old file leaves the images folder (one file per id).
    png = tmp_path / "case_2.png"
    Image.fromarray(bmode_frame(ROWS, COLS, seed=5)).save(png)
    store.add_image("case_2", str(png), {"replace": True})
    assert not (studies / "case_2.dcm").exists() and (studies / "case_2.png").exists()
    assert len(store.get_image_info("case_2")["replaced"]) == 2
    reopened = SonoDatastore(str(studies))
    assert reopened.get_image_uri("case_2").endswith("case_2.png")


@pytest.mark.parametrize("refused", ["write_atomic", "write_bytes_atomic"])  # image file / index
def test_a_refused_image_write_is_503_and_keeps_the_stored_image(
    store, studies, tmp_path, monkeypatch, refused
):
    import sonovlm.app.datastore as module

    store.save_label("case_2", save_png(tmp_path / "l.png", l_shape()), "final", {"organ": "lymph_node"})
    before = (studies / "case_2.dcm").read_bytes(), index_bytes(studies)
    label = (studies / "labels" / "final" / "case_2.png").read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(module, refused, full_disk)
    with pytest.raises(HTTPException) as caught:
        store.add_image("case_2", _upload(tmp_path, "other.dcm", seed=9), {"replace": True})
    assert caught.value.status_code == 503 and "No space left on device" in caught.value.detail
    assert ((studies / "case_2.dcm").read_bytes(), index_bytes(studies)) == before
    assert (studies / "labels" / "final" / "case_2.png").read_bytes() == label
    assert store.get_image_info("case_2").get("replaced") is None and store.get_labeled_images() == ["case_2"]
    assert not list((studies / ".sonovlm").glob("image_history/case_2/*"))
