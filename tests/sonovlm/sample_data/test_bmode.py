"""The image-formation model: Rayleigh speckle statistics, attenuation, TGC and shadowing."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sonovlm.sample_data.bmode import BModeSettings, TissueMap, render_bmode

SPACING = (0.1, 0.1)
ROWS, COLS = 200, 400  # 2 cm deep, 4 cm wide


def _tissue(attenuation: float = 0.5) -> TissueMap:
    return TissueMap(
        echo=np.ones((ROWS, COLS)),
        attenuation=np.full((ROWS, COLS), attenuation),
        specular=np.zeros((ROWS, COLS)),
    )


def _decibels(grey: np.ndarray, settings: BModeSettings) -> np.ndarray:
    low = settings.display_max_db - settings.dynamic_range_db
    return grey.astype(float) * settings.dynamic_range_db / 255.0 + low


def test_homogeneous_tissue_shows_fully_developed_speckle():
    # Log-compressed Rayleigh speckle: the intensity is exponential, so 10 log10 of it has
    # mean -2.51 dB (-10 * Euler's gamma / ln 10) and standard deviation 5.57 dB.
    settings = BModeSettings(noise_db=-200.0)
    grey = render_bmode(_tissue(), SPACING, np.random.default_rng(1), settings)
    assert grey.dtype == np.uint8 and grey.shape == (ROWS, COLS)
    db = _decibels(grey, settings)
    assert db.mean() == pytest.approx(-10 * 0.5772156649 / math.log(10), abs=0.4)
    assert db.std() == pytest.approx(10 * math.pi / (math.sqrt(6) * math.log(10)), abs=0.35)


def test_attenuation_without_tgc_darkens_with_depth():
    settings = BModeSettings(tgc_alpha_db_cm_mhz=0.0, noise_db=-200.0)
    db = _decibels(render_bmode(_tissue(0.5), SPACING, np.random.default_rng(2), settings), settings)
    shallow, deep = db[40:60].mean(), db[140:160].mean()  # 0.5 cm and 1.5 cm
    expected = 2 * settings.frequency_mhz * 0.5 * 1.0  # round trip, 1 cm apart: 10 dB
    assert shallow - deep == pytest.approx(expected, abs=1.0)


def test_tgc_compensates_the_nominal_attenuation():
    settings = BModeSettings(noise_db=-200.0)
    db = _decibels(render_bmode(_tissue(0.5), SPACING, np.random.default_rng(3), settings), settings)
    assert db[40:60].mean() - db[140:160].mean() == pytest.approx(0.0, abs=1.0)


def test_an_attenuating_block_shadows_what_lies_behind_it():
    settings = BModeSettings(noise_db=-200.0)
    tissue = _tissue(0.5)
    tissue.attenuation[30:50, 150:250] = 2.0  # 2 mm thick, 1.5 dB/cm/MHz above the nominal
    db = _decibels(render_bmode(tissue, SPACING, np.random.default_rng(4), settings), settings)
    behind = db[100:180, 170:230].mean()
    beside = np.concatenate([db[100:180, 20:100], db[100:180, 300:380]], axis=1).mean()
    expected = 2 * settings.frequency_mhz * 1.5 * 0.2  # 6 dB
    assert beside - behind == pytest.approx(expected, abs=1.0)


def test_specular_reflector_is_bright_and_echo_scales_brightness():
    settings = BModeSettings(noise_db=-200.0)
    tissue = _tissue()
    tissue.echo[:, 200:] = 0.25  # 12 dB darker
    tissue.specular[100, :] = 3.0
    db = _decibels(render_bmode(tissue, SPACING, np.random.default_rng(5), settings), settings)
    assert db[20:80, :180].mean() - db[20:80, 220:].mean() == pytest.approx(12.0, abs=1.0)
    assert db[99:102, :180].mean() > db[20:80, :180].mean() + 10


def test_same_generator_state_same_image():
    a = render_bmode(_tissue(), SPACING, np.random.default_rng(9))
    b = render_bmode(_tissue(), SPACING, np.random.default_rng(9))
    c = render_bmode(_tissue(), SPACING, np.random.default_rng(10))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
