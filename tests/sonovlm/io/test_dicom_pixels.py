"""Which decoder reads JPEG 2000 frames, and that the two give the same pixels.

8-bit unsigned frames go to Pillow (libopenjp2 on several threads); everything else to
pylibjpeg-openjpeg through pydicom's handler (issue 17: the decode of a 640 x 480 frame was a fifth
of a new image's auto-segment)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000, JPEG2000Lossless
from sonovlm.errors import SonoInputError
from sonovlm.io import dicom_pixels
from sonovlm.io.codestreams import j2k_components
from sonovlm.io.dicom_header import read_pixel_format

from tests.dicom_factory import bmode_frame, colour_frame, encode_jpeg2000, us_dataset, write_dataset


def _decoded(path, monkeypatch=None, pillow: bool | None = None) -> np.ndarray:
    ds = pydicom.dcmread(str(path))
    pixel_format = read_pixel_format(ds, str(path))
    if pillow is not None:
        monkeypatch.setattr(dicom_pixels, "_pillow_decodes", lambda dataset, fmt: pillow)
    return dicom_pixels.decode_pixels(ds, pixel_format, str(path))


CASES = [
    ("grey lossless", JPEG2000Lossless, "MONOCHROME2", False),
    ("grey lossy", JPEG2000, "MONOCHROME2", False),
    ("rgb lossless", JPEG2000Lossless, "RGB", False),
    ("rct lossless", JPEG2000Lossless, "YBR_RCT", True),
    ("rgb lossy", JPEG2000, "RGB", False),
    ("ict lossy", JPEG2000, "YBR_ICT", True),
]


@pytest.mark.parametrize("name, syntax, photometric, mct", CASES, ids=[c[0] for c in CASES])
def test_pillow_and_pylibjpeg_decode_the_same_pixels(tmp_path, monkeypatch, name, syntax, photometric, mct):
    colour = photometric != "MONOCHROME2"
    frames = np.stack(
        [colour_frame(61, 83, seed=s) if colour else bmode_frame(61, 83, seed=s) for s in range(3)]
    )  # a cine, odd sizes
    encoded = [encode_jpeg2000(f, lossless=syntax == JPEG2000Lossless, mct=mct) for f in frames]
    ds = us_dataset(frames, photometric=photometric, transfer_syntax=syntax, encoded_frames=encoded)
    path = write_dataset(ds, tmp_path / f"{name.replace(' ', '_')}.dcm")
    assert dicom_pixels._pillow_decodes(
        pydicom.dcmread(str(path)), read_pixel_format(pydicom.dcmread(str(path)), "")
    )
    by_pillow = _decoded(path, monkeypatch, pillow=True)
    by_openjpeg = _decoded(path, monkeypatch, pillow=False)
    assert by_pillow.shape == by_openjpeg.shape == frames.shape
    np.testing.assert_array_equal(by_pillow, by_openjpeg)
    if syntax == JPEG2000Lossless:
        np.testing.assert_array_equal(by_pillow, frames)


def test_sixteen_bit_frames_stay_with_pylibjpeg(tmp_path):
    frame = (bmode_frame(40, 56, seed=2).astype(np.uint16) * 16).astype(np.uint16)
    path = write_dataset(
        us_dataset(frame, transfer_syntax=JPEG2000Lossless, bits_stored=12), tmp_path / "deep.dcm"
    )
    ds = pydicom.dcmread(str(path))
    assert not dicom_pixels._pillow_decodes(ds, read_pixel_format(ds, str(path)))
    np.testing.assert_array_equal(_decoded(path)[0], frame)


def test_component_header_is_read_from_siz():
    grey = encode_jpeg2000(bmode_frame(20, 30))
    rgb = encode_jpeg2000(colour_frame(20, 30), mct=True)
    assert j2k_components(grey) == [(8, False, 1, 1)]
    assert j2k_components(rgb) == [(8, False, 1, 1)] * 3
    assert j2k_components(b"\xff\xd8not j2k") is None
    assert j2k_components(grey[:44]) is None  # SIZ cut before its component list


def test_a_cut_frame_names_the_file(tmp_path):
    frame = bmode_frame(48, 64, seed=5)
    encoded = encode_jpeg2000(frame)
    cut = encoded[: len(encoded) // 3]
    path = write_dataset(
        us_dataset(frame, transfer_syntax=JPEG2000Lossless, encoded_frames=[cut]), tmp_path / "cut.dcm"
    )
    with pytest.raises(SonoInputError) as caught:
        _decoded(path)
    assert "cut.dcm" in str(caught.value)


def test_decode_threads_follow_the_environment(monkeypatch):
    monkeypatch.delenv("OPJ_NUM_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert dicom_pixels.decode_threads() == 3
    monkeypatch.setenv("OPJ_NUM_THREADS", "1")
    assert dicom_pixels.decode_threads() == 1
    monkeypatch.delenv("OPJ_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert dicom_pixels.decode_threads() >= 1
