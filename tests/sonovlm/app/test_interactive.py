"""The ``interactive`` and ``propagate`` tasks, in process: the stock Slicer plugin's params, the
feature cache across clicks, multi-frame results and bad prompts as HTTP 422."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi import HTTPException
from monailabel.interfaces.tasks.infer_v2 import InferType
from sonovlm.app.config import AppConfig
from sonovlm.app.frames import ImageCache
from sonovlm.app.interactive import InteractiveTask, Point, Roi, parse_points, parse_roi
from sonovlm.app.model_store import ModelStore
from sonovlm.app.propagate import PropagateTask
from sonovlm.app.registry import ModelRegistry
from sonovlm.errors import SonoInputError
from sonovlm.io import UltrasoundImage, UltrasoundRegion, load_mask, save_mask
from sonovlm.io.volume import read_nrrd

REGION = (100, 60, 540, 420)
IMAGE_PATH = "/studies/cine.dcm"


def _cine(frames: int) -> UltrasoundImage:
    rng = np.random.default_rng(0)
    pixels = np.zeros((frames, 480, 640), np.uint8)
    x0, y0, x1, y1 = REGION
    pixels[:, y0:y1, x0:x1] = rng.integers(20, 200, (frames, y1 - y0, x1 - x0))
    for index in range(frames):
        pixels[index, 200:260, 250 + 4 * index : 330 + 4 * index] = 10
    return UltrasoundImage(
        frames=pixels, source=IMAGE_PATH, regions=[UltrasoundRegion(REGION, (0.1, 0.2), data_type=1)]
    )


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("interactive")
    config = AppConfig.from_conf({"backbone": "tiny", "model_dir": str(root / "model")}, root)
    images = {IMAGE_PATH: _cine(3), "/studies/long.dcm": _cine(5)}
    cache = ImageCache(loader=lambda path: images[path])
    registry = ModelRegistry(config, ModelStore(config.model_dir), cache, watch_interval_s=0)
    registry.start()
    return registry


@pytest.fixture
def interactive(registry):
    return InteractiveTask(registry, lambda image_id: None)


@pytest.fixture
def propagate(registry):
    return PropagateTask(registry, lambda image_id: None)


def _spy(registry, monkeypatch) -> list:
    """Record the Interaction each request hands to the predictor."""
    seen = []
    predictor = registry.predictor
    original = predictor.segment_interactive

    def spy(image, organ, interaction, prompt=None, frame=None):
        seen.append((interaction, frame))
        return original(image, organ, interaction, prompt=prompt, frame=frame)

    monkeypatch.setattr(predictor, "segment_interactive", spy)
    return seen


# -------------------------------------------------------------------------------------- parsing
def test_points_and_roi_in_the_stock_plugin_format():
    assert parse_points([[300, 230, 1], [12.4, 7.6]], "foreground") == [
        Point(300, 230, 1),
        Point(12, 8, None),
    ]
    assert parse_points(None, "background") == [] and parse_points([], "background") == []
    # Inclusive, pairs reversed: sorted, ends made exclusive.
    assert parse_roi([340, 240, 270, 190, 2, 0]) == Roi((240, 190, 341, 271), (0, 2))
    assert parse_roi([10, 20, 30, 40]) == Roi((10, 30, 21, 41), None)
    assert parse_roi([]) is None and parse_roi(None) is None


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: parse_points([[1, 2, 3, 4]], "foreground"), r"\[i, j, k\]"),
        (lambda: parse_points("300,230", "foreground"), "list of"),
        (lambda: parse_points([["a", 2]], "background"), "expected a number"),
        (lambda: parse_roi([1, 2, 3]), "i_min, i_max"),
        (lambda: parse_roi([1, 2, 3, None]), "expected a number"),
    ],
)
def test_malformed_prompts(call, message):
    with pytest.raises(SonoInputError, match=message):
        call()


# ------------------------------------------------------------------------------------ interactive
def test_interactive_task_type_and_config(interactive):
    info = interactive.info()
    assert interactive.type == InferType.DEEPGROW and info["dimension"] == 2
    assert set(info["labels"]) == {"lymph_node", "breast_lesion", "thyroid_nodule"}


def test_stock_plugin_request(interactive, registry, monkeypatch):
    seen = _spy(registry, monkeypatch)
    params = {
        "image": IMAGE_PATH,
        "foreground": [[300, 230, 1]],
        "background": [[200, 150, 1], [250, 250, 0]],  # the second is on another slice
        "roi": [340, 240, 270, 190, 2, 0],
        "slice": 1,
        "label": "lesion",  # the segment's name, not a file
        "organ": "thyroid_nodule",
    }
    path, result = interactive(params)
    interaction, frame = seen[-1]
    assert frame == 1 and result["frame"] == 1
    assert interaction.positive == [(300, 230)] and interaction.negative == [(200, 150)]
    assert interaction.box == (240, 190, 341, 271) and interaction.previous_mask is None
    assert result["interaction"]["ignored_points"] == 1 and result["interaction"]["box"] == [
        240,
        190,
        341,
        271,
    ]
    assert result["interaction"]["interaction_trained"] is False
    assert result["organ"] == "thyroid_nodule" and result["label"] == 3
    mask = load_mask(path)
    assert mask.shape == (480, 640) and set(np.unique(mask)) <= {0, 3}
    # Without frame or slice the clicks' k picks the frame.
    interactive({"image": IMAGE_PATH, "foreground": [[300, 230, 2]], "organ": "lymph_node"})
    assert seen[-1][1] == 2
    # An explicit frame wins over slice.
    interactive({"image": IMAGE_PATH, "foreground": [[300, 230, 0]], "slice": 2, "frame": 0})
    assert seen[-1][1] == 0 and seen[-1][0].positive == [(300, 230)]


def test_clicks_reuse_the_cached_features(interactive, registry, monkeypatch):
    model = registry.predictor.model
    calls = []
    original = model.encode_image
    monkeypatch.setattr(model, "encode_image", lambda pv: calls.append(1) or original(pv))
    registry.predictor.clear_cache()
    for click in range(4):
        interactive({"image": IMAGE_PATH, "foreground": [[290 + 5 * click, 230, 1]], "slice": 1})
    assert len(calls) == 1


def test_previous_mask_from_the_label_file(interactive, registry, monkeypatch, tmp_path):
    seen = _spy(registry, monkeypatch)
    mask = np.zeros((480, 640), np.uint8)
    mask[200:260, 250:330] = 1
    save_mask(tmp_path / "previous.png", mask)
    interactive({"image": IMAGE_PATH, "label": str(tmp_path / "previous.png"), "frame": 1})
    np.testing.assert_array_equal(seen[-1][0].previous_mask != 0, mask != 0)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"foreground": [[700, 10, 1]]}, "outside the 480 x 640 image"),
        ({"background": [[10, -3, 1]]}, "outside the 480 x 640 image"),
        ({"foreground": [[20, 20, 1]]}, "outside the ultrasound region"),
        ({"roi": [900, 950, 10, 20, 0, 2]}, "covers less than"),
        ({"roi": [300, 300, 10, 20]}, "covers less than"),
        ({"roi": [1, 2, 3]}, "roi"),
        ({"slice": 7}, "out of range"),
        ({"foreground": "300,230"}, "list of"),
        ({"organ": "liver"}, "unknown organ"),
    ],
)
def test_bad_prompts_are_422(interactive, params, message):
    with pytest.raises(HTTPException) as caught:
        interactive({"image": IMAGE_PATH, "slice": 1, **params})
    assert caught.value.status_code == 422 and caught.value.detail
    assert message in caught.value.detail


def test_previous_mask_of_the_wrong_size_is_422(interactive, tmp_path):
    save_mask(tmp_path / "small.png", np.ones((240, 320), np.uint8))
    with pytest.raises(HTTPException) as caught:
        interactive({"image": IMAGE_PATH, "label": str(tmp_path / "small.png"), "frame": 1})
    assert caught.value.status_code == 422 and "small.png" in caught.value.detail


# ------------------------------------------------------------------------------------ propagation
def test_propagation_returns_one_mask_per_frame(propagate, tmp_path):
    seed = np.zeros((480, 640), np.uint8)
    seed[200:260, 258:338] = 1
    save_mask(tmp_path / "seed.nrrd", seed, spacing_mm=(0.1, 0.2))
    path, result = propagate(
        {
            "image": "/studies/long.dcm",
            "label": str(tmp_path / "seed.nrrd"),
            "frame": 2,
            "organ": "breast_lesion",
        }
    )
    volume = read_nrrd(path)
    assert volume.array.shape == (5, 480, 640) and volume.spacing_mm == pytest.approx((0.1, 0.2))
    assert set(np.unique(volume.array)) <= {0, 2}
    np.testing.assert_array_equal(volume.array[2] != 0, seed != 0)
    assert len(result["confidence"]) == 5 and result["confidence"][2] == 1.0
    assert all(0.0 <= c <= 1.0 for c in result["confidence"])
    assert sorted(result["review_first"]) == [0, 1, 2, 3, 4] and result["seed_frame"] == 2
    assert result["lesion_pixels"][2] == int(seed.sum())

    # A range seeded by clicks: frames outside it are empty and have no confidence.
    path, result = propagate(
        {"image": "/studies/long.dcm", "foreground": [[300, 230, 1]], "first_frame": 1, "last_frame": 3}
    )
    volume = read_nrrd(path)
    assert volume.array.shape == (5, 480, 640)
    assert not volume.array[0].any() and not volume.array[4].any()
    assert result["confidence"][0] is None and result["confidence"][4] is None
    assert result["seed_frame"] == 1 and sorted(result["review_first"]) == [1, 2, 3]

    # No mask, no clicks: the seed frame's automatic segmentation; the server's warm-up does one frame.
    _, result = propagate({"image": "/studies/long.dcm", "frame": 2, "warm_up": True})
    assert (result["first_frame"], result["last_frame"]) == (2, 2)
    assert result["confidence"][:2] == [None, None] and result["confidence"][3:] == [None, None]


@pytest.mark.parametrize(
    "params, message",
    [
        ({"foreground": [[300, 230, 4]], "last_frame": 3}, "does not contain the seed frame"),
        ({"foreground": [[300, 230, 1]], "first_frame": 9}, "out of range"),
        ({"foreground": [[300, 230, 1]], "result_extension": ".png"}, ".nrrd only"),
    ],
)
def test_bad_propagation_requests_are_422(propagate, params, message):
    with pytest.raises(HTTPException) as caught:
        propagate({"image": "/studies/long.dcm", **params})
    assert caught.value.status_code == 422 and message in caught.value.detail
