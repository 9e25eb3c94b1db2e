"""The DICOMweb datastore against a real Orthanc with the real ultrasound samples uploaded by STOW-RS."""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi import HTTPException
from sonovlm.app.dicomweb import (
    DICOMwebUltrasoundDatastore,
    build_datastore,
)
from sonovlm.dicomseg import read_dicom_seg, segmentation_to_dicom_seg
from sonovlm.io import load_image, load_mask

from tests.dicom_factory import jpeg2000_us_dicom
from tests.orthanc_fixture import start_orthanc
from tests.sonovlm.app_pacs.pacs_helpers import Pacs, lesion_mask, upload, write_png


@pytest.fixture()
def pacs(orthanc, test_data, tmp_path) -> Pacs:
    orthanc.reset()
    return upload(orthanc, test_data, tmp_path / "uploads")


def datastore(url: str, cache: Path, refresh_s: float = 3600.0) -> DICOMwebUltrasoundDatastore:
    return build_datastore(url, {"dicomweb_cache": str(cache), "dicomweb_refresh_s": str(refresh_s)})


# -- listing and retrieval -------------------------------------------------------------------------


def test_lists_ultrasound_instances_not_ct(pacs, tmp_path):
    store = datastore(pacs.url, tmp_path / "cache")
    listed = set(store.list_images())
    us = {uid for name, (_, uid) in pacs.files.items() if name != "ct.dcm"}
    assert listed == us
    assert pacs.ct_uid not in listed
    assert set(store.get_unlabeled_images()) == us and store.get_labeled_images() == []
    assert store.status()["total"] == len(us) and store.status()["pacs"]["reachable"] is True


def test_building_it_needs_no_network(tmp_path):
    start = time.monotonic()
    store = datastore("http://127.0.0.1:9/dicom-web", tmp_path / "cache")  # port 9: nothing listens
    assert time.monotonic() - start < 2.0
    assert store.list_images() == []
    assert store.status()["pacs"]["reachable"] is False


def test_instances_come_as_stored_and_keep_calibration(pacs, tmp_path):
    store = datastore(pacs.url, tmp_path / "cache")
    for name in ("j2k.dcm", "ExplVR_BigEnd.dcm", "examples_palette.dcm"):
        original, uid = pacs.files[name]
        cached = Path(store.get_image_uri(uid))
        assert cached.read_bytes() == original.read_bytes(), name  # transfer syntax and all
    j2k = load_image(store.get_image_uri(pacs.uid("j2k.dcm")))
    assert j2k.spacing_mm == pytest.approx((0.1, 0.1))
    assert pydicom.dcmread(store.get_image_uri(pacs.uid("j2k.dcm"))).file_meta.TransferSyntaxUID.is_compressed
    palette_here = load_image(pacs.files["examples_palette.dcm"][0])
    palette_pacs = load_image(store.get_image_uri(pacs.uid("examples_palette.dcm")))
    assert palette_pacs.regions == palette_here.regions
    np.testing.assert_array_equal(palette_pacs.frames, palette_here.frames)
    with pytest.raises(HTTPException) as err:
        store.get_image_uri(pacs.ct_uid)
    assert err.value.status_code == 404


# -- labels ----------------------------------------------------------------------------------------


def test_saved_label_is_a_seg_in_the_pacs_and_lists_change_at_once(pacs, tmp_path):
    store = datastore(pacs.url, tmp_path / "cache", refresh_s=3600)  # no re-listing: saving must update
    uid = pacs.uid("examples_rgb_color.dcm")
    mask = lesion_mask(240, 320)
    label = write_png(tmp_path / "label.png", mask * 255)
    store.save_label(
        uid, label, "final", {"organ": "thyroid_nodule", "pathology": "malignant", "user": "alice"}
    )

    assert uid in store.get_labeled_images() and uid not in store.get_unlabeled_images()
    info = store.get_label_info(uid, "final")
    assert info["organ"] == "thyroid_nodule" and info["pathology"] == "malignant"
    assert info["saved_by"] == "alice" and info["pacs"] == "stored"
    assert info["measurements"]["area_px"] == int(mask.sum())

    segs = pacs.segs()
    assert len(segs) == 1
    seg = segs[0]
    assert seg.SOPInstanceUID == info["seg"]
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == uid
    read = read_dicom_seg(seg)
    np.testing.assert_array_equal(read.mask, mask * 3)  # thyroid_nodule's label value
    assert read.organ == "thyroid_nodule" and read.pathology == "malignant"
    code = seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0]
    assert (code.CodingSchemeDesignator, code.CodeValue) == ("SCT", "27925004")

    # saving again keeps the previous label as history and stores a second SEG
    store.save_label(uid, label, "final", {"organ": "thyroid_nodule", "pathology": "benign"})
    again = store.get_label_info(uid, "final")
    assert again["pathology"] == "benign" and again["history"][-1]["pathology"] == "malignant"
    assert len(pacs.segs()) == 2


