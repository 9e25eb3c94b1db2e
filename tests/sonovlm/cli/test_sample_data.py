"""``sonovlm sample-data DIR [--count N] [--seed S]``."""

from __future__ import annotations

import csv

import pydicom
from sonovlm.cli.main import main


def test_writes_a_studies_folder(tmp_path, capsys):
    target = tmp_path / "studies"
    assert main(["sample-data", str(target), "--count", "4", "--seed", "11"]) == 0
    out = capsys.readouterr().out
    assert "wrote 4 simulated cases" in out and str(target) in out
    with open(target / "cases.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == ["sample_001", "sample_002", "sample_003", "sample_004"]
    for row in rows:
        ds = pydicom.dcmread(target / f"{row['id']}.dcm")
        assert ds.Modality == "US" and ds.PatientID.startswith("SONOVLM-11-")
        assert (target / "labels" / "final" / f"{row['id']}.png").exists() == (row["labelled"] == "true")


def test_same_seed_through_the_cli_is_byte_identical(tmp_path, capsys):
    for name in ("a", "b"):
        assert main(["sample-data", str(tmp_path / name), "--count", "2", "--seed", "3"]) == 0
    capsys.readouterr()
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_existing_studies_and_bad_count_exit_2(tmp_path, capsys):
    target = tmp_path / "studies"
    assert main(["sample-data", str(target), "--count", "1"]) == 0
    capsys.readouterr()
    before = {p: p.read_bytes() for p in target.rglob("*") if p.is_file()}

    assert main(["sample-data", str(target), "--count", "1", "--seed", "9"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and str(target) in lines[0]
    assert captured.out == ""
    assert {p: p.read_bytes() for p in target.rglob("*") if p.is_file()} == before

    assert main(["sample-data", str(tmp_path / "other"), "--count", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: count")
    assert not (tmp_path / "other").exists()
