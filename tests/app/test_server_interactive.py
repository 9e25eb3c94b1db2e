"""End to end: the ``interactive`` (deepgrow) and ``propagate`` tasks of a real server, driven over
HTTP with the stock Slicer plugin's parameter names.

The server serves a published checkpoint whose interaction encoder has non-zero (random) output
layers, so clicks, boxes and previous masks change the mask: every result is compared with the same
checkpoint run in process on prompts converted by hand, which fails if the server drops a prompt,
swaps i and j, or does not sort a reversed ROI pair.
"""

from __future__ import annotations

import json
import time

import nrrd
import numpy as np
import pytest
import requests
import torch
from monailabel.client import MONAILabelClient
from PIL import Image
from requests_toolbelt.multipart.decoder import MultipartDecoder
from sonovlm.app.model_store import ModelStore
from sonovlm.io import load_image
from sonovlm.model import Predictor, load_model
from sonovlm.model.checkpoint import save_checkpoint
from sonovlm.model.interaction import Interaction

from tests.dicom_factory import RegionSpec, bmode_frame, cine_us_dicom, us_dataset, write_dataset
from tests.server_fixture import make_studies

pytestmark = pytest.mark.slow

GEO_ROWS, GEO_COLS = 72, 120
GEO_SPACING = (0.2, 0.3)  # (row_mm, col_mm): anisotropic, so a swapped axis shows
GEO_REGION = (4, 2, 110, 68)  # inclusive DICOM corners
CINE_FRAMES, CINE_ROWS, CINE_COLS = 5, 64, 80
CINE_SPACING = (0.2, 0.2)
LONG_FRAMES = 150  # long enough that a poll lands while the propagation runs


def geo_image(path):
    """A non-square calibrated frame with a dark lesion off-centre, imaging region off-centre."""
    frame = bmode_frame(GEO_ROWS, GEO_COLS, seed=3, text=False)
    yy, xx = np.ogrid[:GEO_ROWS, :GEO_COLS]
    frame[((yy - 30) / 12) ** 2 + ((xx - 40) / 25) ** 2 < 1] = 10
    ds = us_dataset(frame, regions=[RegionSpec(GEO_REGION, spacing_mm=GEO_SPACING)], seed=3)
    return write_dataset(ds, path)


def interaction_model():
    """The ``tiny`` model with a seeded, non-zero interaction encoder (prompts change the mask)."""
    model = load_model(backbone="tiny", adapter="mona")
    generator = torch.Generator().manual_seed(0)
    encoder = model.seg_head.interaction
    with torch.no_grad():
        for layer in (encoder.fine_out, encoder.coarse_out):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * 0.5)
    assert encoder.is_trained
    return model


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    root = make_studies(tmp_path_factory.mktemp("interactive") / "studies", count=2, seed=0)
    cine_us_dicom(
        root / "cine_001.dcm", n_frames=CINE_FRAMES, rows=CINE_ROWS, cols=CINE_COLS, spacing_mm=CINE_SPACING
    )
    geo_image(root / "geo_001.dcm")
    cine_us_dicom(root / "cine_long.dcm", n_frames=LONG_FRAMES, rows=CINE_ROWS, cols=CINE_COLS, seed=5)
    return root


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """``(model_dir, version, predictor)``: the checkpoint the server serves, and it in process."""
    model_dir = tmp_path_factory.mktemp("interactive-model")
    model = interaction_model()
    entry = ModelStore(model_dir).publish(lambda path: save_checkpoint(model, path), source="pytest")
    served = load_model(weights=entry.path)
    return model_dir, entry.version, Predictor(served)


@pytest.fixture(scope="module")
def server(server_factory, studies, published):
    model_dir, _, _ = published
    return server_factory(studies, {"backbone": "tiny", "scoring_delay_s": "0", "model_dir": str(model_dir)})


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    return MONAILabelClient(
        server.url, tmpdir=str(tmp_path_factory.mktemp("client")), client_id="pytest-interactive"
    )


def http_infer(server, model, image, params, label=None, timeout=60):
    files = {"label": (label.name, label.read_bytes())} if label is not None else None
    return requests.post(
        f"{server.url}/infer/{model}",
        params={"image": image},
        data={"params": json.dumps(params)},
        files=files,
        timeout=timeout,
    )


def read_frame_mask(path) -> tuple[np.ndarray, tuple[float, float]]:
    """A one-slice NRRD mask as Slicer reads it: ``(rows, cols)`` and ``(row_mm, col_mm)``."""
    data, header = nrrd.read(str(path))  # x first
    assert data.shape[2] == 1
    directions = np.asarray(header["space directions"], dtype=float)
    return data[:, :, 0].T, (directions[1, 1], directions[0, 0])


