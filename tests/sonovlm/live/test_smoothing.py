"""ProbabilitySmoother: an EMA of the lesion probability, restarted on reset or a new frame size."""

from __future__ import annotations

import numpy as np
import pytest
from sonovlm.errors import SonoInputError
from sonovlm.live import ProbabilitySmoother


def test_first_frame_passes_through_then_the_average_follows():
    smoother = ProbabilitySmoother(0.25)
    ones, zeros = np.ones((4, 5), np.float32), np.zeros((4, 5), np.float32)
    np.testing.assert_array_equal(smoother.update(ones), ones)
    np.testing.assert_allclose(smoother.update(zeros), 0.75)
    np.testing.assert_allclose(smoother.update(zeros), 0.5625)
    assert smoother.active


def test_alpha_one_is_no_smoothing():
    smoother = ProbabilitySmoother(1.0)
    smoother.update(np.ones((3, 3)))
    np.testing.assert_array_equal(smoother.update(np.zeros((3, 3))), 0.0)


def test_reset_and_a_new_frame_size_start_afresh():
    smoother = ProbabilitySmoother(0.5)
    smoother.update(np.ones((3, 3)))
    smoother.reset()
    assert not smoother.active
    np.testing.assert_array_equal(smoother.update(np.zeros((3, 3))), 0.0)
    out = smoother.update(np.ones((2, 6)))
    assert out.shape == (2, 6) and out.dtype == np.float32
    np.testing.assert_array_equal(out, 1.0)


def test_the_returned_map_is_a_copy():
    smoother = ProbabilitySmoother(0.5)
    out = smoother.update(np.ones((2, 2)))
    out[:] = 0
    np.testing.assert_allclose(smoother.update(np.ones((2, 2))), 1.0)


@pytest.mark.parametrize("alpha", [0, -0.1, 1.5, float("nan"), "x"])
def test_bad_alpha_names_the_option(alpha):
    with pytest.raises(SonoInputError, match="--smoothing"):
        ProbabilitySmoother(alpha)


def test_a_map_that_is_not_2d_is_refused():
    with pytest.raises(SonoInputError, match=r"\(rows, cols\)"):
        ProbabilitySmoother(0.5).update(np.zeros((1, 2, 2)))
