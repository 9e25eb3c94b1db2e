"""Every bad input raises SonoInputError naming the file and the problem."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)
from sonovlm.errors import SonoInputError
from sonovlm.io import load_image, load_mask

from tests.dicom_factory import (
    bmode_frame,
    encode_jpeg2000,
    encode_jpeg_baseline,
    encode_jpegls,
    us_dataset,
    write_dataset,
)

MPEG4_AVC = "1.2.840.10008.1.2.4.102"


def _error(path, loader=load_image) -> str:
    with pytest.raises(SonoInputError) as info:
        loader(path)
    assert info.value.source == str(path)
    return info.value.problem


@pytest.fixture(scope="module")
def cine() -> np.ndarray:
    return np.stack([bmode_frame(32, 40, seed=s, text=False) for s in range(3)])


def test_missing_file(tmp_path):
    assert _error(tmp_path / "absent.dcm") == "file not found"
    assert _error(tmp_path / "absent.png", load_mask) == "file not found"


def test_directory(tmp_path):
    assert "directory" in _error(tmp_path)


@pytest.mark.parametrize("content", [b"hello, this is a report\n" * 20, b"", b"\x00\x01\x02"])
def test_non_image(tmp_path, content):
    path = tmp_path / "notes.dcm"
    path.write_bytes(content)
    problem = _error(path)
    assert "not an image" in problem or "empty" in problem


def test_dicom_without_pixel_data(tmp_path, cine):
    ds = us_dataset(cine[0])
    del ds.PixelData
    problem = _error(write_dataset(ds, tmp_path / "sr.dcm"))
    assert "no pixel data" in problem


def test_unsupported_image_format(tmp_path):
    from PIL import Image

    Image.fromarray(bmode_frame(10, 10)).save(tmp_path / "x.gif")
    assert "unsupported image format GIF" in _error(tmp_path / "x.gif")


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless, JPEGLSLossless,
                                    JPEGBaseline8Bit], ids=lambda s: s.name)
def test_truncated_dicom(tmp_path, cine, syntax):
    """pydicom 2.4.5 parses these without error; reading must not."""
    path = write_dataset(us_dataset(cine, transfer_syntax=syntax), tmp_path / "full.dcm")
    data = path.read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(data[: len(data) - len(data) // 4])
    import pydicom

    # The premise: parsing alone does not fail (at most it warns and drops the pixel data).
    if syntax == ExplicitVRLittleEndian:
        pydicom.dcmread(truncated)
    else:
        with pytest.warns(UserWarning, match="End of file reached"):
            pydicom.dcmread(truncated)
    assert "truncated" in _error(truncated)


def test_truncated_uncompressed_reports_bytes(tmp_path, cine):
    path = write_dataset(us_dataset(cine), tmp_path / "full.dcm")
    (tmp_path / "cut.dcm").write_bytes(path.read_bytes()[:-100])
    expected = f"pixel data is truncated: {cine.size - 100} of {cine.size} bytes present"
    assert _error(tmp_path / "cut.dcm") == expected


@pytest.mark.parametrize(
    ("syntax", "encode"),
    [
        (JPEGBaseline8Bit, lambda f: encode_jpeg_baseline(f, "MONOCHROME2")),
        (JPEG2000Lossless, encode_jpeg2000),
        (JPEGLSLossless, encode_jpegls),
    ],
    ids=["jpeg", "j2k", "jpegls"],
)
def test_corrupt_compressed_frame(tmp_path, cine, syntax, encode):
    good = [encode(f) for f in cine]
    cut = good[:1] + [good[1][: len(good[1]) // 2]] + good[2:]  # frame 1 cut short
    garbage = good[:2] + [bytes(range(256)) * 4]  # frame 2 is not a codestream
    for name, frames in (("cut.dcm", cut), ("garbage.dcm", garbage)):
        path = write_dataset(us_dataset(cine, transfer_syntax=syntax, encoded_frames=frames), tmp_path / name)
        problem = _error(path)
        assert "frame 1" in problem or "frame 2" in problem, problem


def test_missing_frames(tmp_path, cine):
    frames = [encode_jpeg2000(f) for f in cine[:2]]  # NumberOfFrames says 3
    path = write_dataset(us_dataset(cine, transfer_syntax=JPEG2000Lossless, encoded_frames=frames),
                         tmp_path / "short.dcm")
    assert _error(path) == "pixel data is truncated: 2 of 3 frames present"


def test_corrupt_rle(tmp_path, cine):
    path = write_dataset(us_dataset(cine, transfer_syntax=RLELossless), tmp_path / "rle.dcm")
    data = bytearray(path.read_bytes())
    data[-40:-20] = b"\x7f" * 20  # literal runs that overrun the segment
    path.write_bytes(bytes(data))
    assert "cannot decode the RLE Lossless" in _error(path)


def test_unsupported_transfer_syntax(tmp_path, cine):
    ds = us_dataset(cine[0], encoded_frames=[b"\x00\x00\x01\xb3" + b"\x00" * 60])
    ds.file_meta.TransferSyntaxUID = MPEG4_AVC
    problem = _error(write_dataset(ds, tmp_path / "video.dcm"))
    assert problem.startswith("unsupported transfer syntax") and MPEG4_AVC in problem


def test_unsupported_photometric(tmp_path, cine):
    ds = us_dataset(np.stack([cine[0]] * 3, axis=-1), photometric="RGB")
    ds.PhotometricInterpretation = "HSV"
    assert "unsupported photometric interpretation HSV" in _error(write_dataset(ds, tmp_path / "hsv.dcm"))


def test_truncated_png(tmp_path):
    from PIL import Image

    Image.fromarray(bmode_frame(40, 50)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    assert "truncated or corrupt" in _error(tmp_path / "cut.png")
    assert "truncated or corrupt" in _error(tmp_path / "cut.png", load_mask)


def test_mask_errors(tmp_path):
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 4)))
    assert "expected (rows, cols)" in _error(tmp_path / "cube.npy", load_mask)
    (tmp_path / "pickled.npy").write_bytes(b"\x93NUMPY garbage")
    assert "cannot read the NumPy file" in _error(tmp_path / "pickled.npy", load_mask)
    path = write_dataset(us_dataset(bmode_frame(10, 10)), tmp_path / "image.dcm")
    assert "DICOM" in _error(path, load_mask)
    assert "read as a mask" in _error(tmp_path / "cube.npy", load_image)
