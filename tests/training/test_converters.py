"""Converters on small fake copies of each public dataset, laid out as their authors distribute them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sonovlm.errors import SonoInputError

from training.cli import main
from training.data.converters import CONVERTERS
from training.data.layout import PublicLayout


def _image(rng: np.random.Generator, shape=(60, 80)) -> np.ndarray:
    """A smooth random field plus fine noise: structure like an ultrasound picture, unique per call."""
    coarse = Image.fromarray((rng.random((4, 5)) * 255).astype(np.uint8))
    field = np.asarray(coarse.resize((shape[1], shape[0]), Image.Resampling.BICUBIC), dtype=float)
    return np.clip(field * 0.8 + rng.random(shape) * 50, 0, 255).astype(np.uint8)


def _rect(shape, top, left, h, w) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[top : top + h, left : left + w] = 255
    return mask


def _save(path: Path, array: np.ndarray, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)


def _splits(root: Path, task: str, dataset: str) -> dict[str, list[str]]:
    layout = PublicLayout(root)
    return {s: layout.split(task, dataset, s) for s in ("train", "val", "test")}


def _split_of(splits: dict[str, list[str]]) -> dict[str, str]:
    return {name: split for split, names in splits.items() for name in names}


# --------------------------------------------------------------------------------------- BUSI
def make_busi(src: Path) -> Path:
    """Dataset_BUSI_with_GT/{benign,malignant,normal}/name (n).png + _mask.png (+ _mask_1.png)."""
    rng = np.random.default_rng(1)
    root = src / "Dataset_BUSI_with_GT"
    images = {}
    for cls, count in (("benign", 8), ("malignant", 6), ("normal", 3)):
        for n in range(1, count + 1):
            img = _image(rng)
            images[(cls, n)] = img
            _save(root / cls / f"{cls} ({n}).png", np.stack([img] * 3, -1))  # BUSI stores RGB
            mask = _rect(img.shape, 10, 10, 15, 20) if cls != "normal" else np.zeros(img.shape, np.uint8)
            _save(root / cls / f"{cls} ({n})_mask.png", mask)
    _save(root / "benign" / "benign (2)_mask_1.png", _rect((60, 80), 40, 50, 10, 10))  # second lesion
    # the same image under a benign and a malignant name (conflicting labels)
    _save(root / "malignant" / "malignant (6).png", np.stack([images[("benign", 3)]] * 3, -1))
    # a near copy: benign (1) re-encoded as a slightly resized picture, stored as benign (8)
    near = np.asarray(Image.fromarray(images[("benign", 1)]).resize((82, 61)).resize((80, 60)))
    _save(root / "benign" / "benign (8).png", np.stack([near] * 3, -1))
    return src


def test_busi_layout_masks_labels_and_duplicates(tmp_path):
    info = CONVERTERS["busi"](make_busi(tmp_path / "src"), tmp_path / "out", seed=0)
    out = tmp_path / "out"
    seg = _splits(out, "segmentation", "BUSI")
    cls = _splits(out, "classification", "BUSI")
    # normal images: no pathology, not segmented by default
    assert sum(len(v) for v in seg.values()) == 14
    assert not any("normal" in n for v in cls.values() for n in v)
    labels = PublicLayout(out).labels("BUSI")
    assert labels["busi_malignant_0001.png"] == 1 and labels["busi_benign_0001.png"] == 0
    # the two masks of benign (2) are united
    mask = np.asarray(Image.open(out / "all" / "masks" / "busi_benign_0002.png"))
    assert set(np.unique(mask)) == {0, 255}
    assert mask[12, 12] == 255 and mask[45, 55] == 255 and mask[30, 35] == 0
    # images are written grey
    assert np.asarray(Image.open(out / "all" / "images" / "busi_benign_0001.png")).ndim == 2
    # duplicates: found, kept in one split; the conflicting pair leaves classification
    groups = info["duplicate_groups"]
    assert ["busi_benign_0003.png", "busi_malignant_0006.png"] in groups
    assert ["busi_benign_0001.png", "busi_benign_0008.png"] in groups
    where = _split_of(seg)
    for group in groups:
        assert len({where[n] for n in group}) == 1
    assert info["duplicates_with_conflicting_labels"] == [["busi_benign_0003.png", "busi_malignant_0006.png"]]
    assert "busi_benign_0003.png" not in labels and "busi_malignant_0006.png" not in labels
    # every split gets cases; the record is written beside the lists
    assert all(seg[s] for s in ("train", "val", "test"))
    assert (
        json.loads((out / "segmentation" / "BUSI" / "dataset.json").read_text())["organ"] == "breast_lesion"
    )


def test_busi_is_deterministic_and_seeded(tmp_path):
    src = make_busi(tmp_path / "src")
    CONVERTERS["busi"](src, tmp_path / "a", seed=0)
    CONVERTERS["busi"](src, tmp_path / "b", seed=0)
    CONVERTERS["busi"](src, tmp_path / "c", seed=7)
    a, b, c = (_splits(tmp_path / x, "segmentation", "BUSI") for x in "abc")
    assert a == b
    assert a != c


def test_busi_exact_duplicates_only_and_normal_included(tmp_path):
    info = CONVERTERS["busi"](
        make_busi(tmp_path / "src"), tmp_path / "out", near_duplicate_bits=None, include_normal=True
    )
    assert info["duplicate_groups"] == [["busi_benign_0003.png", "busi_malignant_0006.png"]]
    seg = _splits(tmp_path / "out", "segmentation", "BUSI")
    assert sum(len(v) for v in seg.values()) == 17  # normal images with their empty masks


def test_prepare_command_and_bad_source(tmp_path, capsys):
    assert main(["prepare", "busi", str(make_busi(tmp_path / "src")), str(tmp_path / "out")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["dataset"] == "BUSI" and printed["duplicate_groups"] == 2
    (tmp_path / "empty").mkdir()
    assert main(["prepare", "busi", str(tmp_path / "empty"), str(tmp_path / "out2")]) == 2
    assert "not a BUSI folder" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ BUS-BRA
def make_busbra(src: Path, valid_columns: bool) -> Path:
    """BUSBRA/Images/bus_XXXX-s.png, Masks/mask_XXXX-s.png, bus_data.csv, 5-fold-cv.csv."""
    rng = np.random.default_rng(2)
    root = src / "BUSBRA"
    rows, folds = [], []
    for patient in range(1, 11):
        fold = (patient - 1) % 5 + 1
        pathology = "malignant" if patient % 3 == 0 else "benign"
        for side in ("l", "r") if patient % 2 else ("l",):
            case_id = f"bus_{patient:04d}-{side}"
            _save(root / "Images" / f"{case_id}.png", _image(rng))
            _save(root / "Masks" / f"mask_{patient:04d}-{side}.png", _rect((60, 80), 5, 5, 20, 20))
            rows.append(
                {
                    "ID": case_id,
                    "Case": patient,
                    "Histology": "x",
                    "Pathology": pathology,
                    "BIRADS": 4,
                    "Device": "d",
                    "Height": 60,
                    "Width": 80,
                    "Side": side,
                    "BBOX": "0",
                }
            )
            # the fold file's header as the published loaders read it: ID, Pathology, kFold, valid_K
            record = {"ID": case_id, "Pathology": pathology, "kFold": fold}
            if valid_columns:
                for k in range(1, 6):
                    # the official inner split: 0 = validation, 1 = train, NaN on the test fold
                    record[f"valid_{k}"] = "NaN" if fold == k else (0.0 if fold == k % 5 + 1 else 1.0)
            folds.append(record)
    for name, table in (("bus_data.csv", rows), ("5-fold-cv.csv", folds)):
        with (root / name).open("w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
    return src


@pytest.mark.parametrize("valid_columns", [False, True])
def test_busbra_official_folds(tmp_path, valid_columns):
    info = CONVERTERS["bus-bra"](make_busbra(tmp_path / "src", valid_columns), tmp_path / "out", fold=1)
    seg = _splits(tmp_path / "out", "segmentation", "BUS-BRA")
    # patients 1 and 6 are fold 1 (test), 2 and 7 fold 2 (val either way here)
    assert sorted(seg["test"]) == ["busbra_0001-l.png", "busbra_0001-r.png", "busbra_0006-l.png"]
    assert sorted(seg["val"]) == ["busbra_0002-l.png", "busbra_0007-l.png", "busbra_0007-r.png"]
    assert len(seg["train"]) == 15 - 6
    labels = PublicLayout(tmp_path / "out").labels("BUS-BRA")
    assert labels["busbra_0003-l.png"] == 1 and labels["busbra_0001-l.png"] == 0
    assert "fold 1" in info["split_rule"]


def test_busbra_fold_file_without_kfold_is_refused(tmp_path):
    src = make_busbra(tmp_path / "src", False)
    fold_file = src / "BUSBRA" / "5-fold-cv.csv"
    fold_file.write_text(fold_file.read_text().replace("kFold", "fold"))
    with pytest.raises(SonoInputError, match="expected columns ID and kFold.*has ID, Pathology, fold"):
        CONVERTERS["bus-bra"](src, tmp_path / "out")


def test_busbra_missing_fold_file(tmp_path):
    src = make_busbra(tmp_path / "src", False)
    (src / "BUSBRA" / "5-fold-cv.csv").unlink()
    with pytest.raises(SonoInputError, match="5-fold-cv.csv"):
        CONVERTERS["bus-bra"](src, tmp_path / "out")


# --------------------------------------------------------------------------------------- TN3K
def make_tn3k(src: Path, fold_json: bool, labels: bool) -> Path:
    """tn3k/{trainval,test}-{image,mask}/NNNN.jpg, label4*.csv, tn3k-trainval-fold0.json."""
    rng = np.random.default_rng(3)
    root = src / "tn3k"
    for part, count in (("trainval", 10), ("test", 4)):
        lines = []
        for i in range(count):
            _save(root / f"{part}-image" / f"{i:04d}.jpg", _image(rng), quality=90)
            _save(root / f"{part}-mask" / f"{i:04d}.jpg", _rect((60, 80), 20, 20, 16, 24), quality=75)
            lines.append(f"{i:04d}.jpg,{i % 2}\n")
        if labels:
            (root / f"label4{part}.csv").write_text("".join(lines))
    if fold_json:
        (root / "tn3k-trainval-fold0.json").write_text(
            json.dumps({"train": [0, 1, 2, 3, 4, 5, 6, 7], "val": [8, 9]})
        )
    return src


def test_tn3k_official_test_fold_json_labels_and_jpeg_masks(tmp_path):
    CONVERTERS["tn3k"](make_tn3k(tmp_path / "src", True, True), tmp_path / "out")
    out = tmp_path / "out"
    seg = _splits(out, "segmentation", "TN3K")
    assert seg["test"] == [f"tn3k_test_{i:04d}.png" for i in range(4)]
    assert seg["val"] == ["tn3k_trainval_0008.png", "tn3k_trainval_0009.png"]
    assert len(seg["train"]) == 8
    mask = np.asarray(Image.open(out / "all" / "masks" / "tn3k_trainval_0000.png"))
    assert set(np.unique(mask)) == {0, 255}  # JPEG ringing thresholded away
    assert abs(int((mask > 0).sum()) - 16 * 24) <= 16
    labels = PublicLayout(out).labels("TN3K")
    assert labels["tn3k_test_0001.png"] == 1 and labels["tn3k_trainval_0002.png"] == 0


def test_tn3k_fold_json_holds_positions_in_the_sorted_listing_not_ids(tmp_path):
    """As TRFE-Net's dataloaders/tn3k.py reads it: ``sorted(listdir, key=int)[i]``. With a gap in
    the names (no 0003.jpg, 0010.jpg added) position 8 is 0009.jpg and position 9 is 0010.jpg."""
    src = make_tn3k(tmp_path / "src", True, False)
    root = src / "tn3k"
    for folder in ("trainval-image", "trainval-mask"):
        (root / folder / "0003.jpg").rename(root / folder / "0010.jpg")
    CONVERTERS["tn3k"](src, tmp_path / "out")
    seg = _splits(tmp_path / "out", "segmentation", "TN3K")
    assert seg["val"] == ["tn3k_trainval_0009.png", "tn3k_trainval_0010.png"]
    assert "tn3k_trainval_0003.png" not in seg["train"] and len(seg["train"]) == 8


@pytest.mark.parametrize(
    ("folds", "message"),
    [
        ({"train": list(range(8)), "val": [8, 10]}, "outside the 10 images"),
        ({"train": list(range(9)), "val": [8, 9]}, "in both"),
        ({"train": list(range(7)), "val": [8, 9]}, "in neither list"),
        ({"train": [0], "valid": [1]}, "expected"),
    ],
)
def test_tn3k_bad_fold_json_is_refused(tmp_path, folds, message):
    src = make_tn3k(tmp_path / "src", False, False)
    fold_file = src / "tn3k" / "tn3k-trainval-fold0.json"
    fold_file.write_text(json.dumps(folds))
    with pytest.raises(SonoInputError, match=message) as caught:
        CONVERTERS["tn3k"](src, tmp_path / "out")
    assert "tn3k-trainval-fold0.json" in str(caught.value)


def test_tn3k_without_fold_file_or_labels(tmp_path):
    info = CONVERTERS["tn3k"](make_tn3k(tmp_path / "src", False, False), tmp_path / "out", seed=0)
    seg = _splits(tmp_path / "out", "segmentation", "TN3K")
    assert len(seg["test"]) == 4 and seg["val"] and len(seg["train"]) + len(seg["val"]) == 10
    assert not (tmp_path / "out" / "classification" / "TN3K").exists()  # no labels: segmentation only
    assert info["classification_counts"] == {"train": 0, "val": 0, "test": 0}


# --------------------------------------------------------------------------------------- DDTI
def test_ddti_processed_form(tmp_path):
    """The TN-SCUI re-processing: image/ and mask/ (here nested p_image/, p_mask/), category.csv."""
    rng = np.random.default_rng(4)
    stage = tmp_path / "src" / "DDTI dataset" / "2_preprocessed_data" / "stage1"
    for i in range(1, 11):
        _save(stage / "p_image" / f"{i}.PNG", _image(rng))
        _save(stage / "p_mask" / f"{i}.PNG", _rect((60, 80), 10, 10, 10, 10))
    (stage / "category.csv").write_text("ID,CATE\n" + "".join(f"{i}.PNG,1\n" for i in range(1, 11)))
    info = CONVERTERS["ddti"](tmp_path / "src", tmp_path / "out")
    seg = _splits(tmp_path / "out", "segmentation", "DDTI")
    assert sorted(n for v in seg.values() for n in v) == sorted(f"ddti_{i}.png" for i in range(1, 11))
    assert not (tmp_path / "out" / "classification" / "DDTI").exists()  # category.csv is not a pathology
    assert info["organ"] == "thyroid_nodule"


# ------------------------------------------------------------------------------------ generic
def test_generic_csv(tmp_path):
    rng = np.random.default_rng(5)
    src = tmp_path / "src"
    rows = []
    for i in range(9):
        _save(src / "img" / f"case{i}.png", _image(rng))
        _save(src / "msk" / f"case{i}.png", _rect((60, 80), 5, 5, 10, 10))
        rows.append(
            {
                "image": f"img/case{i}.png",
                "mask": f"msk/case{i}.png" if i != 8 else "",
                "label": ["benign", "malignant", "1"][i % 3],
                "split": "test" if i == 0 else "",
                "group": "p1" if i in (0, 1, 2) else f"p{i}",
            }
        )
    with (src / "cases.csv").open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    CONVERTERS["generic"](src / "cases.csv", tmp_path / "out", name="LymphX", organ="lymph_node")
    seg = _splits(tmp_path / "out", "segmentation", "LymphX")
    where = _split_of(seg)
    assert where["lymphx_case0.png"] == where["lymphx_case1.png"] == where["lymphx_case2.png"] == "test"
    assert "lymphx_case8.png" not in where  # no mask: classification only
    labels = PublicLayout(tmp_path / "out").labels("LymphX")
    assert labels["lymphx_case8.png"] == 1 and labels["lymphx_case0.png"] == 0
    assert PublicLayout(tmp_path / "out").organ("segmentation", "LymphX") == "lymph_node"
    with pytest.raises(SonoInputError, match="--name"):
        CONVERTERS["generic"](src / "cases.csv", tmp_path / "out2", organ="lymph_node")


def test_preparation_shows_hashing_and_writing_progress(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SONOVLM_PROGRESS", "1")
    CONVERTERS["busi"](make_busi(tmp_path / "src"), tmp_path / "out")
    err = capsys.readouterr().err
    assert "duplicate hashing" in err and "writing BUSI" in err
