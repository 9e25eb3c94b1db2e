"""The ultrasound transforms do what their physics says, only inside the scan area, reproducibly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sonovlm.model.augment import (
    RandDepthAttenuationd,
    RandGaussianShadowd,
    RandHazed,
    RandSpeckleNoised,
    bilateral_filter,
    train_transforms,
    ultrasound_transforms,
)


def _data(value: float = 0.6) -> dict:
    scan = torch.ones(1, 64, 64)
    scan[..., :8] = 0  # padding at the left
    image = torch.full((1, 64, 64), value)
    return {"image": image, "mask": (torch.rand(1, 64, 64) > 0.5).float(), "scan_mask": scan}


def test_depth_attenuation_darkens_with_depth_only_inside_the_scan():
    t = RandDepthAttenuationd(["image"], prob=1.0, attenuation_rate=2.0, scan_mask_key="scan_mask")
    out = t(_data())["image"][0]
    centre = out[:, 36]
    assert torch.all(centre[1:] <= centre[:-1] + 1e-6) and centre[-1] < 0.6 * 0.2
    assert torch.equal(out[:, :8], torch.full((64, 8), 0.6))  # padding untouched


def test_shadow_only_darkens_and_haze_only_brightens():
    shadow = RandGaussianShadowd(["image"], prob=1.0, strength=0.8, scan_mask_key="scan_mask")
    shadow.set_random_state(1)
    out = shadow(_data())["image"]
    assert out.max() <= 0.6 + 1e-6 and out.min() < 0.6 * 0.5
    haze = RandHazed(["image"], prob=1.0, radius=0.5, sigma=0.1, scan_mask_key="scan_mask")
    haze.set_random_state(1)
    out = haze(_data(0.3))["image"]
    assert out.min() >= 0.3 - 1e-6 and out.max() > 0.35 and out.max() <= 1.0


def test_speckle_reduction_smooths_and_speckle_noise_keeps_the_mean():
    noisy = torch.clamp(0.5 + 0.2 * torch.randn(1, 64, 64, generator=torch.Generator().manual_seed(0)), 0, 1)
    smooth = bilateral_filter(noisy, sigma_spatial=2.0, sigma_color=1.0)
    assert smooth.std() < 0.6 * noisy.std()
    edge = torch.zeros(1, 32, 32)
    edge[..., 16:] = 1.0  # a clean step survives a small colour sigma
    assert torch.allclose(bilateral_filter(edge, 2.0, 0.05), edge, atol=1e-3)
    speckle = RandSpeckleNoised(["image"], prob=1.0, looks=4.0, grain=1.0)
    speckle.set_random_state(0)
    out = speckle({"image": torch.full((1, 128, 128), 0.4)})["image"]
    assert out.std() > 0.05 and abs(float(out.mean()) - 0.4) < 0.03


@pytest.mark.parametrize("transform", ultrasound_transforms(prob=1.0), ids=lambda t: type(t).__name__)
def test_each_transform_is_seeded_keeps_padding_and_numpy_in_numpy_out(transform):
    data = _data()
    data["image"] = torch.rand(1, 64, 64, generator=torch.Generator().manual_seed(2)) * 0.8 + 0.1
    transform.set_random_state(5)
    first = transform(data)["image"]
    transform.set_random_state(5)
    second = transform(data)["image"]
    assert torch.equal(first, second)
    assert not torch.equal(first, data["image"])
    assert torch.equal(first[..., :8], data["image"][..., :8])
    assert torch.equal(transform(data)["mask"], data["mask"])  # masks are not touched
    as_numpy = dict(data, image=data["image"].numpy())
    assert isinstance(transform(as_numpy)["image"], np.ndarray)


def test_probability_zero_is_identity_and_modes_switch_groups():
    data = _data()
    for t in ultrasound_transforms(prob=0.0):
        assert t(data)["image"] is data["image"]
    names = {
        mode: [type(t).__name__ for t in train_transforms(mode).transforms]
        for mode in ("none", "geometric", "ultrasound", "all")
    }
    assert names["none"] == []
    assert "RandDepthAttenuationd" in names["ultrasound"] and "RandFlipd" not in names["ultrasound"]
    assert "RandFlipd" in names["geometric"] and "RandHazed" not in names["geometric"]
    assert set(names["all"]) == set(names["ultrasound"]) | set(names["geometric"])
    with pytest.raises(ValueError):
        train_transforms("speckle-only")


def test_geometric_transforms_move_image_and_mask_together():
    image = torch.zeros(1, 64, 64)
    image[:, 20:30, 10:20] = 1.0
    data = {"image": image, "mask": image.clone(), "scan_mask": torch.ones(1, 64, 64)}
    pipeline = train_transforms("geometric", seed=3)
    for _ in range(5):
        out = pipeline(data)
        moved_image = torch.as_tensor(out["image"]) > 0.5
        moved_mask = torch.as_tensor(out["mask"]) > 0.5
        overlap = (moved_image & moved_mask).sum() / max(int(moved_mask.sum()), 1)
        assert overlap > 0.8
