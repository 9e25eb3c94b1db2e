"""Frame <-> model-space geometry: crop to the region, pad to a square, resize, and back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sonovlm.errors import SonoInputError
from sonovlm.io import UltrasoundImage, UltrasoundRegion
from sonovlm.model.preprocess import (
    PreprocessConfig,
    check_frame,
    frame_geometry,
    from_model_space,
    mask_to_model_space,
    preprocess_frame,
    preprocess_pair,
)

CONFIG = PreprocessConfig(image_size=224)
# A 640 x 480 frame whose ultrasound region is off-centre and wider than tall.
FRAME_SHAPE = (480, 640)
REGION = (100, 60, 540, 420)  # x0, y0, x1, y1


def _image(frames: int = 3, region=REGION, value: int = 255) -> UltrasoundImage:
    pixels = np.zeros((frames, *FRAME_SHAPE), np.uint8)
    x0, y0, x1, y1 = region
    pixels[:, y0:y1, x0:x1] = value
    pixels[:, 5:20, 5:200] = 200  # burned-in text outside the region
    return UltrasoundImage(
        frames=pixels,
        source="<memory>",
        regions=[UltrasoundRegion(bbox=region, spacing_mm=(0.1, 0.1), data_type=1)],
    )


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask)
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


def test_geometry_pads_the_region_to_a_centred_square():
    geometry = frame_geometry(FRAME_SHAPE, REGION, CONFIG)
    assert geometry.side == 440  # the region is 440 wide, 360 tall
    assert geometry.offset == (40, 0)
    assert geometry.region_shape == (360, 440)


@pytest.mark.parametrize("lesion", [(150, 260, 300, 420), (61, 100, 101, 160), (380, 419, 480, 539)])
def test_mask_forward_and_back_lands_where_it_was(lesion):
    top, bottom, left, right = lesion
    mask = np.zeros(FRAME_SHAPE, np.uint8)
    mask[top:bottom, left:right] = 1
    geometry = frame_geometry(FRAME_SHAPE, REGION, CONFIG)
    model_mask = mask_to_model_space(mask, geometry)
    assert model_mask.shape == (1, 224, 224)
    back = from_model_space(model_mask[0], geometry).numpy() >= 0.5
    assert back.shape == FRAME_SHAPE
    intersection = (back & (mask > 0)).sum()
    union = (back | (mask > 0)).sum()
    # One model pixel is ~2 frame pixels here: edges may move by that much, no more.
    assert intersection / union > 0.9
    assert np.abs(np.subtract(_bbox(back), (left, top, right, bottom))).max() <= 2


def test_inverse_is_zero_outside_the_region():
    geometry = frame_geometry(FRAME_SHAPE, REGION, CONFIG)
    back = from_model_space(torch.ones(224, 224), geometry).numpy()
    x0, y0, x1, y1 = REGION
    assert np.all(back[y0:y1, x0:x1] == 1.0)
    outside = np.ones(FRAME_SHAPE, bool)
    outside[y0:y1, x0:x1] = False
    assert np.all(back[outside] == 0.0)


def test_frame_is_cropped_padded_and_normalised_without_cutting_the_sides():
    pixel_values, geometry = preprocess_frame(_image(), 1, CONFIG)
    assert pixel_values.shape == (3, 224, 224) and pixel_values.dtype == torch.float32
    mean = torch.tensor(CONFIG.image_mean).view(3, 1)
    std = torch.tensor(CONFIG.image_std).view(3, 1)
    white = (1.0 - mean) / std
    black = (0.0 - mean) / std
    # The region (all white) fills the full width: no centre crop cut its sides off.
    middle_row = pixel_values[:, 112, :]
    torch.testing.assert_close(middle_row, white.expand(3, 224), atol=1e-4, rtol=0)
    # Padding above and below the 360-row region is black; the burned-in text is gone.
    torch.testing.assert_close(pixel_values[:, 0, :], black.expand(3, 224), atol=1e-4, rtol=0)
    torch.testing.assert_close(pixel_values[:, 223, :], black.expand(3, 224), atol=1e-4, rtol=0)
    region = geometry.region_in_model_space()
    assert region[112].all() and not region[0].any() and not region[223].any()


def test_whole_frame_when_not_cropping():
    geometry = frame_geometry(FRAME_SHAPE, REGION, PreprocessConfig(image_size=224, crop_to_region=False))
    assert geometry.bbox == (0, 0, 640, 480) and geometry.side == 640


def test_frame_choice():
    image = _image(frames=3)
    assert check_frame(image, None) == 1
    assert check_frame(image, 2) == 2
    for bad in (3, -1):
        with pytest.raises(SonoInputError, match="out of range"):
            check_frame(image, bad)


def test_pair_uses_the_same_geometry_as_serving():
    image = _image()
    mask = np.zeros(FRAME_SHAPE, np.uint8)
    mask[150:260, 300:420] = 7  # non-zero = lesion, whatever the value
    pixel_values, model_mask = preprocess_pair(image, mask, 0, CONFIG)
    _, geometry = preprocess_frame(image, 0, CONFIG)
    assert pixel_values.shape == (3, 224, 224) and model_mask.shape == (1, 224, 224)
    assert set(torch.unique(model_mask).tolist()) == {0.0, 1.0}
    torch.testing.assert_close(model_mask, mask_to_model_space(mask, geometry))
    with pytest.raises(SonoInputError, match="does not match"):
        preprocess_pair(image, np.zeros((10, 10), np.uint8), 0, CONFIG)


def test_non_uint8_frames_are_scaled_by_their_range():
    pixels = np.full((1, *FRAME_SHAPE), 1000, np.uint16)
    pixels[0, 100:200, 100:200] = 3000
    image = UltrasoundImage(frames=pixels, source="<memory>", regions=[])
    config = PreprocessConfig(image_size=32, crop_to_region=False)
    pixel_values, _ = preprocess_frame(image, 0, config)
    unit = pixel_values[0] * config.image_std[0] + config.image_mean[0]
    assert unit.min() >= -1e-5 and unit.max() <= 1 + 1e-5 and unit.max() > 0.5


def test_config_round_trips_through_json_dict():
    config = PreprocessConfig(image_size=64, crop_to_region=False)
    assert PreprocessConfig.from_dict(config.to_dict()) == config
    with pytest.raises(SonoInputError):
        PreprocessConfig.from_dict({**config.to_dict(), "centre_crop": True})