def read_cine_mask(path) -> tuple[np.ndarray, np.ndarray]:
    """The propagate NRRD as ``(frames, rows, cols)`` and its header's space directions."""
    data, header = nrrd.read(str(path))  # (cols, rows, frames)
    return np.transpose(data, (2, 1, 0)), np.asarray(header["space directions"], dtype=float)


def test_info_lists_interactive_as_2d_deepgrow(client, published):
    _, version, _ = published
    models = client.info()["models"]
    interactive = models["interactive"]
    assert (interactive["type"], interactive["dimension"]) == ("deepgrow", 2)
    assert interactive["labels"] == {"lymph_node": 1, "breast_lesion": 2, "thyroid_nodule": 3}
    assert interactive["config"]["organ"][0] == "auto" and "frame" in interactive["config"]
    assert interactive["model_version"] == version
    assert models["propagate"]["type"] == "others"


def test_stock_plugin_clicks_and_reversed_roi(client, studies, published):
    """foreground/background [i, j, k], an ROI with reversed pairs, the segment name as ``label``."""
    _, version, predictor = published
    params = {
        "foreground": [[40, 30, 0]],
        "background": [[60, 20, 0]],
        "roi": [70, 10, 55, 8, 0, 0],  # i 10..70, j 8..55 inclusive, pairs reversed
        "label": "lesion",
        "slice": 0,
        "organ": "lymph_node",
    }
    mask_path, result = client.infer("interactive", "geo_001", params)
    assert mask_path.endswith(".nrrd") and result["model_version"] == version
    assert result["interaction"] == {
        "foreground": [[40, 30]],
        "background": [[60, 20]],
        "box": [10, 8, 71, 56],
        "previous_mask": False,
        "ignored_points": 0,
        "ignored_roi": False,
        "interaction_trained": True,
    }
    mask, spacing = read_frame_mask(mask_path)
    assert mask.shape == (GEO_ROWS, GEO_COLS) and spacing == pytest.approx((1.0, 1.0))  # as Slicer
    assert set(np.unique(mask)) <= {0, 1} and result["label"] == 1

    image = load_image(studies / "geo_001.dcm")
    expected = predictor.segment_interactive(
        image, "lymph_node", Interaction([(40, 30)], [(60, 20)], (10, 8, 71, 56)), frame=0
    ).mask
    automatic = predictor.segment(image, "lymph_node", frame=0).mask
    swapped = predictor.segment_interactive(
        image, "lymph_node", Interaction([(30, 40)], [(20, 60)], (8, 10, 56, 71)), frame=0
    ).mask
    assert not np.array_equal(expected, automatic) and not np.array_equal(expected, swapped)
    np.testing.assert_array_equal(mask, expected)


def test_points_on_other_slices_are_ignored(client):
    _, result = client.infer(
        "interactive", "cine_001", {"foreground": [[40, 30, 1], [41, 31, 3]], "slice": 1, "label": "x"}
    )
    assert result["frame"] == 1
    assert result["interaction"]["foreground"] == [[40, 30]] and result["interaction"]["ignored_points"] == 1


def test_previous_mask_uploaded_as_the_label_file(client, studies, published, tmp_path):
    _, _, predictor = published
    previous = np.zeros((GEO_ROWS, GEO_COLS), np.uint8)
    previous[20:42, 20:60] = 1
    path = tmp_path / "previous.png"
    Image.fromarray(previous * 255).save(path)
    mask_path, result = client.infer(
        "interactive", "geo_001", {"organ": "lymph_node", "foreground": [[45, 35, 0]]}, label_in=str(path)
    )
    assert result["interaction"]["previous_mask"] is True
    image = load_image(studies / "geo_001.dcm")
    expected = predictor.segment_interactive(
        image, "lymph_node", Interaction([(45, 35)], previous_mask=previous), frame=0
    ).mask
    without = predictor.segment_interactive(image, "lymph_node", Interaction([(45, 35)]), frame=0).mask
    assert not np.array_equal(expected, without)
    np.testing.assert_array_equal(read_frame_mask(mask_path)[0], expected)


