"""Simulated cases: lesion placement, mask values and each kind's textbook features."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sonovlm.errors import SonoInputError
from sonovlm.organs import ORGAN_LABELS, PATHOLOGIES
from sonovlm.sample_data import imaging_region, simulate_case


def _case(organ: str, pathology: str, seed: int, **kwargs):
    return simulate_case(np.random.default_rng(seed), organ, pathology, **kwargs)


@pytest.mark.parametrize("organ", list(ORGAN_LABELS))
@pytest.mark.parametrize("pathology", PATHOLOGIES)
def test_mask_holds_the_organ_value_inside_the_region(organ, pathology):
    image, mask, meta = _case(organ, pathology, 11)
    assert image.shape == mask.shape == (480, 640)
    assert image.dtype == mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, ORGAN_LABELS[organ]}
    assert ndimage.label(mask > 0)[1] == 1  # one lesion
    x0, y0, x1, y1 = meta.region_bbox
    lx0, ly0, lx1, ly1 = meta.lesion_bbox
    assert x0 < lx0 and lx1 < x1 and y0 < ly0 and ly1 < y1
    assert meta.spacing_mm[0] == pytest.approx(meta.depth_mm / (y1 - y0))
    assert (meta.organ, meta.pathology) == (organ, pathology)
    # Long axes of a few millimetres to a few centimetres, as in the clinic.
    assert 4.0 < meta.design_axes_mm[0] < 30.0


def test_small_frames_keep_the_lesion_inside_the_region():
    for organ in ORGAN_LABELS:
        image, mask, meta = _case(organ, "malignant", 3, shape=(120, 160))
        assert meta.region_bbox == imaging_region(120, 160)
        x0, y0, x1, y1 = meta.region_bbox
        ys, xs = np.nonzero(mask)
        assert ys.size > 20
        assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_malignant_breast_mass_is_hypoechoic_and_shadows(seed):
    image, mask, meta = _case("breast_lesion", "malignant", seed)
    grey = image.astype(float)
    lx0, ly0, lx1, ly1 = meta.lesion_bbox
    x0, y0, x1, y1 = meta.region_bbox
    rows_px = round(4.0 / meta.spacing_mm[0])  # 4 mm band behind the mass
    band = slice(ly1 + 5, min(ly1 + 5 + rows_px, y1))
    core = slice(lx0 + (lx1 - lx0) // 3, lx1 - (lx1 - lx0) // 3)
    beside = np.concatenate(
        [grey[band, x0 : max(x0 + 1, lx0 - 20)], grey[band, min(x1 - 1, lx1 + 20) : x1]], axis=1
    )
    assert beside.size > 1000
    assert beside.mean() - grey[band, core].mean() > 20  # posterior acoustic shadowing
    ring = ndimage.binary_dilation(mask > 0, iterations=15) & ~ndimage.binary_dilation(mask > 0, iterations=5)
    assert grey[ring].mean() - grey[mask > 0].mean() > 30  # hypoechoic


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_benign_lymph_node_has_an_echogenic_hilum(seed):
    image, mask, _ = _case("lymph_node", "benign", seed)
    depth = ndimage.distance_transform_edt(mask > 0)
    core = depth > 0.7 * depth.max()
    cortex = (depth > 0.12 * depth.max()) & (depth < 0.3 * depth.max())  # inside the capsule
    assert image[core].mean() - image[cortex].mean() > 20


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_thyroid_nodule_sits_in_the_bright_lobe(seed):
    image, mask, meta = _case("thyroid_nodule", "malignant", seed)
    grey = image.astype(float)
    lesion = mask > 0
    around = ndimage.binary_dilation(lesion, iterations=12) & ~ndimage.binary_dilation(lesion, iterations=4)
    x0, y0, x1, y1 = meta.region_bbox
    deep_muscle = grey[y1 - 30 : y1 - 5, x0:x1]
    assert grey[around].mean() - deep_muscle.mean() > 15  # the lobe is brighter than muscle
    assert grey[around].mean() - grey[lesion].mean() > 30  # a malignant nodule is hypoechoic
    assert meta.design_angle_deg == pytest.approx(90.0, abs=20.0)  # taller than wide


def test_unknown_organ_pathology_or_tiny_frame_is_refused():
    rng = np.random.default_rng(0)
    with pytest.raises(SonoInputError, match="organ"):
        simulate_case(rng, "liver")
    with pytest.raises(SonoInputError, match="pathology"):
        simulate_case(rng, "lymph_node", "unsure")
    with pytest.raises(SonoInputError, match="shape"):
        simulate_case(rng, "lymph_node", shape=(50, 60))