def test_bad_labels_change_nothing(pacs, tmp_path):
    store = datastore(pacs.url, tmp_path / "cache")
    uid = pacs.uid("examples_rgb_color.dcm")
    before = pacs.server.instance_count()
    wrong_size = write_png(tmp_path / "small.png", lesion_mask(100, 100))
    with pytest.raises(HTTPException) as err:
        store.save_label(uid, wrong_size, "final", {"organ": "lymph_node"})
    assert err.value.status_code == 422 and "does not match" in err.value.detail
    with pytest.raises(HTTPException) as err:
        store.save_label(
            uid, write_png(tmp_path / "ok.png", lesion_mask(240, 320)), "final", {"organ": "spleen"}
        )
    assert err.value.status_code == 422
    with pytest.raises(HTTPException) as err:
        store.save_label("1.2.3.4", wrong_size, "final", {"organ": "lymph_node"})
    assert err.value.status_code == 404
    assert pacs.server.instance_count() == before
    assert store.get_labeled_images() == []
    assert list((tmp_path / "cache" / "outbox").iterdir()) == []


def test_labels_in_the_pacs_are_read_back_for_training(pacs, tmp_path):
    first = datastore(pacs.url, tmp_path / "cache1")
    rgb = pacs.uid("examples_rgb_color.dcm")
    mask = lesion_mask(240, 320)
    first.save_label(rgb, write_png(tmp_path / "l.png", mask), "final", {"organ": "breast_lesion"})

    # A cine label made elsewhere (frames 1 and 3 of 5) stored straight into the PACS.
    cine_path, cine = pacs.files["cine.dcm"]
    cine_masks = {1: lesion_mask(64, 80), 3: np.flipud(lesion_mask(64, 80))}
    seg = segmentation_to_dicom_seg(cine_path, cine_masks, "lymph_node", pathology="benign")
    buffer = io.BytesIO()
    seg.save_as(buffer, write_like_original=False)
    pacs.client().store_bytes(buffer.getvalue())

    fresh = datastore(pacs.url, tmp_path / "cache2")  # another server, empty cache
    assert set(fresh.get_labeled_images()) == {rgb, cine}
    assert fresh.recorded_organ(rgb) == "breast_lesion"
    assert fresh.get_label_info(cine, "final")["annotated_frames"] == [1, 3]
    items = {(i["image_id"], i["frame"]): i for i in fresh.segmentation_items()}
    assert set(items) == {(rgb, 0), (cine, 1), (cine, 3)}
    np.testing.assert_array_equal(load_mask(items[(rgb, 0)]["label"]), mask * 2)
    assert load_image(items[(rgb, 0)]["image"]).height == 240
    from sonovlm.app.labels import read_stored_label

    volume = read_stored_label(items[(cine, 1)]["label"], n_frames=5)
    np.testing.assert_array_equal(volume[1], cine_masks[1] * 1)
    np.testing.assert_array_equal(volume[3], cine_masks[3] * 1)
    assert not volume[[0, 2, 4]].any()
    classification = {i["image_id"]: i["pathology"] for i in fresh.classification_items()}
    assert classification == {cine: "benign"}


def test_whole_cine_label_round_trips_through_the_pacs(pacs, tmp_path):
    store = datastore(pacs.url, tmp_path / "cache")
    cine = pacs.uid("cine.dcm")
    volume = np.zeros((5, 64, 80), np.uint8)
    volume[0] = lesion_mask(64, 80)
    volume[2] = np.fliplr(lesion_mask(64, 80))
    np.save(tmp_path / "cine_label.npy", volume)
    store.save_label(
        cine,
        str(tmp_path / "cine_label.npy"),
        "final",
        {"organ": "lymph_node", "unannotated_frames": [1, 3, 4]},
    )
    (seg,) = pacs.segs()
    read = read_dicom_seg(seg)
    assert read.frames == [0, 2]
    np.testing.assert_array_equal(read.masks[0], volume[0])
    np.testing.assert_array_equal(read.masks[2], volume[2])


