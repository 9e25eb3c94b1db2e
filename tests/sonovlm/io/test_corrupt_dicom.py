"""Regression tests for the corrupt DICOMs the fuzzer (test_load_image_fuzz.py) found escaping
load_image with an exception other than SonoInputError: one small file made here per failure kind.

Each file is a valid US dataset from tests/dicom_factory.py with a few bytes changed, the way a
bit flip or a bad writer changes them: a length field, a VR, a value, a deleted element.
"""

from __future__ import annotations

import io
import struct
import tracemalloc

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, JPEGLSLossless, RLELossless
from sonovlm.errors import SonoInputError
from sonovlm.io import load_image

from tests.dicom_factory import RegionSpec, bmode_frame, us_dataset

ROWS, COLS = 48, 64
NOT_VALID_BITS = "is not valid for pixel data (expected one of 1, 8, 16, 32)"


def _bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, write_like_original=False)
    return buffer.getvalue()


def _dicom(**kwargs) -> bytes:
    """A small grey US image (48 x 64) with one calibrated region, as file bytes."""
    kwargs.setdefault("regions", [RegionSpec((0, 0, COLS - 1, ROWS - 1), (0.2, 0.2))])
    return _bytes(us_dataset(bmode_frame(ROWS, COLS, seed=1, text=False), **kwargs))


def _tag(group: int, element: int) -> bytes:
    return struct.pack("<HH", group, element)


def _set_vr(data: bytes, group: int, element: int, old: str, new: str) -> bytes:
    """Change one element's VR in explicit VR little endian bytes (both VRs with the same layout)."""
    key = _tag(group, element) + old.encode()
    assert data.count(key) == 1, (hex(group), hex(element), old)
    return data.replace(key, _tag(group, element) + new.encode())


def _problem(tmp_path, data: bytes) -> str:
    path = tmp_path / "corrupt.dcm"
    path.write_bytes(data)
    with pytest.raises(SonoInputError) as info:
        load_image(path)
    assert info.value.source == str(path)
    return info.value.problem


def _without(keyword: str, transfer_syntax) -> bytes:
    ds = us_dataset(bmode_frame(ROWS, COLS, seed=1, text=False), transfer_syntax=transfer_syntax)
    delattr(ds, keyword)
    return _bytes(ds)


def _with(transfer_syntax=RLELossless, **values) -> bytes:
    ds = us_dataset(bmode_frame(ROWS, COLS, seed=1, text=False), transfer_syntax=transfer_syntax)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return _bytes(ds)


def test_the_unchanged_file_loads(tmp_path):
    """The premise of every test below: the file before the change is fine."""
    (tmp_path / "good.dcm").write_bytes(_dicom(frame_time_ms=12.5))
    image = load_image(tmp_path / "good.dcm")
    assert image.frames.shape == (1, ROWS, COLS)
    assert image.spacing_mm == pytest.approx((0.2, 0.2))
    assert image.frame_time_ms == pytest.approx(12.5)
    assert image.modality == "US"


# --- while parsing (pydicom.dcmread) ----------------------------------------------------------


def test_length_field_larger_than_the_file_allocates_nothing_of_it(tmp_path):
    """1.5 GB on the regions sequence: pydicom used to allocate it (MemoryError in a capped process).

    Read as far as the file goes, the sequence swallows everything after it, pixel data included.
    """
    data = bytearray(_dicom())
    at = data.index(_tag(0x0018, 0x6011) + b"SQ") + 8
    data[at : at + 4] = struct.pack("<L", 0x60000000)
    tracemalloc.start()
    try:
        problem = _problem(tmp_path, bytes(data))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert problem == "DICOM file has no pixel data (not an image, or cut off before its pixel data)"
    assert peak < 64 << 20, f"reading a {len(data)}-byte file allocated {peak / 2**20:.0f} MiB"


def test_bounded_reader_reads_what_is_there_and_seeks_like_a_file(tmp_path):
    from sonovlm.io.dicom import BoundedReader

    (tmp_path / "ten.bin").write_bytes(bytes(range(10)))
    with BoundedReader(tmp_path / "ten.bin") as reader:
        assert reader.read(1 << 40) == bytes(range(10))
        reader.seek(100)  # past the end, as a file allows (pydicom relies on it)
        assert reader.read(4) == b""
        reader.seek(8)
        assert reader.read(4) == b"\x08\x09"


