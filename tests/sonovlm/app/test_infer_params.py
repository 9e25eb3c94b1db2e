"""Infer request params: organ (auto first), prompt, frame (default middle), result_extension."""

from __future__ import annotations

import numpy as np
import pytest
from sonovlm.app.infer import parse_request, restrict_to_imaging_area
from sonovlm.errors import SonoInputError


def test_defaults_and_auto_organ():
    request = parse_request({}, n_frames=5, recorded_organ="thyroid_nodule")
    assert (request.organ, request.organ_source, request.frame, request.result_extension) == (
        "thyroid_nodule",
        "recorded",
        2,
        ".nrrd",
    )
    # A client that leaves the config lists in place sends their first items.
    request = parse_request({"organ": ["auto", "lymph_node"], "result_extension": [".nrrd", ".png"]}, 1, None)
    assert (request.organ, request.organ_source, request.result_extension) == (
        "lymph_node",
        "default",
        ".nrrd",
    )


def test_explicit_values():
    request = parse_request(
        {"organ": "breast_lesion", "prompt": "  irregular mass  ", "frame": "3", "result_extension": "PNG"},
        n_frames=4,
        recorded_organ="lymph_node",
    )
    assert request.organ == "breast_lesion" and request.organ_source == "request"
    assert request.prompt == "irregular mass" and request.frame == 3 and request.result_extension == ".png"
    assert parse_request({"prompt": "   "}, 1, None).prompt is None


@pytest.mark.parametrize(
    "params, message",
    [
        ({"organ": "liver"}, "unknown organ"),
        ({"frame": 4}, "out of range"),
        ({"frame": -1}, "out of range"),
        ({"frame": "two"}, "expected a frame number"),
        ({"frame": 1.5}, "expected a frame number"),
        ({"result_extension": ".jpg"}, "unsupported"),
        ({"prompt": 12}, "expected text"),
        ({"prompt": "x" * 2000}, "at most"),
    ],
)
def test_bad_params(params, message):
    with pytest.raises(SonoInputError, match=message):
        parse_request(params, n_frames=4, recorded_organ=None)


def test_restrict_to_imaging_area():
    mask = np.ones((4, 6), np.uint8)
    out = restrict_to_imaging_area(mask, (1, 2, 4, 4))
    expected = np.zeros((4, 6), np.uint8)
    expected[2:4, 1:4] = 1
    np.testing.assert_array_equal(out, expected)


def test_measure_param():
    from sonovlm.app.infer import wants_measurements

    assert wants_measurements({}) and wants_measurements({"measure": "true"})
    assert not wants_measurements({"measure": False}) and not wants_measurements({"measure": "false"})
    with pytest.raises(SonoInputError, match="measure"):
        wants_measurements({"measure": "sometimes"})
