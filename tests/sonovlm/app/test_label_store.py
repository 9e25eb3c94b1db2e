"""The label-store core both datastores share (no PACS needed: the PACS datastore is built offline)."""

from __future__ import annotations

import numpy as np
import pytest
from monailabel.datastore.local import LocalDatastore
from PIL import Image
from sonovlm.app.datastore import SonoDatastore
from sonovlm.app.dicomweb import build_datastore
from sonovlm.app.label_store import LabelStore, history_after, label_record, merged_params, who
from sonovlm.app.labels import CheckedLabel

from tests.dicom_factory import RegionSpec, bmode_frame, us_dataset, write_dataset

ROWS, COLS = 40, 56


@pytest.fixture
def local(tmp_path) -> SonoDatastore:
    studies = tmp_path / "studies"
    studies.mkdir()
    ds = us_dataset(
        bmode_frame(ROWS, COLS, seed=1), regions=[RegionSpec((0, 0, COLS - 1, ROWS - 1), (0.2, 0.3))]
    )
    write_dataset(ds, studies / "case_1.dcm")
    return SonoDatastore(str(studies))


def lesion(tmp_path) -> str:
    mask = np.zeros((ROWS, COLS), np.uint8)
    mask[5:25, 8:14] = 1
    mask[20:25, 8:30] = 1
    Image.fromarray(mask).save(tmp_path / "label.png")
    return str(tmp_path / "label.png")


def test_both_datastores_are_label_stores_and_monai_labels_is_not(local, tmp_path):
    pacs = build_datastore("http://127.0.0.1:9/dicom-web", {"dicomweb_cache": str(tmp_path / "cache")})
    assert isinstance(local, LabelStore) and isinstance(pacs, LabelStore)
    assert not isinstance(LocalDatastore(str(tmp_path / "studies")), LabelStore)


def test_saved_by_comes_from_the_merged_params(local, tmp_path):
    """The local datastore read ``saved_by`` from the top-level params only, the PACS one from the
    params merged with the model params; both read the merged params now (top level first)."""
    label = lesion(tmp_path)
    local.save_label("case_1", label, "final", {"organ": "lymph_node", "params": {"user": "nested"}})
    assert local.get_label_info("case_1", "final")["saved_by"] == "nested"
    local.save_label(
        "case_1", label, "final", {"organ": "lymph_node", "user": "top", "params": {"user": "x"}}
    )
    info = local.get_label_info("case_1", "final")
    assert info["saved_by"] == "top" and info["history"][-1]["saved_by"] == "nested"
    assert who({}) == "anonymous" and who({"client_id": "ann"}) == "ann"
    assert merged_params({"organ": "a", "params": {"organ": "b", "frame": 1}}) == {
        "organ": "a",
        "frame": 1,
        "params": {"organ": "b", "frame": 1},
    }


def test_label_record_has_pathology_and_frame_only_when_known():
    one = CheckedLabel(np.zeros((2, 2), np.uint8), "lymph_node", None, 3, [3])
    record = label_record(one, {"user": "ann"})
    assert record["organ"] == "lymph_node" and record["annotated_frames"] == [3] and record["frame"] == 3
    assert record["saved_by"] == "ann" and record["saved_at"] and "pathology" not in record
    cine = CheckedLabel(np.zeros((4, 2, 2), np.uint8), "breast_lesion", "benign", None, [0, 2])
    record = label_record(cine, {})
    assert record["pathology"] == "benign" and "frame" not in record and record["saved_by"] == "anonymous"


def test_history_after():
    assert history_after(None) == [] and history_after({}) == []
    first = {"organ": "a", "saved_by": "x", "history": []}
    assert history_after(first, file="h/1.png") == [{"file": "h/1.png", "organ": "a", "saved_by": "x"}]
    second = {"organ": "b", "saved_by": "y", "extra": 1, "history": [{"organ": "a"}]}
    assert history_after(second, keys=("organ", "seg")) == [{"organ": "a"}, {"organ": "b"}]
    many = {"organ": "c", "history": [{"n": i} for i in range(25)]}
    kept = history_after(many, limit=20)
    assert len(kept) == 20 and kept[-1] == {"organ": "c"} and kept[0] == {"n": 6}