def test_unknown_vr_in_file_meta(tmp_path):
    """pydicom converts TransferSyntaxUID while parsing: NotImplementedError from dcmread."""
    problem = _problem(tmp_path, _set_vr(_dicom(), 0x0002, 0x0010, "UI", "UY"))
    assert problem.startswith("DICOM file is truncated or corrupt") and "'UY'" in problem, problem


def test_file_ending_inside_an_undefined_length_sequence(tmp_path):
    """pydicom raises OSError ("No tag to read at file position") for it."""
    ds = us_dataset(
        bmode_frame(ROWS, COLS, seed=1, text=False),
        regions=[RegionSpec((0, 0, COLS - 1, ROWS - 1), (0.2, 0.2))] * 2,
    )
    ds["SequenceOfUltrasoundRegions"].is_undefined_length = True
    for item in ds.SequenceOfUltrasoundRegions:
        item.is_undefined_length_sequence_item = True
    data = _bytes(ds)
    start = data.index(_tag(0x0018, 0x6011) + b"SQ")
    end_of_items = data.index(_tag(0xFFFE, 0xE0DD), start)  # the sequence delimiter
    problem = _problem(tmp_path, data[: end_of_items + 3])
    assert problem.startswith("DICOM file is truncated or corrupt"), problem


# --- when a value is first read ---------------------------------------------------------------


def test_value_length_that_does_not_fit_its_vr(tmp_path):
    """Rows' two bytes read as FD (8 bytes a value): BytesLengthException on first access."""
    problem = _problem(tmp_path, _set_vr(_dicom(), 0x0028, 0x0010, "US", "FD"))
    assert problem.startswith("DICOM element Rows is corrupt: Expected total bytes"), problem


@pytest.mark.parametrize(
    ("group", "element", "vr", "keyword"),
    [(0x0028, 0x0011, "US", "Columns"), (0x0008, 0x0060, "CS", "Modality")],
)
def test_unknown_vr_met_on_first_access(tmp_path, group, element, vr, keyword):
    """An unknown VR parses; NotImplementedError came when the value was first read."""
    data = _set_vr(_dicom(), group, element, vr, "UQ")
    pydicom.dcmread(io.BytesIO(data))  # the premise: parsing alone succeeds
    problem = _problem(tmp_path, data)
    assert problem == f"DICOM element {keyword} is corrupt: Unknown Value Representation 'UQ' in tag " + (
        f"({group:04x}, {element:04x})"
    ), problem


def test_corrupt_value_inside_the_regions_sequence(tmp_path):
    problem = _problem(tmp_path, _set_vr(_dicom(), 0x0018, 0x6018, "UL", "FD"))
    assert problem.startswith("DICOM SequenceOfUltrasoundRegions is corrupt: Expected total bytes"), problem


def test_regions_that_are_not_a_sequence(tmp_path):
    problem = _problem(tmp_path, _set_vr(_dicom(), 0x0018, 0x6011, "SQ", "OB"))
    assert problem == (
        "DICOM SequenceOfUltrasoundRegions is corrupt: "
        "SequenceOfUltrasoundRegions holds bytes, not a sequence"
    )


def test_pixel_data_with_a_numeric_vr(tmp_path):
    """OB -> UV (same layout): pydicom hands back a list of integers instead of bytes."""
    problem = _problem(tmp_path, _set_vr(_dicom(), 0x7FE0, 0x0010, "OB", "UV"))
    assert problem == "DICOM PixelData holds list values, not bytes (a corrupt VR)"


def test_frame_time_that_is_not_a_number(tmp_path):
    data = _dicom(frame_time_ms=12.5)
    assert data.count(b"12.5") == 1
    problem = _problem(tmp_path, data.replace(b"12.5", b"1x.5"))
    assert problem == "DICOM FrameTime '1x.5' is not a number"


# --- the Image Pixel module, checked before decoding ------------------------------------------


@pytest.mark.parametrize("keyword", ["BitsStored", "PixelRepresentation"])
@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless], ids=lambda s: s.name)
def test_missing_pixel_attribute(tmp_path, keyword, syntax):
    """pydicom's pylibjpeg handler read them as attributes: AttributeError."""
    assert _problem(tmp_path, _without(keyword, syntax)) == f"DICOM image is missing {keyword}"


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"BitsAllocated": 7}, f"DICOM BitsAllocated 7 {NOT_VALID_BITS}"),
        ({"BitsAllocated": 190}, f"DICOM BitsAllocated 190 {NOT_VALID_BITS}"),
        ({"PixelRepresentation": 5}, "DICOM PixelRepresentation 5 is not 0 (unsigned) or 1 (signed)"),
        ({"BitsStored": 17}, "DICOM BitsStored 17 is not between 1 and BitsAllocated 8"),
        ({"NumberOfFrames": -1}, "DICOM NumberOfFrames -1 is negative"),
        ({"Rows": 0}, "DICOM image has 0 rows and 64 columns"),
    ],
    ids=lambda v: "-".join(f"{k}={val}" for k, val in v.items()) if isinstance(v, dict) else "",
)
def test_invalid_pixel_attribute(tmp_path, values, expected):
    assert _problem(tmp_path, _with(**values)) == expected


