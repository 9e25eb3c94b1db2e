"""The extension's NumPy-only measurements give sonovlm.measure's numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from slicer_extension_helpers import asymmetric_lesion
from SonoVLMLib.measurement import largest_component_filled, measure_lesion

SPACINGS = [None, (0.1, 0.1), (0.1125, 0.1125), (0.2, 0.07), (0.13, 0.31)]


def _shapes() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    yy, xx = np.mgrid[0:120, 0:160]
    shapes = {"asymmetric": asymmetric_lesion(120, 160)}
    r, th = np.hypot(xx - 80, yy - 60), np.arctan2(yy - 60, xx - 80)
    blob = r < 25 + 8 * np.sin(3 * th) + 5 * np.cos(5 * th + 0.3)
    shapes["lobulated"] = blob
    with_holes = blob.copy()
    with_holes[55:65, 75:85] = False  # a hole (filled before measuring)
    with_holes[5:8, 5:9] = True  # specks (ignored: the largest component is measured)
    with_holes[100, 150] = True
    shapes["holes and specks"] = with_holes
    for k in range(6):
        cx, cy = rng.uniform(40, 120), rng.uniform(30, 90)
        a, b, t = rng.uniform(5, 35), rng.uniform(3, 25), rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)
        v = -(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)
        shape = (u / a) ** 2 + (v / b) ** 2 <= 1
        if k % 2:
            shape &= ~(rng.random(shape.shape) < 0.05)  # pepper: holes and ragged edges
        shapes[f"ellipse {k}"] = shape
    single = np.zeros((10, 10), bool)
    single[3, 4] = True
    shapes["one pixel"] = single
    return shapes


SHAPES = _shapes()


def _vector(endpoints) -> np.ndarray:
    (x0, y0), (x1, y1) = endpoints
    return np.array([x1 - x0, y1 - y0])


@pytest.mark.parametrize("spacing", SPACINGS, ids=str)
@pytest.mark.parametrize("name", list(SHAPES))
def test_same_numbers_as_sonovlm_measure(name, spacing):
    from sonovlm.measure import measure_lesion as reference_measure

    mask = SHAPES[name]
    ours, reference = measure_lesion(mask, spacing), reference_measure(mask, spacing)
    assert (ours.area_px, ours.components, ours.calibrated) == (
        reference.area_px,
        reference.components,
        reference.calibrated,
    )
    pairs = [(ours.pixels, reference.pixels)]
    if spacing is not None:
        pairs.append((ours.physical, reference.physical))
    else:
        assert ours.physical is None
    for got, expected in pairs:
        for field in ("area", "long_axis", "short_axis", "axis_ratio", "ap_extent", "transverse_extent"):
            assert getattr(got, field) == pytest.approx(getattr(expected, field), rel=1e-12, abs=1e-12), field
        assert got.orientation_deg == pytest.approx(expected.orientation_deg, abs=1e-7)
        assert got.taller_than_wide == expected.taller_than_wide
        # Parallel diameters of equal length are equally right: compare the axes as vectors.
        assert np.allclose(_vector(got.long_axis_endpoints), _vector(expected.long_axis_endpoints), atol=1e-6)
        assert np.allclose(
            _vector(got.short_axis_endpoints), _vector(expected.short_axis_endpoints), atol=1e-6
        )


def test_drawn_20_by_10_mm_ellipse_measures_within_3_percent():
    spacing = (0.1, 0.08)  # anisotropic: rows 0.1 mm, columns 0.08 mm
    rows, cols = 200, 320
    yy, xx = np.mgrid[0:rows, 0:cols]
    y_mm, x_mm = (yy - rows / 2) * spacing[0], (xx - cols / 2) * spacing[1]
    mask = (x_mm / 10.0) ** 2 + (y_mm / 5.0) ** 2 <= 1.0  # 20 mm wide, 10 mm deep
    m = measure_lesion(mask, spacing)
    assert m.physical.long_axis == pytest.approx(20.0, rel=0.03)
    assert m.physical.short_axis == pytest.approx(10.0, rel=0.03)
    assert m.physical.area == pytest.approx(math.pi * 10 * 5, rel=0.03)
    assert m.physical.orientation_deg == pytest.approx(0.0, abs=3.0) or m.physical.orientation_deg > 177
    assert not m.physical.taller_than_wide
    tall = measure_lesion(mask.T, (0.1, 0.1))
    assert tall.physical.taller_than_wide and tall.physical.orientation_deg == pytest.approx(90.0, abs=3.0)


def test_endpoints_lie_on_the_lesion_in_pixel_coordinates():
    mask = SHAPES["asymmetric"]
    m = measure_lesion(mask, (0.2, 0.1))
    for x, y in m.physical.long_axis_endpoints + m.physical.short_axis_endpoints:
        # Endpoints are pixel corners (x.5, y.5): one of the four pixels around it is lesion.
        neighbours = mask[
            int(math.floor(y)) : int(math.floor(y)) + 2, int(math.floor(x)) : int(math.floor(x)) + 2
        ]
        assert neighbours.any(), (x, y)
    (x0, y0), (x1, y1) = m.physical.long_axis_endpoints
    assert math.hypot((x1 - x0) * 0.1, (y1 - y0) * 0.2) == pytest.approx(m.physical.long_axis)


def test_uncalibrated_gives_pixels_only_and_says_so():
    m = measure_lesion(SHAPES["lobulated"])
    assert not m.calibrated and m.physical is None and m.spacing_mm is None
    rows = dict(m.table_rows())
    assert rows["Long axis"].endswith(" px") and rows["Calibration"].startswith("none")
    calibrated = dict(measure_lesion(SHAPES["lobulated"], (0.1, 0.1)).table_rows())
    assert calibrated["Long axis"].endswith(" mm") and calibrated["Area"].endswith(" mm²")
    assert "Calibration" not in calibrated
    assert "Note" in dict(measure_lesion(SHAPES["holes and specks"], (0.1, 0.1)).table_rows())


@pytest.mark.parametrize("bad", [np.zeros((5, 5)), np.ones((2, 3, 4))])
def test_empty_or_3d_masks_are_refused(bad):
    with pytest.raises(ValueError):
        measure_lesion(bad, (0.1, 0.1))


@pytest.mark.parametrize("spacing", [(0.1,), (0.0, 0.1), (-1, 0.1), (float("nan"), 0.1)])
def test_bad_spacing_is_refused(spacing):
    with pytest.raises(ValueError, match="spacing"):
        measure_lesion(SHAPES["lobulated"], spacing)


@pytest.mark.parametrize("seed", range(8))
def test_component_labelling_matches_scipy(seed):
    noise = np.random.default_rng(seed).random((50, 70)) < (0.35 + 0.04 * seed)
    ours, count = largest_component_filled(noise)
    labels, expected_count = ndimage.label(noise, structure=np.ones((3, 3), bool))
    largest = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    assert count == expected_count
    assert np.array_equal(ours, ndimage.binary_fill_holes(largest))
