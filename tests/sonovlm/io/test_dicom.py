"""DICOM reading: every photometric interpretation and transfer syntax, decoded values checked."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.pixel_data_handlers.util import apply_color_lut, convert_color_space
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from sonovlm.io import load_image

from tests.dicom_factory import (
    bmode_frame,
    colour_frame,
    grey_palette,
    rgb_to_ybr_full,
    us_dataset,
    write_dataset,
)

LOSSLESS = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, JPEG2000Lossless, JPEGLSLossless]


def _write(tmp_path, pixels, name="image.dcm", **kwargs):
    return write_dataset(us_dataset(pixels, **kwargs), tmp_path / name)


@pytest.fixture(scope="module")
def grey() -> np.ndarray:
    return bmode_frame(48, 64, seed=3)


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return colour_frame(48, 64, seed=4)


@pytest.mark.parametrize("syntax", LOSSLESS, ids=lambda s: s.name)
def test_monochrome2_lossless_values(tmp_path, grey, syntax):
    image = load_image(_write(tmp_path, grey, transfer_syntax=syntax))
    assert image.frames.shape == (1, 48, 64)
    assert image.channels == 1
    assert image.photometric == "MONOCHROME2"
    assert image.modality == "US"
    np.testing.assert_array_equal(image.frames[0], grey)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless, JPEGLSLossless],
                         ids=lambda s: s.name)
def test_monochrome1_is_inverted(tmp_path, grey, syntax):
    image = load_image(_write(tmp_path, grey, photometric="MONOCHROME1", transfer_syntax=syntax))
    assert image.photometric == "MONOCHROME1"
    np.testing.assert_array_equal(image.frames[0], 255 - grey)


def test_monochrome1_inverts_within_bits_stored(tmp_path):
    values = (np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) % 4096).astype(np.uint16)
    image = load_image(_write(tmp_path, values, photometric="MONOCHROME1", bits_stored=12))
    assert image.frames.dtype == np.uint16
    np.testing.assert_array_equal(image.frames[0], 4095 - values)


def test_sixteen_bit_grey(tmp_path):
    values = (np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 13).astype(np.uint16)
    image = load_image(_write(tmp_path, values, transfer_syntax=JPEG2000Lossless))
    np.testing.assert_array_equal(image.frames[0], values)


def test_deflated_transfer_syntax(tmp_path, grey):
    image = load_image(_write(tmp_path, grey, transfer_syntax=DeflatedExplicitVRLittleEndian))
    np.testing.assert_array_equal(image.frames[0], grey)


@pytest.mark.parametrize(
    ("syntax", "photometric"),
    [
        (ExplicitVRLittleEndian, "RGB"),
        (RLELossless, "RGB"),
        (JPEG2000Lossless, "RGB"),
        (JPEG2000Lossless, "YBR_RCT"),
        (JPEGLSLossless, "RGB"),
    ],
    ids=lambda v: getattr(v, "name", v),
)
def test_rgb_lossless_values(tmp_path, rgb, syntax, photometric):
    # JPEG-LS RGB: pylibjpeg-libjpeg's pydicom-2 path would apply YCbCr->RGB to RGB data here.
    image = load_image(_write(tmp_path, rgb, photometric=photometric, transfer_syntax=syntax))
    assert image.frames.shape == (1, 48, 64, 3)
    assert image.channels == 3
    assert image.photometric == photometric
    np.testing.assert_array_equal(image.frames[0], rgb)


def test_rgb_planar_configuration_1(tmp_path, rgb):
    image = load_image(_write(tmp_path, rgb, photometric="RGB", planar_configuration=1))
    np.testing.assert_array_equal(image.frames[0], rgb)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless], ids=lambda s: s.name)
def test_ybr_full_is_converted_once(tmp_path, rgb, syntax):
    ybr = rgb_to_ybr_full(rgb)
    image = load_image(_write(tmp_path, ybr, photometric="YBR_FULL", transfer_syntax=syntax))
    assert image.photometric == "YBR_FULL"
    assert image.channels == 3
    expected = convert_color_space(ybr.copy(), "YBR_FULL", "RGB")
    np.testing.assert_array_equal(image.frames[0], expected)
    assert np.abs(image.frames[0].astype(int) - rgb).max() <= 2  # the round trip's rounding
    np.testing.assert_array_equal(image.grey(0), ybr[..., 0].astype(np.float32))


def _subsample_422(ybr: np.ndarray) -> bytes:
    """Uncompressed YBR_FULL_422: Y0 Y1 Cb Cr per pair of pixels (chroma of the pair averaged)."""
    pairs = ybr.reshape(ybr.shape[0], ybr.shape[1] // 2, 2, 3).astype(np.int32)
    cb = (pairs[:, :, 0, 1] + pairs[:, :, 1, 1] + 1) // 2
    cr = (pairs[:, :, 0, 2] + pairs[:, :, 1, 2] + 1) // 2
    packed = np.stack([pairs[:, :, 0, 0], pairs[:, :, 1, 0], cb, cr], axis=-1).astype(np.uint8)
    return packed.tobytes()


def test_ybr_full_422_uncompressed(tmp_path, rgb):
    ybr = rgb_to_ybr_full(rgb)
    ds = us_dataset(ybr, photometric="YBR_FULL_422")
    ds.PixelData = _subsample_422(ybr)
    image = load_image(write_dataset(ds, tmp_path / "ybr422.dcm"))
    assert image.frames.shape == (1, 48, 64, 3)
    np.testing.assert_array_equal(image.grey(0), ybr[..., 0].astype(np.float32))  # Y is full resolution
    # chroma was averaged over pixel pairs: close to the source, not exact
    assert np.abs(image.frames[0].astype(int) - rgb).mean() < 2.0


@pytest.mark.parametrize("photometric", ["YBR_FULL_422", "YBR_FULL"])
def test_jpeg_baseline_ybr(tmp_path, rgb, photometric):
    image = load_image(_write(tmp_path, rgb, photometric=photometric, transfer_syntax=JPEGBaseline8Bit))
    assert image.photometric == photometric
    assert image.frames.shape == (1, 48, 64, 3)
    error = np.abs(image.frames[0].astype(int) - rgb)
    # Lossy, but RGB: unconverted YCbCr would be off by ~100 grey levels, converted twice too.
    assert error.mean() < 2.5 and error.max() < 25
    luma = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    assert np.abs(image.grey(0) - luma).mean() < 2.0


def test_jpeg_baseline_labelled_rgb_holding_ycbcr(tmp_path, rgb):
    """Lossy JPEG marked RGB but stored as JFIF YCbCr (a common mislabel) is converted."""
    ds = us_dataset(rgb, photometric="YBR_FULL", transfer_syntax=JPEGBaseline8Bit)
    ds.PhotometricInterpretation = "RGB"
    image = load_image(write_dataset(ds, tmp_path / "rgb.dcm"))
    assert np.abs(image.frames[0].astype(int) - rgb).mean() < 2.5


def test_jpeg_baseline_grey(tmp_path, grey):
    image = load_image(_write(tmp_path, grey, transfer_syntax=JPEGBaseline8Bit))
    assert image.frames.shape == (1, 48, 64)
    assert np.abs(image.frames[0].astype(int) - grey).mean() < 6


@pytest.mark.parametrize("pixels", ["grey", "rgb"])
def test_jpegls_near_lossless_stays_within_its_bound(tmp_path, grey, rgb, pixels):
    source = grey if pixels == "grey" else rgb
    photometric = "MONOCHROME2" if pixels == "grey" else "RGB"
    image = load_image(_write(tmp_path, source, photometric=photometric, transfer_syntax=JPEGLSNearLossless))
    error = np.abs(image.frames[0].astype(int) - source)
    assert error.max() <= 2 and error.any()  # NEAR=2: every sample within 2


def test_jpeg2000_lossy_ict(tmp_path, rgb):
    image = load_image(_write(tmp_path, rgb, photometric="YBR_ICT", transfer_syntax=JPEG2000))
    assert image.channels == 3
    assert np.abs(image.frames[0].astype(int) - rgb).mean() < 2.0


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless], ids=lambda s: s.name)
def test_palette_colour_expands_to_rgb(tmp_path, grey, bits, syntax):
    table = grey_palette(256, bits=bits)
    path = _write(tmp_path, grey, photometric="PALETTE COLOR", palette=table, palette_bits=bits,
                  transfer_syntax=syntax)
    image = load_image(path)
    assert image.photometric == "PALETTE COLOR"
    assert image.channels == 3
    assert image.frames.dtype == np.uint8
    scale = 255.0 / ((1 << bits) - 1)
    expected = np.rint(table[grey].astype(np.float64) * scale).astype(np.uint8)
    np.testing.assert_array_equal(image.frames[0], expected)
    assert not np.array_equal(image.frames[0, ..., 0], image.frames[0, ..., 1])  # really colour


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless, JPEGLSLossless,
                                    JPEGBaseline8Bit], ids=lambda s: s.name)
def test_cine_frames_and_frame_time(tmp_path, syntax):
    frames = np.stack([bmode_frame(40, 48, seed=s, text=False) for s in range(5)])
    image = load_image(_write(tmp_path, frames, transfer_syntax=syntax, frame_time_ms=33.3))
    assert image.n_frames == 5
    assert image.frames.shape == (5, 40, 48)
    assert image.frame_time_ms == pytest.approx(33.3)
    if syntax != JPEGBaseline8Bit:
        np.testing.assert_array_equal(image.frames, frames)
    else:
        assert np.abs(image.frames.astype(int) - frames).mean() < 6
    assert not np.array_equal(image.frames[0], image.frames[1])


def test_colour_cine(tmp_path, rgb):
    frames = np.stack([rgb, 255 - rgb, rgb // 2])
    image = load_image(_write(tmp_path, frames, photometric="RGB", transfer_syntax=RLELossless,
                              frame_time_ms=50.0))
    assert image.frames.shape == (3, 48, 64, 3)
    np.testing.assert_array_equal(image.frames, frames)
    assert image.grey().shape == (3, 48, 64)


def test_frame_time_from_vector_and_absent(tmp_path, grey):
    ds = us_dataset(np.stack([grey, grey, grey]))
    ds.FrameTimeVector = [0, 40, 42]
    assert load_image(write_dataset(ds, tmp_path / "v.dcm")).frame_time_ms == pytest.approx(41.0)
    assert load_image(_write(tmp_path, grey)).frame_time_ms is None


def test_preamble_less_dicom(tmp_path, grey):
    path = _write(tmp_path, grey)
    raw = tmp_path / "raw.dcm"
    raw.write_bytes(path.read_bytes()[132:])  # drop preamble and "DICM": starts at group 0002
    image = load_image(raw)
    np.testing.assert_array_equal(image.frames[0], grey)


# -- the real samples (tests/data, see its README) ----------------------------------------------------


def test_real_rgb_sample(test_data):
    image = load_image(test_data / "examples_rgb_color.dcm")
    assert image.frames.shape == (1, 240, 320, 3)
    assert (image.modality, image.photometric, image.channels) == ("US", "RGB", 3)
    assert image.regions == [] and image.spacing_mm is None
    frame = image.frames[0].astype(int)
    # Colour Doppler: some pixels are strongly coloured, most are grey B-mode.
    saturation = frame.max(axis=-1) - frame.min(axis=-1)
    assert (saturation > 100).mean() > 0.01
    assert (saturation == 0).mean() > 0.5


def test_real_big_endian_sample(test_data):
    image = load_image(test_data / "ExplVR_BigEnd.dcm")
    assert image.frames.shape == (1, 60, 80, 3)
    assert image.photometric == "RGB"
    assert image.frames.dtype == np.uint8
    assert image.frames.max() > 100  # byte order right: 8-bit data is not all in one channel


def test_real_palette_sample(test_data):
    import pydicom

    path = test_data / "examples_palette.dcm"
    image = load_image(path)
    assert image.frames.shape == (1, 350, 800, 3)
    assert (image.photometric, image.channels) == ("PALETTE COLOR", 3)
    ds = pydicom.dcmread(path)
    expected = np.rint(apply_color_lut(ds.pixel_array, ds) * (255.0 / 65535)).astype(np.uint8)
    np.testing.assert_array_equal(image.frames[0], expected)


@pytest.mark.parametrize("has_bot", [True, False])
def test_frames_split_over_several_fragments(tmp_path, has_bot):
    from pydicom.encaps import encapsulate

    from tests.dicom_factory import encode_jpegls

    frames = np.stack([bmode_frame(40, 48, seed=s, text=False) for s in range(3)])
    ds = us_dataset(frames, transfer_syntax=JPEGLSLossless)
    ds.PixelData = encapsulate([encode_jpegls(f) for f in frames], fragments_per_frame=3, has_bot=has_bot)
    np.testing.assert_array_equal(load_image(write_dataset(ds, tmp_path / "frag.dcm")).frames, frames)
