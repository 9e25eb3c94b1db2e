"""A 2-process torchrun job with gloo on CPU: DDP training, metrics gathered across ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_process_gloo_run(tmp_path, make_layout):
    # 9 images: 5 train, 1 val, 3 test, so the sampler pads the test split for 2 ranks
    data = make_layout(tmp_path / "data", {"BUSI": 9}, seed=4)
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    launcher = "-m torch.distributed.run --nproc_per_node 2 --standalone -m training"
    options = "--dataset BUSI --backbone tiny --adapter mona --epochs 1 --batch-size 4 --bootstrap 20"
    command = [
        sys.executable,
        *launcher.split(),
        "segmentation",
        "--data-root",
        str(data),
        "--out",
        str(out),
        *options.split(),
    ]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["world_size"] == 2 and run_info["device"] == "cpu"
    metrics = json.loads((out / "metrics.json").read_text())
    names = [c["name"] for c in metrics["per_case"]]
    assert names == ["busi_006.png", "busi_007.png", "busi_008.png"]  # all ranks, each case once
    assert metrics["n_cases"] == 3
    history = json.loads((out / "history.json").read_text())
    assert history[0]["train_images"] == 6  # 5 train cases, one padded copy: 3 per rank
    assert (out / "best.safetensors").is_file()
