"""Property test of :func:`sonovlm.io.load_image` with hypothesis: any byte-level damage to a real
ultrasound DICOM (flipped or overwritten bytes, truncation, inserted garbage) either loads or raises
:class:`~sonovlm.errors.SonoInputError`; nothing else escapes.

Derandomised so CI runs the same examples every time; the broader, process-isolated mutation
fuzzer is ``test_load_image_fuzz.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sonovlm.errors import SonoInputError
from sonovlm.io import load_image

SAMPLES = sorted((Path(__file__).resolve().parents[2] / "data").glob("*.dcm"))


@st.composite
def damaged_dicom(draw) -> bytes:
    """One real sample with up to four kinds of damage applied."""
    data = bytearray(draw(st.sampled_from(SAMPLES)).read_bytes())
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["overwrite", "flip", "truncate", "insert"]))
        position = draw(st.integers(0, len(data) - 1))
        if kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[position : position + len(chunk)] = chunk
        elif kind == "flip":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[max(position, 132) :]  # keep the preamble so it is still taken for DICOM
        else:
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        if len(data) < 2:
            break
    return bytes(data)


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_undamaged_samples_load(sample):
    assert load_image(sample).n_frames == 1


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=damaged_dicom())
def test_damaged_dicom_loads_or_raises_the_input_error(tmp_path, data):
    path = tmp_path / "damaged.dcm"
    path.write_bytes(data)
    try:
        image = load_image(path)
    except SonoInputError as exc:
        assert str(path) in str(exc)
        return
    assert image.frames.shape[0] >= 1 and image.height >= 1 and image.width >= 1
