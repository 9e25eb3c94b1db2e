"""End to end (issue 17 item 3): a real server scores its studies in batches (``--conf
scoring_batch``) and still writes the per-version score files the strategies read; clicks are
answered while it scores. (That a click is served *inside* a scoring pass is shown by events in
tests/sonovlm/app/test_scoring.py, which can hold a pass at a pause point.)"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from monailabel.client import MONAILabelClient
from monailabel.interfaces.datastore import DefaultLabelTag
from sonovlm.io import load_image
from sonovlm.model import Predictor, load_model

from tests.server_fixture import make_studies

pytestmark = pytest.mark.slow

COUNT = 7
BATCH = 3


@pytest.fixture(scope="module")
def server(server_factory, tmp_path_factory):
    studies = make_studies(tmp_path_factory.mktemp("scoring") / "studies", count=COUNT, seed=1)
    conf = {"backbone": "tiny", "scoring_delay_s": "0", "scoring_batch": str(BATCH)}
    return server_factory(studies, conf)


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    return MONAILabelClient(server.url, tmpdir=str(tmp_path_factory.mktemp("client")), client_id="pytest")


def _wait_idle(client, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        scoring = client.info()["sonovlm"]["scoring"]
        if scoring.get("state") == "idle" and scoring.get("images_total"):
            return scoring
        time.sleep(0.2)
    raise AssertionError(f"scoring did not end: {scoring}")


def _score_files(server, version: str):
    scores = server.studies / ".sonovlm" / "scores"
    [json_path] = [p for p in scores.glob("*.json") if json.loads(p.read_text())["model_version"] == version]
    with np.load(json_path.with_suffix(".npz")) as data:
        embeddings = {str(i): e for i, e in zip(data["ids"], data["embeddings"], strict=True)}
    return json.loads(json_path.read_text())["uncertainty"], embeddings


def test_batched_scoring_writes_the_score_files(server, client):
    scoring = _wait_idle(client)
    version = client.info()["sonovlm"]["model_version"]
    assert scoring["images_done"] == scoring["images_total"] == COUNT
    assert scoring["model_version"] == version
    uncertainty, embeddings = _score_files(server, version)
    objects = client.datastore()["objects"]
    labelled = {i for i, obj in objects.items() if DefaultLabelTag.FINAL.value in obj["labels"]}
    assert sorted(embeddings) == sorted(objects) and 0 < len(labelled) < COUNT
    assert sorted(uncertainty) == sorted(set(objects) - labelled)
    assert all(0.0 < u <= math.log(2) for u in uncertainty.values())
    # The same model in this process, one image at a time: the same embeddings.
    predictor = Predictor(load_model(backbone="tiny", adapter="mona"))
    assert predictor.model_version == version
    for image_id, embedding in embeddings.items():
        expected = predictor.embedding(load_image(server.studies / f"{image_id}.dcm"))
        np.testing.assert_allclose(embedding, expected, rtol=1e-5, atol=1e-6)
    assert f"Scored {COUNT} images" in server.log(400)


def test_a_new_image_is_scored_and_clicks_are_answered_meanwhile(server, client, tmp_path):
    _wait_idle(client)
    version = client.info()["sonovlm"]["model_version"]
    image_id = sorted(client.datastore()["objects"])[0]
    new_id = "added_001"
    client.upload_image(str(server.studies / f"{image_id}.dcm"), new_id)
    client.next_sample("uncertainty", {})  # an image without scores: one more pass starts
    params = {"foreground": [[300, 240, 0]], "background": [], "label": "thyroid_nodule"}
    for _ in range(3):  # answered whether the pass is running or over
        mask, reply = client.infer("interactive", image_id, params)
        assert reply["model_version"] == version and mask
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the .npz is written before the .json: wait for both
        uncertainty, embeddings = _score_files(server, version)
        if new_id in embeddings and new_id in uncertainty:
            break
        time.sleep(0.2)
    uncertainty, embeddings = _score_files(server, version)
    assert new_id in embeddings and new_id in uncertainty
    np.testing.assert_allclose(embeddings[new_id], embeddings[image_id], rtol=1e-5, atol=1e-6)
