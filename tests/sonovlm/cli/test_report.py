"""``sonovlm report STUDIES --out FILE.csv``."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image
from sonovlm.app.datastore import SonoDatastore
from sonovlm.app.results import ResultLog
from sonovlm.cli.main import main

from tests.dicom_factory import RegionSpec, bmode_frame, us_dataset, write_dataset


def test_report_rows(tmp_path, capsys):
    studies = tmp_path / "studies"
    studies.mkdir()
    for n in (1, 2, 3):
        ds = us_dataset(
            bmode_frame(40, 60, seed=n), regions=[RegionSpec((0, 0, 59, 39), spacing_mm=(0.5, 0.25))]
        )
        write_dataset(ds, studies / f"c{n}.dcm")
    (studies / "cases.csv").write_text(
        "id,organ,pathology,labelled\nc1,lymph_node,benign,false\nc2,thyroid_nodule,malignant,false\n"
    )
    datastore = SonoDatastore(str(studies))
    mask = np.zeros((40, 60), np.uint8)
    mask[10:20, 10:30] = 1  # 10 rows x 20 cols: 5 mm x 5 mm
    Image.fromarray(mask).save(tmp_path / "label.png")
    datastore.save_label("c1", str(tmp_path / "label.png"), "final", {"pathology": "malignant"})
    results = ResultLog(studies / ".sonovlm" / "results")
    results.record(
        "c1",
        "classification",
        {
            "label": "benign",
            "model_version": "v9",
            "prediction": [{"label": "benign", "score": 0.7}, {"label": "malignant", "score": 0.3}],
        },
    )
    results.record("c2", "segmentation", {"frame": 0, "measurements": {"area_mm2": 12.5, "calibrated": True}})

    out = tmp_path / "report.csv"
    assert main(["report", str(studies), "--out", str(out)]) == 0
    assert "3 image(s)" in capsys.readouterr().out
    rows = {row["image_id"]: row for row in csv.DictReader(out.open())}
    assert set(rows) == {"c1", "c2", "c3"}
    c1 = rows["c1"]
    assert (c1["organ"], c1["pathology"], c1["labelled"]) == ("lymph_node", "malignant", "True")
    assert (c1["classification"], c1["malignant_score"], c1["classification_model_version"]) == (
        "benign",
        "0.3",
        "v9",
    )
    assert c1["measurement_source"] == "label" and c1["calibrated"] == "True"
    assert float(c1["area_mm2"]) == pytest.approx(200 * 0.5 * 0.25)
    assert float(c1["area_px"]) == 200
    c2 = rows["c2"]
    assert (c2["organ"], c2["pathology"], c2["labelled"], c2["measurement_source"]) == (
        "thyroid_nodule",
        "malignant",
        "False",
        "model",
    )
    assert float(c2["area_mm2"]) == 12.5
    c3 = rows["c3"]
    assert c3["organ"] == "" and c3["measurement_source"] == "" and c3["classification"] == ""


def test_missing_studies(tmp_path, capsys):
    assert main(["report", str(tmp_path / "none"), "--out", str(tmp_path / "r.csv")]) == 2
    assert "no such studies folder" in capsys.readouterr().err
