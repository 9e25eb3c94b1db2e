"""The extension client's ``interactive`` and ``propagate`` against a real server (tiny backbone):
params in the stock plugin's form, a previous mask uploaded as ``label``, a cine propagated."""

from __future__ import annotations

import nrrd
import numpy as np
import pytest
from PIL import Image
from SonoVLMLib.client import SonoVLMClient, SonoVLMClientError, interaction_params

from tests.dicom_factory import cine_us_dicom

FRAMES, ROWS, COLS = 4, 64, 80


@pytest.fixture
def client(sonovlm_server, tmp_path):
    return SonoVLMClient(
        sonovlm_server.url, timeout=60, client_id="pytest-interactive", download_dir=str(tmp_path)
    )


@pytest.fixture
def cine(tmp_path):
    return str(cine_us_dicom(tmp_path / "cine.dcm", n_frames=FRAMES, rows=ROWS, cols=COLS))


def test_interaction_params_in_the_stock_plugin_form():
    params = interaction_params(
        foreground=[(40.4, 29.6, 1.0)],
        background=[[10, 12]],
        roi=[50.2, 20, 40, 10],
        frame=1,
        organ="lymph_node",
    )
    assert params == {
        "organ": "lymph_node",
        "measure": False,  # the extension measures the segment itself
        "foreground": [[40, 30, 1]],
        "background": [[10, 12]],
        "roi": [50, 20, 40, 10],
        "frame": 1,
        "slice": 1,
    }
    with pytest.raises(ValueError, match=r"\[i, j, k\]"):
        interaction_params(foreground=[[1, 2, 3, 4]])
    with pytest.raises(ValueError, match="roi"):
        interaction_params(roi=[1, 2, 3])


def test_interactive_with_clicks_and_the_current_mask(client, cine, tmp_path):
    previous = np.zeros((ROWS, COLS), np.uint8)
    previous[20:40, 25:55] = 1
    Image.fromarray(previous).save(tmp_path / "current.png")
    mask_path, result = client.interactive(
        file=cine,
        previous_mask=str(tmp_path / "current.png"),
        foreground=[[40, 30, 1]],
        background=[[70, 5, 1]],
        roi=[60, 20, 45, 15, 1, 1],
        frame=1,
        organ="thyroid_nodule",
    )
    assert result["frame"] == 1 and result["organ"] == "thyroid_nodule"
    interaction = result["interaction"]
    assert interaction["foreground"] == [[40, 30]] and interaction["background"] == [[70, 5]]
    assert interaction["box"] == [20, 15, 61, 46] and interaction["previous_mask"] is True
    data, _ = nrrd.read(mask_path)
    assert data.shape == (COLS, ROWS, 1)


def test_propagate_gives_a_mask_and_confidence_per_frame(client, cine, tmp_path):
    seed = np.zeros((ROWS, COLS), np.uint8)
    seed[20:40, 25:55] = 1
    Image.fromarray(seed).save(tmp_path / "seed.png")
    path, result = client.propagate(
        file=cine, seed_mask=str(tmp_path / "seed.png"), frame=1, organ="lymph_node"
    )
    data, _ = nrrd.read(path)
    assert data.shape == (COLS, ROWS, FRAMES)
    np.testing.assert_array_equal(data[:, :, 1].T != 0, seed != 0)
    assert len(result["confidence"]) == FRAMES and result["confidence"][1] == 1.0
    assert sorted(result["review_first"]) == list(range(FRAMES))

    _, ranged = client.propagate(file=cine, foreground=[[40, 30, 2]], first_frame=1, last_frame=2)
    assert ranged["confidence"][0] is None and ranged["confidence"][3] is None


def test_bad_prompts_raise_with_the_servers_message(client, cine):
    with pytest.raises(SonoVLMClientError) as caught:
        client.interactive(file=cine, foreground=[[COLS + 5, 3, 0]], frame=0)
    assert caught.value.status == 422 and "outside the" in caught.value.message
    with pytest.raises(SonoVLMClientError) as caught:
        client.propagate(file=cine, foreground=[[40, 30, 3]], last_frame=2)
    assert caught.value.status == 422 and "seed frame" in caught.value.message


def test_propagation_progress_is_read_while_it_runs_and_it_can_be_cancelled(client, tmp_path):
    """Issue 15 item 6: the frames done so far come from the server while the job runs."""
    long_cine = str(cine_us_dicom(tmp_path / "long.dcm", n_frames=120, rows=ROWS, cols=COLS, seed=4))
    path, status = client.propagate_start(file=long_cine, foreground=[[40, 30, 60]], organ="lymph_node")
    assert path is None and status["state"] == "running"
    seen = []
    while path is None:
        seen.append(status["frames_done"])
        path, status = client.propagate_poll(None, status["job"])
    assert seen == sorted(seen) and any(0 < done < 120 for done in seen), seen
    assert status["state"] == "done" and len(status["confidence"]) == 120
    assert nrrd.read(path)[0].shape == (COLS, ROWS, 120)

    _, status = client.propagate_start(file=long_cine, foreground=[[40, 30, 60]])
    _, status = client.propagate_poll(None, status["job"], cancel=True)
    while status["state"] == "cancelling":
        _, status = client.propagate_poll(None, status["job"])
    assert status["state"] == "cancelled" and status["frames_done"] < 120
    with pytest.raises(SonoVLMClientError) as gone:
        client.propagate_poll(None, status["job"])
    assert gone.value.status == 404