def test_no_patient_identity_in_info_replies_or_logs(pacs, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    store = datastore(pacs.url, tmp_path / "cache")
    uid = pacs.uid("examples_rgb_color.dcm")
    store.save_label(
        uid, write_png(tmp_path / "l.png", lesion_mask(240, 320)), "final", {"organ": "lymph_node"}
    )
    replies = [
        store.json(),
        store.status(),
        store.get_label_info(uid, "final"),
        *[store.get_image_info(i) for i in store.list_images()],
    ]
    text = repr(replies) + "\n".join(r.getMessage() for r in caplog.records)
    assert pacs.patient_values, "the samples carry patient values to look for"
    for value in pacs.patient_values:
        assert value not in text
    # the SEG in the PACS does belong to the patient (it is filed in the source's study)
    assert str(pacs.segs()[0].PatientID) == "13US1"


# -- faults ----------------------------------------------------------------------------------------


def test_pacs_going_away_and_coming_back(test_data, tmp_path):
    server = start_orthanc(tmp_path / "pacs")
    try:
        pacs = upload(server, test_data, tmp_path / "uploads")
        store = datastore(pacs.url, tmp_path / "cache", refresh_s=0)
        rgb, palette = pacs.uid("examples_rgb_color.dcm"), pacs.uid("examples_palette.dcm")
        cached = store.get_image_uri(rgb)
        server.stop()

        assert rgb in store.list_images()  # the last listing stays
        assert store.status()["pacs"]["reachable"] is False
        assert store.get_image_uri(rgb) == cached
        with pytest.raises(HTTPException) as err:
            store.get_image_uri(palette)  # never fetched
        assert err.value.status_code == 503 and "cannot be reached" in err.value.detail
        mask = lesion_mask(240, 320)
        store.save_label(rgb, write_png(tmp_path / "l.png", mask), "final", {"organ": "lymph_node"})
        assert store.get_label_info(rgb, "final")["pacs"] == "pending"
        assert rgb in store.get_labeled_images()
        assert len(list((tmp_path / "cache" / "outbox").glob("*.dcm"))) == 1

        server.restart()
        store.refresh()
        assert store.status()["pacs"]["reachable"] is True
        assert store.get_label_info(rgb, "final")["pacs"] == "stored"
        assert list((tmp_path / "cache" / "outbox").glob("*.dcm")) == []
        (seg,) = pacs.segs()
        np.testing.assert_array_equal(read_dicom_seg(seg).mask, mask)
    finally:
        server.stop()


def test_damaged_index_is_rebuilt_with_a_backup(pacs, tmp_path):
    cache = tmp_path / "cache"
    store = datastore(pacs.url, cache)
    uid = pacs.uid("examples_rgb_color.dcm")
    store.save_label(
        uid, write_png(tmp_path / "l.png", lesion_mask(240, 320)), "final", {"organ": "lymph_node"}
    )
    index = cache / "index.json"
    index.write_bytes(index.read_bytes()[: len(index.read_bytes()) // 2])  # truncated mid-write

    again = datastore(pacs.url, cache)
    assert list(cache.glob("index.json.broken-*")), "the damaged index is kept aside"
    assert uid in again.get_labeled_images()
    assert again.get_label_info(uid, "final")["organ"] == "lymph_node"
    assert len(again.list_images()) == 5


def test_seg_deleted_in_the_pacs_unlabels_the_image(pacs, tmp_path):
    import requests

    store = datastore(pacs.url, tmp_path / "cache", refresh_s=0)
    uid = pacs.uid("examples_rgb_color.dcm")
    store.save_label(
        uid, write_png(tmp_path / "l.png", lesion_mask(240, 320)), "final", {"organ": "lymph_node"}
    )
    assert uid in store.get_labeled_images()
    seg_series = store.get_label_info(uid, "final")["seg_series"]
    found = requests.post(f"{pacs.server.url}/tools/lookup", data=seg_series, timeout=10).json()
    requests.delete(f"{pacs.server.url}/series/{found[0]['ID']}", timeout=10).raise_for_status()
    store.refresh()
    assert uid not in store.get_labeled_images() and uid in store.get_unlabeled_images()


def test_a_seg_the_pacs_refuses_is_502_and_nothing_is_kept(pacs, tmp_path, monkeypatch):
    import requests

    store = datastore(pacs.url, tmp_path / "cache")
    uid = pacs.uid("examples_rgb_color.dcm")

    def refuse(data: bytes) -> None:
        response = requests.Response()
        response.status_code = 409
        raise requests.HTTPError("conflict", response=response)

    monkeypatch.setattr(store._client, "store_bytes", refuse)
    with pytest.raises(HTTPException) as err:
        store.save_label(
            uid, write_png(tmp_path / "l.png", lesion_mask(240, 320)), "final", {"organ": "lymph_node"}
        )
    assert err.value.status_code == 502 and "HTTP 409" in err.value.detail
    assert store.get_labeled_images() == []
    assert list((tmp_path / "cache" / "outbox").glob("*.dcm")) == []
    assert pacs.segs() == []


def test_an_instance_the_pacs_has_is_409_and_is_never_replaced_through_sonovlm(pacs, tmp_path, monkeypatch):
    store = datastore(pacs.url, tmp_path / "cache")
    path, uid = pacs.files["j2k.dcm"]
    stored = []
    monkeypatch.setattr(store._client, "store_bytes", stored.append)  # nothing may reach the PACS
    with pytest.raises(HTTPException) as err:
        store.add_image("any-id", str(path), {"client_id": "ann"})
    assert err.value.status_code == 409 and f"image {uid!r} is already in the datastore" in err.value.detail
    with pytest.raises(HTTPException) as err:
        store.add_image("any-id", str(path), {"replace": True})
    assert err.value.status_code == 405 and "change it in the PACS" in err.value.detail
    with pytest.raises(HTTPException) as err:
        store.add_image("any-id", str(path), {"replace": 1})
    assert err.value.status_code == 422 and "params.replace" in err.value.detail
    assert stored == []
    monkeypatch.undo()
    fresh = jpeg2000_us_dicom(tmp_path / "fresh.dcm", seed=99)
    new_uid = str(pydicom.dcmread(fresh, stop_before_pixels=True).SOPInstanceUID)
    assert store.add_image("ignored", str(fresh), {"replace": False, "organ": "thyroid_nodule"}) == new_uid
    assert store.has_image(new_uid) and store.get_image_info(new_uid)["organ"] == "thyroid_nodule"


@pytest.mark.parametrize("refused", ["write_atomic", "write_json_atomic"])  # label cache / index
def test_a_full_cache_disk_is_503_and_keeps_the_previous_label(pacs, tmp_path, monkeypatch, refused):
    """Issue 15 item 5: the PACS datastore fails like the local one (503, previous label kept)."""
    import sonovlm.app.dicomweb as module

    store = datastore(pacs.url, tmp_path / "cache")
    uid = pacs.uid("examples_rgb_color.dcm")
    first = write_png(tmp_path / "first.png", lesion_mask(240, 320))
    store.save_label(uid, first, "final", {"organ": "thyroid_nodule", "pathology": "malignant"})
    before = store.get_label_info(uid, "final")
    cached = Path(store.get_label_uri(uid, "final")).read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(module, refused, full_disk)
    second = write_png(tmp_path / "second.png", lesion_mask(240, 320)[::-1].copy())
    with pytest.raises(HTTPException) as err:
        store.save_label(uid, second, "final", {"organ": "thyroid_nodule", "pathology": "benign"})
    assert err.value.status_code == 503 and "No space left on device" in err.value.detail
    monkeypatch.undo()
    assert store.get_label_info(uid, "final") == before
    assert Path(store.get_label_uri(uid, "final")).read_bytes() == cached
    assert not list((tmp_path / "cache" / "labels" / "final").glob(".*staged*"))
    if refused == "write_atomic":  # refused before anything was sent
        assert "nothing was changed" in err.value.detail and len(pacs.segs()) == 1
    else:  # the PACS took the SEG before the index write failed: the reply says so
        assert "the PACS has the new label" in err.value.detail and len(pacs.segs()) == 2
