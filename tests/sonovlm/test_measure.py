"""Lesion measurements on drawn shapes of known physical size."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sonovlm.errors import SonoInputError
from sonovlm.io import UltrasoundRegion
from sonovlm.measure import lesion_region, measure_lesion


def ellipse_mask(
    shape: tuple[int, int],
    spacing_mm: tuple[float, float],
    axes_mm: tuple[float, float],
    angle_deg: float = 0.0,
    centre_px: tuple[float, float] | None = None,
) -> np.ndarray:
    """Pixels whose centres lie inside an ellipse of full axes ``axes_mm`` (long, short).

    ``angle_deg``: long axis counter-clockwise on screen from the rows' direction (+x).
    """
    rows, cols = shape
    cx, cy = centre_px if centre_px is not None else ((cols - 1) / 2, (rows - 1) / 2)
    yy, xx = np.mgrid[:rows, :cols]
    x_mm = (xx - cx) * spacing_mm[1]
    y_mm = (yy - cy) * spacing_mm[0]  # down
    t = math.radians(angle_deg)
    u = x_mm * math.cos(t) - y_mm * math.sin(t)  # along (cos t, -sin t): up-right for t > 0
    v = x_mm * math.sin(t) + y_mm * math.cos(t)
    return ((u / (axes_mm[0] / 2)) ** 2 + (v / (axes_mm[1] / 2)) ** 2 <= 1.0).astype(np.uint8)


def angle_difference(a: float, b: float) -> float:
    """Distance between two axis orientations (mod 180)."""
    d = abs(a - b) % 180.0
    return min(d, 180.0 - d)


@pytest.mark.parametrize(
    "spacing_mm, angle_deg",
    [
        ((0.1, 0.1), 0.0),
        ((0.1, 0.1), 30.0),
        ((0.1, 0.1), 90.0),
        ((0.1, 0.1), 135.0),
        ((0.08, 0.12), 0.0),
        ((0.08, 0.12), 60.0),
        ((0.15, 0.06), 100.0),
        ((0.2, 0.05), 160.0),
    ],
)
def test_20_by_10_mm_ellipse_within_3_percent(spacing_mm, angle_deg):
    rows = int(32 / spacing_mm[0])
    cols = int(32 / spacing_mm[1])
    mask = ellipse_mask((rows, cols), spacing_mm, (20.0, 10.0), angle_deg)

    result = measure_lesion(mask, spacing_mm).to_dict()

    assert result["calibrated"] is True
    assert result["long_axis_mm"] == pytest.approx(20.0, rel=0.03)
    assert result["short_axis_mm"] == pytest.approx(10.0, rel=0.03)
    assert result["area_mm2"] == pytest.approx(math.pi * 10 * 5, rel=0.03)
    assert result["axis_ratio"] == pytest.approx(2.0, rel=0.05)
    assert angle_difference(result["orientation_deg"], angle_deg) < 2.5
    assert 0.0 <= result["orientation_deg"] < 180.0
    # AP (row direction) extent of a rotated ellipse vs its transverse extent.
    t = math.radians(angle_deg)
    ap = 2 * math.hypot(10 * math.sin(t), 5 * math.cos(t))
    transverse = 2 * math.hypot(10 * math.cos(t), 5 * math.sin(t))
    assert result["ap_extent_mm"] == pytest.approx(ap, rel=0.03)
    assert result["transverse_extent_mm"] == pytest.approx(transverse, rel=0.03)
    assert result["taller_than_wide"] is (ap > transverse)


def test_anisotropic_spacing_is_measured_in_physical_space():
    # 100 rows x 100 cols of pixels, each 0.1 mm tall and 0.3 mm wide: 10 mm deep, 30 mm wide.
    mask = np.zeros((140, 140), np.uint8)
    mask[20:120, 20:120] = 1
    result = measure_lesion(mask, (0.1, 0.3))
    assert result.physical.ap_extent == pytest.approx(10.0)
    assert result.physical.transverse_extent == pytest.approx(30.0)
    assert result.physical.long_axis == pytest.approx(math.hypot(10.0, 30.0))
    assert result.physical.area == pytest.approx(300.0)
    assert result.physical.taller_than_wide is False
    # The same pixels measured as square pixels are a square.
    assert result.pixels.long_axis == pytest.approx(math.hypot(100, 100))
    assert result.pixels.axis_ratio == pytest.approx(1.0)


def test_taller_than_wide_uses_millimetres_not_pixels():
    mask = np.zeros((120, 100), np.uint8)
    mask[10:110, 10:90] = 1  # 100 px tall, 80 px wide
    result = measure_lesion(mask, (0.1, 0.2)).to_dict()  # 10 mm tall, 16 mm wide
    assert result["taller_than_wide_px"] is True
    assert result["taller_than_wide"] is False
    assert result["ap_extent_mm"] == pytest.approx(10.0)
    assert result["transverse_extent_mm"] == pytest.approx(16.0)


def test_rectangle_long_axis_is_its_diagonal():
    mask = np.zeros((150, 260), np.uint8)
    mask[20:120, 30:230] = 2  # 100 x 200 px: 10 x 20 mm; value 2 (breast) counts as lesion
    result = measure_lesion(mask, (0.1, 0.1))
    geometry = result.physical
    assert geometry.area == pytest.approx(200.0)
    assert geometry.long_axis == pytest.approx(math.hypot(20.0, 10.0))
    # Longest chord perpendicular to the diagonal: it crosses both long sides, length 10 / cos(atan(1/2)).
    assert geometry.short_axis == pytest.approx(10.0 / math.cos(math.atan(0.5)))
    assert min(angle_difference(geometry.orientation_deg, a) for a in (26.565, 153.435)) < 0.01
    corners = {(29.5, 19.5), (229.5, 19.5), (29.5, 119.5), (229.5, 119.5)}
    assert {tuple(p) for p in geometry.long_axis_endpoints} <= corners


def test_orientation_is_counter_clockwise_on_screen():
    # A line rising to the right on screen (y points down): 45 degrees.
    mask = np.zeros((60, 60), np.uint8)
    for i in range(50):
        mask[55 - i, 5 + i] = 1
        mask[54 - i, 5 + i] = 1
    assert measure_lesion(mask, (0.5, 0.5)).physical.orientation_deg == pytest.approx(45.0, abs=1.5)
    # Falling to the right: 135 degrees.
    assert measure_lesion(mask[::-1], (0.5, 0.5)).physical.orientation_deg == pytest.approx(135.0, abs=1.5)
    # Vertical: 90 degrees.
    vertical = np.zeros((60, 20), np.uint8)
    vertical[5:55, 8:12] = 1
    assert measure_lesion(vertical).pixels.orientation_deg == pytest.approx(90.0, abs=5.0)


def test_axis_endpoints_match_the_axes():
    spacing = (0.08, 0.12)
    mask = ellipse_mask((400, 300), spacing, (20.0, 10.0), 40.0)
    geometry = measure_lesion(mask, spacing).physical
    scale = np.array([spacing[1], spacing[0]])  # (x, y) pixel coordinates -> mm
    (a, b), (c, d) = (
        (np.array(p) * scale for p in geometry.long_axis_endpoints),
        (np.array(p) * scale for p in geometry.short_axis_endpoints),
    )
    assert np.linalg.norm(b - a) == pytest.approx(geometry.long_axis)
    assert np.linalg.norm(d - c) == pytest.approx(geometry.short_axis)
    cosine = abs(np.dot(b - a, d - c)) / (np.linalg.norm(b - a) * np.linalg.norm(d - c))
    assert cosine < 1e-6  # perpendicular in millimetres (endpoints are rounded to 1e-6 px)
    # Every endpoint lies on the lesion's outline: within a pixel of a lesion pixel centre.
    ys, xs = np.nonzero(mask)
    for point in (*geometry.long_axis_endpoints, *geometry.short_axis_endpoints):
        nearest = np.min(np.hypot(xs - point[0], ys - point[1]))
        assert nearest <= 0.75


def test_uncalibrated_gives_pixels_only():
    mask = ellipse_mask((120, 160), (1.0, 1.0), (100.0, 50.0), 0.0)
    result = measure_lesion(mask, None).to_dict()
    assert result["calibrated"] is False
    for key in (
        "area_mm2",
        "long_axis_mm",
        "short_axis_mm",
        "axis_ratio",
        "orientation_deg",
        "taller_than_wide",
    ):
        assert result[key] is None, key
    assert result["area_px"] == int(mask.sum())
    assert result["long_axis_px"] == pytest.approx(100.0, rel=0.03)
    assert result["short_axis_px"] == pytest.approx(50.0, rel=0.03)
    assert result["axis_ratio_px"] == pytest.approx(2.0, rel=0.05)
    assert result["taller_than_wide_px"] is False
    assert result["spacing_mm"] is None


def test_largest_component_is_measured_and_counted():
    mask = np.zeros((100, 200), np.uint8)
    mask[10:50, 10:90] = 1  # the lesion
    mask[80:84, 180:184] = 1  # a stray speck far away
    result = measure_lesion(mask, (0.1, 0.1))
    assert result.components == 2
    assert result.area_px == 40 * 80
    assert result.physical.long_axis == pytest.approx(math.hypot(4.0, 8.0))


def test_holes_are_filled():
    ring = ellipse_mask((200, 200), (0.1, 0.1), (15.0, 15.0))
    disc = ring.copy()
    ring[ellipse_mask((200, 200), (0.1, 0.1), (6.0, 6.0)) > 0] = 0
    assert measure_lesion(ring, (0.1, 0.1)).physical.area == pytest.approx(
        measure_lesion(disc, (0.1, 0.1)).physical.area
    )


@pytest.mark.parametrize(
    "mask, spacing",
    [
        (np.zeros((10, 10), np.uint8), (0.1, 0.1)),  # empty
        (np.ones((2, 10, 10), np.uint8), (0.1, 0.1)),  # not 2D
        (np.ones((10, 10), np.uint8), (0.0, 0.1)),
        (np.ones((10, 10), np.uint8), (0.1, -1.0)),
        (np.ones((10, 10), np.uint8), (float("nan"), 0.1)),
        (np.ones((10, 10), np.uint8), (0.1, 0.1, 0.1)),
    ],
)
def test_bad_input_raises_sono_input_error(mask, spacing):
    with pytest.raises(SonoInputError):
        measure_lesion(mask, spacing, source="lesion.png")


def test_empty_mask_error_names_the_source():
    with pytest.raises(SonoInputError, match="lesion.png.*empty"):
        measure_lesion(np.zeros((5, 5)), None, source="lesion.png")


def test_lesion_region_picks_the_region_holding_the_lesion():
    mask = np.zeros((100, 200), np.uint8)
    mask[40:60, 130:160] = 1
    left = UltrasoundRegion(bbox=(0, 0, 100, 100), spacing_mm=(0.1, 0.1), data_type=1)
    right = UltrasoundRegion(bbox=(100, 0, 200, 100), spacing_mm=(0.2, 0.2), data_type=1)
    assert lesion_region([left, right], mask) is right
    assert lesion_region([right, left], mask) is right  # not the first listed
    straddling = np.zeros((100, 200), np.uint8)
    straddling[40:60, 90:130] = 1  # no box holds it; centroid x = 109.5, in the right-hand one
    assert lesion_region([left, right], straddling) is right
    assert lesion_region([left, right], np.zeros((100, 200), np.uint8)) is None
    # Overlapping regions: a calibrated B-mode one first, then the smallest.
    doppler = UltrasoundRegion(bbox=(120, 30, 170, 70), spacing_mm=(0.3, 0.3), data_type=2)
    small_bmode = UltrasoundRegion(bbox=(120, 20, 180, 80), spacing_mm=(0.4, 0.4), data_type=1)
    uncalibrated = UltrasoundRegion(bbox=(125, 35, 165, 65), spacing_mm=None, data_type=1)
    assert lesion_region([right, doppler, uncalibrated, small_bmode], mask) is small_bmode
    # A lesion straddling two regions: the one holding its centroid.
    straddling = np.zeros((100, 200), np.uint8)
    straddling[40:60, 90:130] = 1
    assert lesion_region([left, right], straddling) is right
    # Outside every region.
    assert lesion_region([UltrasoundRegion(bbox=(0, 0, 50, 50), spacing_mm=(0.1, 0.1))], mask) is None


def test_pixel_moments_equal_those_of_every_pixel_centre():
    """The outline keeps sums, not one coordinate per pixel: its centre and covariance equal
    NumPy's over the pixel centres of the whole mask (crop origin included)."""
    from scipy import ndimage
    from sonovlm.measure import _Outline

    rng = np.random.default_rng(3)
    for _ in range(20):
        lesion = ndimage.gaussian_filter(rng.random((60, 90)), 3) > 0.5
        if lesion.sum() < 2:
            continue
        origin = (int(rng.integers(0, 400)), int(rng.integers(0, 600)))
        outline = _Outline.of(lesion, origin)
        ys, xs = np.nonzero(lesion)
        centres = np.stack([xs + origin[1], ys + origin[0]], axis=1).astype(float)
        assert outline.area == ys.size
        assert outline.y_range == (ys.min() + origin[0], ys.max() + origin[0])
        assert outline.x_range == (xs.min() + origin[1], xs.max() + origin[1])
        np.testing.assert_allclose(outline.centre(), centres.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(outline.covariance(), np.cov(centres, rowvar=False), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("spacing_mm", [None, (0.1, 0.1)])
def test_a_disc_has_no_principal_direction_and_lies_along_the_rows(spacing_mm):
    """Equal second moments and no correlation: the long axis is taken along the rows, whatever
    the rounding of a covariance would have said."""
    yy, xx = np.mgrid[:81, :81]
    disc = ((xx - 40) ** 2 + (yy - 40) ** 2 <= 30**2).astype(np.uint8)
    measured = measure_lesion(disc, spacing_mm).to_dict()
    assert measured["orientation_deg_px"] == 0.0
    (x0, y0), (x1, y1) = measured["long_axis_endpoints"]
    assert y0 == y1 and x0 < x1


def _monai_single_lesion(mask: np.ndarray, label: int) -> np.ndarray:
    """MONAI's KeepLargestConnectedComponent (8-connected) then FillHoles on the non-zero pixels."""
    from monai.transforms import Compose, FillHoles, KeepLargestConnectedComponent

    post = Compose(
        [
            KeepLargestConnectedComponent(applied_labels=[label], is_onehot=False, connectivity=2),
            FillHoles(applied_labels=[label], connectivity=1),
        ]
    )
    return np.asarray(post(np.where(mask != 0, label, 0).astype(np.uint8)[None]))[0].astype(np.uint8)


def test_lesion_mask_is_monais_single_lesion_pixel_for_pixel():
    """lesion_mask == MONAI's transforms on random masks: blobs, holes, rings, components touching
    the border, equal sizes, a full and an empty mask, non-square and at any label."""
    from sonovlm.measure import lesion_mask

    rng = np.random.default_rng(0)
    masks = [np.zeros((40, 50), np.uint8)]
    for _ in range(40):
        noise = rng.random((40, 50)) < rng.uniform(0.2, 0.6)
        masks.append((noise & (rng.random((40, 50)) < 0.8)).astype(np.uint8))
    ring = np.zeros((40, 50), np.uint8)
    ring[5:20, 5:20] = 1
    ring[9:15, 9:15] = 0  # a hole
    ring[30:36, 40:50] = 1  # touches the border
    twins = np.zeros((40, 50), np.uint8)
    twins[2:6, 2:6] = 1
    twins[30:34, 30:34] = 1  # equal sizes
    masks += [ring, twins, np.ones((40, 50), np.uint8)]
    for index, mask in enumerate(masks):
        for label in (1, 3):
            np.testing.assert_array_equal(
                lesion_mask(mask * 7, label), _monai_single_lesion(mask * 7, label), err_msg=f"mask {index}"
            )
