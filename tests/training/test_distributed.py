"""A 2-process torchrun job with gloo on CPU: DDP training, metrics gathered across ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _end_ranks(out: Path, grace_s: float = 0.0) -> list[int]:
    """Kill this test's ranks (their command line names its unique run folder) still alive after
    ``grace_s`` seconds; return their process ids."""
    import time

    import psutil

    deadline = time.monotonic() + grace_s
    while True:
        ranks = []
        for process in psutil.process_iter(["pid", "cmdline"]):
            if str(out) in " ".join(process.info["cmdline"] or []):
                ranks.append(process)
        if not ranks or time.monotonic() >= deadline:
            break
        time.sleep(1)
    for process in ranks:
        process.kill()
    return [p.pid for p in ranks]


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
    log = tmp_path / "torchrun.log"
    with log.open("w") as stream:
        job = subprocess.Popen(command, cwd=REPO, env=env, stdout=stream, stderr=subprocess.STDOUT)
        try:
            job.wait(timeout=420)
        except subprocess.TimeoutExpired:
            job.kill()
            job.wait()
            _end_ranks(out)
            pytest.fail(f"torchrun job timed out:\n{log.read_text()[-4000:]}")
    # every rank must have exited too (torchrun starts ranks in their own sessions; a rank hung at
    # exit outlives the launcher)
    leftover = _end_ranks(out, grace_s=30)
    assert not leftover, f"ranks still running after the launcher exited: {leftover}"
    assert job.returncode == 0, log.read_text()[-4000:]
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["world_size"] == 2 and run_info["device"] == "cpu"
    metrics = json.loads((out / "metrics.json").read_text())
    names = [c["name"] for c in metrics["per_case"]]
    assert names == ["busi_006.png", "busi_007.png", "busi_008.png"]  # all ranks, each case once
    assert metrics["n_cases"] == 3
    history = json.loads((out / "history.json").read_text())
    assert history[0]["train_images"] == 6  # 5 train cases, one padded copy: 3 per rank
    assert (out / "best.safetensors").is_file()
