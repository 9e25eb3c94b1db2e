"""``python -m training multiseed``: 3 seeds x (SonoVLM, UNet, linear probe), mean ± std table."""

from __future__ import annotations

import csv
import json
import re

from training.cli import main

STAGE = ["--backbone", "tiny", "--epochs", "1", "--batch-size", "4", "--bootstrap", "20", "--no-figures"]


def test_three_seeds_three_models_give_mean_and_std_rows(tiny_layout, tmp_path, capsys):
    out = tmp_path / "ms"
    driver = ["multiseed", "--seeds", "0", "1", "2", "--out", str(out), "--"]
    stage = [
        "segmentation",
        "--data-root",
        str(tiny_layout),
        "--dataset",
        "BUSI,TN3K",
        *STAGE,
        "--adapter",
        "lora",
    ]
    assert main([*driver, *stage]) == 0
    for model in ("sonovlm", "unet", "linear-probe"):
        for seed in (0, 1, 2):
            run_info = json.loads((out / model / f"seed_{seed}" / "run.json").read_text())
            assert run_info["settings"]["seed"] == seed and run_info["model"] == model
            assert run_info["counts"] == {"train": 12, "val": 4, "test": 4}  # the same splits
    assert json.loads((out / "unet" / "seed_0" / "run.json").read_text())["adapter"] == "none"
    assert json.loads((out / "sonovlm" / "seed_0" / "run.json").read_text())["adapter"] == "lora"

    table = (out / "comparison.md").read_text()
    number = r"\d+\.\d+ ± \d+\.\d+"
    for label in ("SonoVLM (tiny + lora)", "UNet (MONAI, from scratch)", "linear probe on tiny (frozen)"):
        row = next(line for line in table.splitlines() if line.startswith(f"| {label} | 3 |"))
        assert len(re.findall(number, row)) == 4, row  # Dice, IoU, HD95, ASD
    assert "DICE per dataset" in table and "| model | BUSI | TN3K |" in table

    stats = json.loads((out / "comparison.json").read_text())
    assert stats["seeds"] == [0, 1, 2] and set(stats["models"]) == {"sonovlm", "unet", "linear-probe"}
    dice = stats["models"]["unet"]["metrics"]["all"]["dice"]
    seeds_dice = [
        json.loads((out / "unet" / f"seed_{s}" / "metrics.json").read_text())["dice"] for s in (0, 1, 2)
    ]
    assert dice["values"] == seeds_dice and abs(dice["mean"] - sum(seeds_dice) / 3) < 1e-12
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert {(r["model"], r["scope"]) for r in rows if r["metric"] == "dice"} >= {
        ("sonovlm", "all"),
        ("unet", "BUSI"),
    }

    # the same command again keeps every finished run and rewrites the table
    stamp = (out / "unet" / "seed_1" / "metrics.json").stat().st_mtime_ns
    assert main([*driver, *stage]) == 0
    assert (out / "unet" / "seed_1" / "metrics.json").stat().st_mtime_ns == stamp
    capsys.readouterr()
    # another command on the same folder, or a driver-owned option, is an error
    assert main([*driver, *stage, "--lr", "1e-3"]) == 2
    assert "another command" in capsys.readouterr().err
    assert main(["multiseed", "--out", str(tmp_path / "x"), "--", *stage, "--seed", "3"]) == 2
    assert "--seed: the multi-seed driver sets it" in capsys.readouterr().err
    assert (
        main(
            [
                "multiseed",
                "--models",
                "unet",
                "--out",
                str(tmp_path / "y"),
                "--",
                "classification",
                *stage[1:],
            ]
        )
        == 2
    )
    assert "unet has no classification head" in capsys.readouterr().err