def test_propagate_through_the_cine(client, studies, published, tmp_path):
    _, version, predictor = published
    seed = np.zeros((CINE_ROWS, CINE_COLS), np.uint8)
    seed[20:40, 25:55] = 1
    seed_path = tmp_path / "seed.png"
    Image.fromarray(seed).save(seed_path)
    cine_path, result = client.infer(
        "propagate", "cine_001", {"frame": 2, "organ": "thyroid_nodule"}, label_in=str(seed_path)
    )
    masks, directions = read_cine_mask(cine_path)
    assert masks.shape == (CINE_FRAMES, CINE_ROWS, CINE_COLS)
    np.testing.assert_allclose(np.diag(directions), [1.0, 1.0, 1.0])  # the geometry Slicer gives the DICOM
    assert set(np.unique(masks)) <= {0, 3} and result["label"] == 3
    np.testing.assert_array_equal(masks[2] != 0, seed != 0)
    assert (result["n_frames"], result["rows"], result["cols"]) == (CINE_FRAMES, CINE_ROWS, CINE_COLS)
    assert result["seed_frame"] == 2 and result["model_version"] == version
    confidence = result["confidence"]
    assert len(confidence) == CINE_FRAMES and confidence[2] == 1.0
    assert all(isinstance(c, float) and 0.0 <= c <= 1.0 for c in confidence)
    assert result["review_first"] == sorted(range(CINE_FRAMES), key=lambda f: (confidence[f], f))
    assert result["lesion_pixels"] == [int((m != 0).sum()) for m in masks]

    image = load_image(studies / "cine_001.dcm")
    expected = predictor.propagate(image, "thyroid_nodule", 2, Interaction(previous_mask=seed))
    assert [r.frame for r in expected] == list(range(CINE_FRAMES))
    for frame_result in expected:
        np.testing.assert_array_equal(masks[frame_result.frame] != 0, frame_result.mask != 0)
        assert confidence[frame_result.frame] == pytest.approx(frame_result.confidence, abs=1e-6)

    # The multi-frame result goes back as the previous mask of one frame (Slicer's labelmap of the cine).
    _, again = client.infer("interactive", "cine_001", {"frame": 3}, label_in=cine_path)
    assert again["interaction"]["previous_mask"] is True and again["frame"] == 3


def test_propagate_a_range_seeded_by_clicks(client):
    cine_path, result = client.infer(
        "propagate", "cine_001", {"foreground": [[40, 30, 1]], "first_frame": 1, "last_frame": 3}
    )
    masks, _ = read_cine_mask(cine_path)
    assert masks.shape == (CINE_FRAMES, CINE_ROWS, CINE_COLS)
    assert not masks[0].any() and not masks[4].any()
    assert result["confidence"][0] is None and result["confidence"][4] is None
    assert result["seed_frame"] == 1 and sorted(result["review_first"]) == [1, 2, 3]


