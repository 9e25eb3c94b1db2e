"""The studies folder: layout MONAI Label reads, cases.csv, DICOM content, determinism."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage
from sonovlm.errors import SonoInputError
from sonovlm.io import load_image, load_mask
from sonovlm.organs import ORGAN_LABELS, PATHOLOGIES
from sonovlm.sample_data import CASES_COLUMNS, read_cases, simulate_case, write_sample_studies

COUNT = 12
SEED = 7


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> tuple[Path, list]:
    root = tmp_path_factory.mktemp("studies")
    return root, write_sample_studies(root, count=COUNT, seed=SEED)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_is_a_monai_label_studies_folder(studies):
    root, cases = studies
    assert sorted(p.name for p in root.iterdir()) == sorted(
        ["cases.csv", "labels"] + [f"sample_{i:03d}.dcm" for i in range(1, COUNT + 1)]
    )
    labelled = {c.id for c in cases if c.labelled}
    assert sorted(p.name for p in (root / "labels" / "final").iterdir()) == sorted(
        f"{i}.png" for i in labelled
    )
    for case in cases:
        assert "." not in case.id  # MONAI Label's id is the name without its extension
        assert case.image_path == root / f"{case.id}.dcm"


def test_cases_csv_matches_the_files(studies):
    root, cases = studies
    with open(root / "cases.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0].keys()) == CASES_COLUMNS
    assert [r["id"] for r in rows] == [c.id for c in cases]
    for row, case in zip(rows, cases, strict=True):
        assert row["organ"] in ORGAN_LABELS and row["pathology"] in PATHOLOGIES
        assert row["labelled"] in ("true", "false")
        assert (row["labelled"] == "true") == (root / "labels" / "final" / f"{row['id']}.png").is_file()
        assert (row["organ"], row["pathology"]) == (case.organ, case.pathology)
    # Every organ x pathology appears labelled once and unlabelled once in 12 cases.
    combos = {(r["organ"], r["pathology"], r["labelled"]) for r in rows}
    assert len(combos) == 12
    assert read_cases(root) == cases


def test_dicoms_are_calibrated_synthetic_ultrasound(studies):
    root, cases = studies
    uids = set()
    for case in cases:
        ds = pydicom.dcmread(case.image_path)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.SOPClassUID == UltrasoundImageStorage
        assert ds.Modality == "US"
        assert ds.PhotometricInterpretation == "MONOCHROME2"
        assert (ds.BitsAllocated, ds.BitsStored, ds.SamplesPerPixel) == (8, 8, 1)
        assert (ds.Rows, ds.Columns) == (480, 640)
        assert str(ds.PatientName) == "SONOVLM^SAMPLE"
        assert ds.PatientID.startswith(f"SONOVLM-{SEED}-")
        assert ds.StudyDate == "20240101"
        assert ds.pixel_array.shape == (480, 640) and ds.pixel_array.dtype == np.uint8
        (region,) = ds.SequenceOfUltrasoundRegions
        assert region.RegionDataType == 1
        assert region.PhysicalUnitsXDirection == region.PhysicalUnitsYDirection == 3
        assert 0.005 < region.PhysicalDeltaX < 0.02
        uids.update([ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID])
    assert len(uids) == 3 * len(cases)


def test_sonovlm_io_reads_the_spacing_that_was_written(studies):
    root, cases = studies
    for case in cases:
        ds = pydicom.dcmread(case.image_path)
        written = (
            ds.SequenceOfUltrasoundRegions[0].PhysicalDeltaY * 10,
            ds.SequenceOfUltrasoundRegions[0].PhysicalDeltaX * 10,
        )
        image = load_image(case.image_path)
        assert image.spacing_mm == pytest.approx(written)
        (region,) = image.regions
        assert region.clipped is False
        r = ds.SequenceOfUltrasoundRegions[0]
        assert region.bbox == (
            r.RegionLocationMinX0,
            r.RegionLocationMinY0,
            r.RegionLocationMaxX1 + 1,
            r.RegionLocationMaxY1 + 1,
        )


def test_masks_hold_the_organ_value_inside_the_calibrated_region(studies):
    root, cases = studies
    for case in (c for c in cases if c.labelled):
        image = load_image(case.image_path)
        png = np.asarray(Image.open(case.label_path))
        assert png.shape == (image.height, image.width)
        assert set(np.unique(png)) == {0, ORGAN_LABELS[case.organ]}
        mask = load_mask(case.label_path, shape=(image.height, image.width))
        ys, xs = np.nonzero(mask)
        x0, y0, x1, y1 = image.regions[0].bbox
        assert x0 < xs.min() and xs.max() < x1 - 1 and y0 < ys.min() and ys.max() < y1 - 1


def test_burned_in_annotations_lie_outside_the_region(studies):
    root, cases = studies
    image = load_image(cases[0].image_path)
    frame = image.frames[0]
    x0, y0, x1, y1 = image.regions[0].bbox
    outside = frame.copy()
    outside[y0:y1, x0:x1] = 0
    assert (outside > 100).sum() > 500  # text, ruler and markers that cropping must remove
    assert frame[y0:y1, x0:x1].mean() > 40  # the B-mode image fills the region


def test_same_seed_same_bytes_and_prefix(studies, tmp_path):
    root, _ = studies
    write_sample_studies(tmp_path / "again", count=COUNT, seed=SEED)
    assert _files(tmp_path / "again") == _files(root)
    # Fewer cases: the first ones, byte for byte (each case has its own random stream).
    write_sample_studies(tmp_path / "prefix", count=3, seed=SEED)
    first = _files(tmp_path / "prefix")
    original = _files(root)
    for name, data in first.items():
        if name != "cases.csv":
            assert original[name] == data, name


def test_another_seed_gives_other_images_and_uids(studies, tmp_path):
    root, cases = studies
    other = write_sample_studies(tmp_path / "other", count=1, seed=SEED + 1)
    a = pydicom.dcmread(cases[0].image_path)
    b = pydicom.dcmread(other[0].image_path)
    assert a.SOPInstanceUID != b.SOPInstanceUID and a.PatientID != b.PatientID
    assert not np.array_equal(a.pixel_array, b.pixel_array)


def test_existing_studies_are_never_overwritten(studies, tmp_path):
    root, _ = studies
    before = _files(root)
    with pytest.raises(SonoInputError, match="already holds studies"):
        write_sample_studies(root, count=2, seed=SEED + 5)
    assert _files(root) == before
    # A single stray DICOM or label is enough to refuse.
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "x.dcm").write_bytes(b"")
    with pytest.raises(SonoInputError):
        write_sample_studies(tmp_path / "one", count=1)
    # Unrelated files are fine and left alone.
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / ".gitkeep").write_text("keep")
    write_sample_studies(tmp_path / "kept", count=1)
    assert (tmp_path / "kept" / ".gitkeep").read_text() == "keep"


@pytest.mark.parametrize("count, seed", [(0, 0), (-1, 0), (10000, 0), (2, -1), (1.5, 0)])
def test_bad_count_or_seed(tmp_path, count, seed):
    with pytest.raises(SonoInputError):
        write_sample_studies(tmp_path / "s", count=count, seed=seed)


def test_a_file_as_directory_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SonoInputError, match="not a folder"):
        write_sample_studies(tmp_path / "file", count=1)


def test_read_cases_rejects_bad_rows(tmp_path):
    with pytest.raises(SonoInputError, match="not found"):
        read_cases(tmp_path)
    (tmp_path / "cases.csv").write_text("id,organ,pathology,labelled\na,liver,benign,true\n")
    with pytest.raises(SonoInputError, match="unknown organ"):
        read_cases(tmp_path)
    (tmp_path / "cases.csv").write_text("id,organ,labelled\na,lymph_node,true\n")
    with pytest.raises(SonoInputError, match="missing column"):
        read_cases(tmp_path)
    (tmp_path / "cases.csv").write_text("id,organ,pathology,labelled\na,lymph_node,benign,maybe\n")
    with pytest.raises(SonoInputError, match="true or false"):
        read_cases(tmp_path)


def test_simulate_case_api(studies):
    # simulate_case with the studies' stream for case 0 reproduces its pixels and mask.
    root, cases = studies
    image, mask, meta = simulate_case(
        np.random.default_rng([SEED, 0]), "lymph_node", "benign", annotation="SAMPLE_001"
    )
    assert np.array_equal(image, pydicom.dcmread(cases[0].image_path).pixel_array)
    assert np.array_equal(mask, load_mask(cases[0].label_path))
    ys, xs = np.nonzero(mask)
    assert meta.lesion_bbox == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_monai_label_local_datastore_sees_images_and_final_labels(studies, tmp_path):
    from monailabel.datastore.local import LocalDatastore

    root, cases = studies
    copy = tmp_path / "studies"
    shutil.copytree(root, copy)  # the datastore writes its index into the folder
    # The app adds "*.dcm" to MONAI_LABEL_DATASTORE_FILE_EXT (its default lacks it).
    datastore = LocalDatastore(str(copy), extensions=["*.dcm", "*.png"], auto_reload=False)
    assert sorted(datastore.list_images()) == [c.id for c in cases]
    assert sorted(datastore.get_labeled_images()) == [c.id for c in cases if c.labelled]
    pairs = {Path(d["image"]).name: Path(d["label"]).name for d in datastore.datalist()}
    assert pairs == {f"{c.id}.dcm": f"{c.id}.png" for c in cases if c.labelled}
