"""A 2-process torchrun job with gloo on CPU: DDP training, metrics gathered across ranks."""

from __future__ import annotations

import json
import os
import signal
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
    # own process group, so that a timeout ends the launcher and both ranks, not the launcher alone
    job = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = job.communicate(timeout=420)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        output, _ = job.communicate()
        pytest.fail(f"torchrun job timed out:\n{output[-4000:]}")
    assert job.returncode == 0, output[-4000:]
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["world_size"] == 2 and run_info["device"] == "cpu"
    metrics = json.loads((out / "metrics.json").read_text())
    names = [c["name"] for c in metrics["per_case"]]
    assert names == ["busi_006.png", "busi_007.png", "busi_008.png"]  # all ranks, each case once
    assert metrics["n_cases"] == 3
    history = json.loads((out / "history.json").read_text())
    assert history[0]["train_images"] == 6  # 5 train cases, one padded copy: 3 per rank
    assert (out / "best.safetensors").is_file()