def test_bad_prompts_are_4xx_with_a_message(server, tmp_path):
    small = tmp_path / "small.png"
    Image.fromarray(np.ones((GEO_ROWS // 2, GEO_COLS // 2), np.uint8)).save(small)
    cine_small = tmp_path / "cine_small.png"
    Image.fromarray(np.ones((CINE_ROWS + 3, CINE_COLS), np.uint8)).save(cine_small)
    outside = f"outside the {GEO_ROWS} x {GEO_COLS}"
    cases = [
        ("interactive", "geo_001", {"foreground": [[200, 10, 0]]}, None, outside),
        ("interactive", "geo_001", {"background": [[10, -4, 0]]}, None, "outside the"),
        ("interactive", "geo_001", {"foreground": [[1, 1, 0]]}, None, "outside the ultrasound region"),
        ("interactive", "geo_001", {"roi": [50, 50, 10, 30, 0, 0]}, None, "covers less than"),
        ("interactive", "geo_001", {"roi": [300, 400, 10, 30, 0, 0]}, None, "covers less than"),
        ("interactive", "geo_001", {"roi": [1, 2, 3]}, None, "roi"),
        ("interactive", "geo_001", {"foreground": "40,30"}, None, "list of"),
        ("interactive", "geo_001", {"foreground": [[40, 30, 0]]}, small, "does not match"),
        ("interactive", "cine_001", {"slice": CINE_FRAMES}, None, "out of range"),
        ("interactive", "geo_001", {"organ": "liver"}, None, "unknown organ"),
        ("propagate", "cine_001", {"frame": 1}, cine_small, "does not match"),
        ("propagate", "cine_001", {"foreground": [[40, 30, 4]], "last_frame": 3}, None, "seed frame"),
        ("propagate", "cine_001", {"foreground": [[40, 30, 1]], "result_extension": ".png"}, None, ".nrrd"),
        ("interactive", "no_such_image", {"foreground": [[40, 30, 0]]}, None, "not in the datastore"),
    ]
    for model, image, params, label, message in cases:
        response = http_infer(server, model, image, params, label)
        assert 400 <= response.status_code < 500, (params, response.text)
        assert message in response.json()["detail"], (params, response.text)
    assert requests.get(f"{server.url}/info/", timeout=30).status_code == 200  # still serving


def _propagation_reply(response) -> tuple[bytes | None, dict]:
    """``(labelmap bytes or None, JSON)`` of a propagate reply (multipart or JSON alone)."""
    assert response.status_code == 200, response.text
    if not response.headers["Content-Type"].startswith("multipart/"):
        return None, response.json()
    labelmap, params = None, {}
    for part in MultipartDecoder.from_response(response).parts:
        disposition = part.headers[b"Content-Disposition"].decode()
        if "filename=" in disposition:
            labelmap = part.content
        else:
            params = json.loads(part.content)
    return labelmap, params


def _poll(server, job, cancel=False):
    return http_infer(server, "propagate", "cine_long", {"job": job, **({"cancel": True} if cancel else {})})


def test_a_background_propagation_reports_every_frame_while_it_runs(server, client, tmp_path):
    """Issue 15 item 6: per-frame progress a client reads while the cine is propagated; the
    server keeps answering meanwhile; the final reply is the one a blocking request gives."""
    seed = np.zeros((CINE_ROWS, CINE_COLS), np.uint8)
    seed[20:40, 25:55] = 1
    seed_path = tmp_path / "seed.png"
    Image.fromarray(seed).save(seed_path)
    params = {"frame": 70, "organ": "thyroid_nodule"}
    started = http_infer(server, "propagate", "cine_long", {**params, "as_job": True}, label=seed_path)
    _, status = _propagation_reply(started)
    assert status["state"] == "running" and status["image"] == "cine_long" and status["frames_done"] == 0
    job, statuses, info_seen, segmented_during = status["job"], [], False, False
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        labelmap, reply = _propagation_reply(_poll(server, job))
        if labelmap is not None:
            break
        assert reply["state"] == "running" and reply["job"] == job
        statuses.append(reply)
        if not info_seen and reply["frames_done"]:
            listed = requests.get(f"{server.url}/info/", timeout=10).json()["sonovlm"]["propagations"]
            info_seen = any(s["job"] == job for s in listed)
            # A request that needs the model is served between two frames, not after the job.
            assert http_infer(server, "segmentation", "geo_001", {}).status_code == 200
            segmented_during = _propagation_reply(_poll(server, job))[1].get("state") == "running"
        time.sleep(0.02)
    else:
        pytest.fail("the background propagation did not finish in 300 s")
    done = [s["frames_done"] for s in statuses]
    assert done == sorted(done) and any(0 < d < LONG_FRAMES for d in done), done
    assert info_seen and segmented_during  # /info/ and a segmentation answered while it ran
    last = statuses[-1]
    assert last["frames"][0] == 70 and len(last["frames"]) == last["frames_done"]
    assert last["frames_total"] == LONG_FRAMES and last["confidence"]["70"] == 1.0
    assert reply["job"] == job and reply["state"] == "done"

    blocking_path, blocking = client.infer("propagate", "cine_long", params, label_in=str(seed_path))
    for key in ("confidence", "review_first", "lesion_pixels", "model_version"):
        assert reply[key] == blocking[key]
    (tmp_path / "job.nrrd").write_bytes(labelmap)
    np.testing.assert_array_equal(read_cine_mask(tmp_path / "job.nrrd")[0], read_cine_mask(blocking_path)[0])
    response = _poll(server, job)  # collected: forgotten
    assert response.status_code == 404 and "no propagation job" in response.json()["detail"]


def test_a_background_propagation_can_be_cancelled_and_fails_like_a_blocking_one(server):
    started = http_infer(server, "propagate", "cine_long", {"foreground": [[40, 30, 0]], "as_job": True})
    job = _propagation_reply(started)[1]["job"]
    _, status = _propagation_reply(_poll(server, job, cancel=True))
    assert status["state"] in ("cancelling", "cancelled")
    deadline = time.monotonic() + 120
    while status["state"] == "cancelling" and time.monotonic() < deadline:
        _, status = _propagation_reply(_poll(server, job))
    assert status["state"] == "cancelled" and status["frames_done"] < LONG_FRAMES

    bad = {"foreground": [[40, 30, 4]], "last_frame": 3, "as_job": True}
    job = _propagation_reply(http_infer(server, "propagate", "cine_long", bad))[1]["job"]
    deadline = time.monotonic() + 120
    response = _poll(server, job)
    while response.status_code == 200 and time.monotonic() < deadline:
        response = _poll(server, job)
    assert response.status_code == 422 and "seed frame" in response.json()["detail"]
    for params, status_code, words in [
        ({"as_job": "yes"}, 422, "params.as_job"),
        ({"job": 7}, 422, "params.job"),
        ({"job": "no-such-job"}, 404, "no propagation job"),
    ]:
        response = http_infer(server, "propagate", "cine_long", params)
        assert response.status_code == status_code and words in response.json()["detail"]