def test_number_of_frames_that_is_not_a_number(tmp_path):
    """pydicom keeps an invalid IS as a str (with a warning); int() of it raised ValueError."""
    data = _with(NumberOfFrames=7)
    key = _tag(0x0028, 0x0008) + b"IS" + struct.pack("<H", 2) + b"7 "
    assert data.count(key) == 1
    problem = _problem(tmp_path, data.replace(key, key[:-2] + b"x "))
    assert problem == "DICOM NumberOfFrames 'x' is not a whole number"


def test_invalid_planar_configuration(tmp_path):
    rgb = np.stack([bmode_frame(ROWS, COLS, seed=s, text=False) for s in range(3)], axis=-1)
    ds = us_dataset(rgb, photometric="RGB")
    ds.PlanarConfiguration = 7
    assert _problem(tmp_path, _bytes(ds)) == "DICOM PlanarConfiguration 7 is not 0 or 1"


# --- compressed frame headers, checked before a decoder sizes its buffers from them -----------


def _patch_size(frame: bytes, marker: bytes, rows: int, cols: int) -> bytes:
    """Set the rows and columns of a JPEG / JPEG-LS start-of-frame marker."""
    at = frame.index(marker) + 5  # marker (2), length (2), precision (1)
    return frame[:at] + struct.pack(">HH", rows, cols) + frame[at + 4 :]


@pytest.mark.parametrize(
    ("syntax", "marker"),
    [(JPEGLSLossless, b"\xff\xf7"), (JPEGBaseline8Bit, b"\xff\xc0")],
    ids=["jpegls", "jpeg"],
)
def test_jpeg_frame_header_that_disagrees_with_the_dataset(tmp_path, syntax, marker):
    """A corrupt JPEG-LS SOF of 55750 x 32033 made libjpeg touch and keep ~7 GB; 4800 x 64 here."""
    from pydicom.encaps import encapsulate, generate_pixel_data_frame

    ds = pydicom.dcmread(io.BytesIO(_dicom(transfer_syntax=syntax)))
    frame = next(generate_pixel_data_frame(ds.PixelData, 1))
    ds.PixelData = encapsulate([_patch_size(frame, marker, 100 * ROWS, COLS)])
    problem = _problem(tmp_path, _bytes(ds))
    assert problem == (
        f"compressed frame 0 is {100 * ROWS} x {COLS} x 1 (rows x columns x samples), "
        f"but the dataset says {ROWS} x {COLS} x 1"
    )


def test_jpeg2000_frame_header_that_disagrees_with_the_dataset(tmp_path):
    from pydicom.encaps import encapsulate, generate_pixel_data_frame

    ds = pydicom.dcmread(io.BytesIO(_dicom(transfer_syntax=JPEG2000Lossless)))
    frame = next(generate_pixel_data_frame(ds.PixelData, 1))
    assert frame.startswith(b"\xff\x4f\xff\x51")
    ysiz = 4 + 8  # SOC, SIZ marker, Lsiz, Rsiz, Xsiz
    frame = frame[:ysiz] + struct.pack(">L", 100 * ROWS) + frame[ysiz + 4 :]
    ds.PixelData = encapsulate([frame])
    problem = _problem(tmp_path, _bytes(ds))
    assert problem.startswith(f"compressed frame 0 is {100 * ROWS} x {COLS} x 1"), problem


def test_decoder_out_of_memory(tmp_path, monkeypatch):
    """Rows x Columns sized from the file (up to 65535 x 65535) can exhaust memory in a decoder."""
    import pydicom.pixel_data_handlers.pylibjpeg_handler as handler

    def exhausted(*args, **kwargs):
        raise MemoryError
        yield  # a generator, like the real one

    monkeypatch.setattr(handler, "generate_frames", exhausted)
    problem = _problem(tmp_path, _with(transfer_syntax=RLELossless))
    assert problem == f"not enough memory to decode 1 frame(s) of {ROWS} x {COLS} x 1 samples at 8 bits"
