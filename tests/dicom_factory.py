"""Ultrasound DICOM files made on the fly for tests and benchmarks.

pydicom 2.4.5 only encodes RLE itself, so compressed pixel data is made with Pillow (JPEG
baseline, JPEG 2000), pillow-jpls (JPEG-LS) or pydicom's RLE encoder and wrapped with
``pydicom.encaps.encapsulate``.

Import from tests as ``from tests.dicom_factory import ...``. The main entry points:

* :func:`bmode_frame`: a simulated B-mode sector (Rayleigh speckle, a dark lesion, burned-in
  text outside the sector), uint8 ``(rows, cols)``.
* :func:`us_dataset` / :func:`write_dataset`: a US Image Storage dataset from pixels as stored.
* :func:`jpeg2000_us_dicom`: a 640x480 JPEG 2000 single-frame US DICOM with a calibrated region.
* :func:`cine_us_dicom`: a small multi-frame (cine) US DICOM with a frame time.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence as DicomSequence
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
    generate_uid,
)

US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"

#: The UID root of files made here (a made-up, test-only root).
TEST_UID_ROOT = "1.2.826.0.1.3680043.8.498."


@dataclass(frozen=True)
class RegionSpec:
    """One SequenceOfUltrasoundRegions item as written to the file.

    ``bbox_inclusive`` is ``(min_x0, min_y0, max_x1, max_y1)`` exactly as DICOM stores it (the max
    corners inclusive). ``spacing_mm`` is ``(row_mm, col_mm)``; it is written as PhysicalDeltaY /
    PhysicalDeltaX in centimetres when ``units`` is 3 (cm).
    """

    bbox_inclusive: tuple[int, int, int, int]
    spacing_mm: tuple[float, float] | None = None
    units: int = 3
    data_type: int = 1
    spatial_format: int = 1


def region_item(spec: RegionSpec) -> Dataset:
    item = Dataset()
    x0, y0, x1, y1 = spec.bbox_inclusive
    item.RegionSpatialFormat = spec.spatial_format
    item.RegionDataType = spec.data_type
    item.RegionFlags = 0
    item.RegionLocationMinX0 = x0
    item.RegionLocationMinY0 = y0
    item.RegionLocationMaxX1 = x1
    item.RegionLocationMaxY1 = y1
    if spec.spacing_mm is None:
        item.PhysicalUnitsXDirection = 0
        item.PhysicalUnitsYDirection = 0
        item.PhysicalDeltaX = 0.0
        item.PhysicalDeltaY = 0.0
    else:
        row_mm, col_mm = spec.spacing_mm
        item.PhysicalUnitsXDirection = spec.units
        item.PhysicalUnitsYDirection = spec.units
        item.PhysicalDeltaX = col_mm / 10.0
        item.PhysicalDeltaY = row_mm / 10.0
    item.ReferencePixelX0 = 0
    item.ReferencePixelY0 = 0
    return item


def bmode_frame(rows: int = 120, cols: int = 160, seed: int = 0, text: bool = True) -> np.ndarray:
    """A simulated B-mode image: uint8 ``(rows, cols)``.

    A sector (apex at the top centre, opening +-35 degrees, from 10 % to 95 % of the height) of
    Rayleigh speckle with depth attenuation and a dark oval lesion; black outside it. With ``text``
    a burned-in label is drawn in the top-left corner and a depth ruler at the right edge, both
    outside the sector (:func:`sector_mask` gives the sector).
    """
    rng = np.random.default_rng(seed)
    inside = sector_mask(rows, cols)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    speckle = rng.rayleigh(scale=1.0, size=(rows, cols)).astype(np.float32)
    depth = yy / rows
    echo = 150.0 * speckle * np.exp(-1.2 * depth) + 20.0
    lesion = ((xx - cols / 2) / (cols * 0.12)) ** 2 + ((yy - rows * 0.55) / (rows * 0.1)) ** 2 <= 1.0
    echo[lesion] *= 0.25
    image = np.where(inside, np.clip(echo, 1, 255), 0).astype(np.uint8)
    if text:
        canvas = Image.fromarray(image)
        draw = ImageDraw.Draw(canvas)
        draw.text((2, 1), "ID 1234", fill=255)
        for y in range(int(rows * 0.2), int(rows * 0.9), max(4, rows // 12)):
            draw.line([(cols - 5, y), (cols - 2, y)], fill=255)
        image = np.asarray(canvas)
    return image


def sector_mask(rows: int, cols: int) -> np.ndarray:
    """The sector of :func:`bmode_frame` as a bool ``(rows, cols)`` array."""
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    apex_y, apex_x = -0.15 * rows, cols / 2
    radius = np.hypot(yy - apex_y, xx - apex_x)
    angle = np.degrees(np.arctan2(xx - apex_x, yy - apex_y))
    return (np.abs(angle) <= 35) & (radius >= 0.25 * rows) & (radius <= 1.1 * rows) & (yy >= 0.1 * rows)


def colour_frame(rows: int = 48, cols: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth RGB test image, uint8 ``(rows, cols, 3)``: gradients plus a little noise.

    Smooth so that lossy JPEG keeps it within a few grey levels.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    r = 40 + 160 * xx / cols
    g = 30 + 180 * yy / rows
    b = 200 - 120 * (xx + yy) / (rows + cols)
    rgb = np.stack([r, g, b], axis=-1) + rng.normal(0, 2, size=(rows, cols, 3))
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def rgb_to_ybr_full(rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 to YBR_FULL uint8 (ITU-T T.871, as DICOM defines YBR_FULL)."""
    from pydicom.pixel_data_handlers.util import convert_color_space

    return convert_color_space(np.ascontiguousarray(rgb), "RGB", "YBR_FULL")


# -- encoders ---------------------------------------------------------------------------------------


def encode_jpeg_baseline(frame: np.ndarray, photometric: str, quality: int = 95) -> bytes:
    """JPEG baseline of one RGB or grey frame with Pillow.

    ``photometric`` says what the DICOM will declare: ``MONOCHROME2`` (grey), ``YBR_FULL``
    (4:4:4) or ``YBR_FULL_422`` (4:2:2). Pillow converts RGB to YCbCr itself, which is what these
    photometric interpretations mean for JPEG.
    """
    subsampling = {"MONOCHROME2": 0, "YBR_FULL": 0, "YBR_FULL_422": 1}[photometric]
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=quality, subsampling=subsampling)
    return buffer.getvalue()


def encode_jpeg2000(frame: np.ndarray, lossless: bool = True, mct: bool = False) -> bytes:
    """A JPEG 2000 codestream (no JP2 box) of one frame with Pillow; ``mct`` applies RCT/ICT."""
    buffer = io.BytesIO()
    Image.fromarray(frame).save(
        buffer, format="JPEG2000", no_jp2=True, irreversible=not lossless, mct=int(mct)
    )
    return buffer.getvalue()


def encode_jpegls(frame: np.ndarray, near_lossless: int = 0) -> bytes:
    """A JPEG-LS stream of one frame with pillow-jpls (lossless when ``near_lossless`` is 0)."""
    import pillow_jpls  # noqa: F401  registers the JPEG-LS plugin with Pillow

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG-LS", near_lossless=near_lossless)
    return buffer.getvalue()


ENCODERS = {
    JPEGBaseline8Bit: "jpeg",
    JPEG2000Lossless: "j2k-lossless",
    JPEG2000: "j2k",
    JPEGLSLossless: "jpegls",
    JPEGLSNearLossless: "jpegls-near",
}


# -- datasets ---------------------------------------------------------------------------------------


def us_dataset(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    transfer_syntax: str = ExplicitVRLittleEndian,
    regions: Sequence[RegionSpec] = (),
    frame_time_ms: float | None = None,
    bits_stored: int | None = None,
    palette: np.ndarray | None = None,
    palette_bits: int = 16,
    planar_configuration: int = 0,
    encoded_frames: Sequence[bytes] | None = None,
    seed: int = 0,
) -> Dataset:
    """A US Image Storage dataset whose pixel data is ``pixels`` as stored.

    Args:
        pixels: ``(rows, cols[, 3])`` or ``(frames, rows, cols[, 3])``, uint8 or uint16, in the
            ``photometric`` colour space (YBR values for YBR_*, indices for PALETTE COLOR). For
            JPEG baseline with YBR_* give RGB: the JPEG encoder converts.
        transfer_syntax: uncompressed, RLE, JPEG baseline, JPEG 2000 (lossless or not) or
            JPEG-LS lossless; compressed data is encoded here unless ``encoded_frames`` is given.
        regions: SequenceOfUltrasoundRegions items.
        frame_time_ms: FrameTime; a multi-frame dataset is US Multi-frame Image Storage.
        palette: ``(entries, 3)`` lookup table (uint16 values when ``palette_bits`` is 16).
        encoded_frames: already encoded frames to encapsulate as they are (for corrupt data).
    """
    pixels = np.asarray(pixels)
    n_samples = 3 if photometric in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT") else 1
    multi = pixels.ndim == (4 if n_samples == 3 else 3)
    frames = pixels if multi else pixels[None]
    n_frames, rows, cols = frames.shape[:3]
    bits_allocated = 8 * frames.dtype.itemsize

    sop_class = US_MULTIFRAME_IMAGE_STORAGE if multi else US_IMAGE_STORAGE
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid(TEST_UID_ROOT, entropy_srcs=[str(seed), "sop"])
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = TEST_UID_ROOT + "1"

    ds = Dataset()
    ds.file_meta = meta
    ds.is_little_endian = True
    ds.is_implicit_VR = transfer_syntax == ImplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(TEST_UID_ROOT, entropy_srcs=[str(seed), "study"])
    ds.SeriesInstanceUID = generate_uid(TEST_UID_ROOT, entropy_srcs=[str(seed), "series"])
    ds.Modality = "US"
    ds.PatientName = "Test^Phantom"
    ds.PatientID = "PHANTOM"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = n_samples
    ds.PhotometricInterpretation = photometric
    if n_samples == 3:
        ds.PlanarConfiguration = planar_configuration
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored or bits_allocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if multi:
        ds.NumberOfFrames = n_frames
    if frame_time_ms is not None:
        ds.FrameTime = frame_time_ms
        ds.FrameIncrementPointer = 0x00181063
    if regions:
        ds.SequenceOfUltrasoundRegions = DicomSequence([region_item(r) for r in regions])
    if palette is not None:
        _set_palette(ds, palette, palette_bits)

    if encoded_frames is not None:
        ds.PixelData = encapsulate(list(encoded_frames))
        ds["PixelData"].is_undefined_length = True
        ds["PixelData"].VR = "OB"
    elif transfer_syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
        stored = frames
        if n_samples == 3 and planar_configuration == 1:
            stored = np.ascontiguousarray(frames.transpose(0, 3, 1, 2))
        ds.PixelData = np.ascontiguousarray(stored).astype(frames.dtype.newbyteorder("<")).tobytes()
        ds["PixelData"].VR = "OB" if bits_allocated == 8 else "OW"
    elif transfer_syntax == RLELossless:
        ds.compress(RLELossless, pixels, encoding_plugin="pydicom")
    else:
        kind = ENCODERS[transfer_syntax]
        if kind == "jpeg":
            encoded = [encode_jpeg_baseline(f, photometric) for f in frames]
        elif kind.startswith("jpegls"):
            encoded = [encode_jpegls(f, near_lossless=2 if kind == "jpegls-near" else 0) for f in frames]
        else:
            mct = photometric in ("YBR_RCT", "YBR_ICT")
            encoded = [encode_jpeg2000(f, lossless=kind == "j2k-lossless", mct=mct) for f in frames]
        ds.PixelData = encapsulate(encoded)
        ds["PixelData"].is_undefined_length = True
        ds["PixelData"].VR = "OB"
        if transfer_syntax in (JPEGBaseline8Bit, JPEG2000, JPEGLSNearLossless):
            ds.LossyImageCompression = "01"
    return ds


def _set_palette(ds: Dataset, palette: np.ndarray, bits: int) -> None:
    palette = np.asarray(palette)
    entries = palette.shape[0]
    dtype = np.dtype("<u2") if bits == 16 else np.dtype("u1")
    for index, colour in enumerate(("Red", "Green", "Blue")):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [entries % 65536, 0, bits])
        data = palette[:, index].astype(dtype).tobytes()
        if len(data) % 2:
            data += b"\x00"
        setattr(ds, f"{colour}PaletteColorLookupTableData", data)
        ds[f"{colour}PaletteColorLookupTableData"].VR = "OW"


def write_dataset(ds: Dataset, path: str | os.PathLike) -> Path:
    """Write ``ds`` as a DICOM Part 10 file and return the path."""
    path = Path(path)
    ds.save_as(path, write_like_original=False)
    return path


def grey_palette(entries: int = 256, bits: int = 16) -> np.ndarray:
    """A colour lookup table ``(entries, 3)``: a warm ramp (not grey, so expansion is visible)."""
    ramp = np.linspace(0.0, 1.0, entries)
    top = (1 << bits) - 1
    table = np.stack([ramp, ramp**2, np.sqrt(ramp)], axis=-1) * top
    return np.rint(table).astype(np.uint16 if bits == 16 else np.uint8)


# -- ready-made files ----------------------------------------------------------------------------


def jpeg2000_us_dicom(
    path: str | os.PathLike,
    *,
    rows: int = 480,
    cols: int = 640,
    spacing_mm: tuple[float, float] = (0.1, 0.1),
    lossless: bool = True,
    seed: int = 0,
) -> Path:
    """A single-frame grey US DICOM, JPEG 2000 (lossless by default), with a calibrated region.

    The B-mode image is :func:`bmode_frame` (burned-in text outside the sector); the one region is
    a tissue region over the whole sector's rows and columns ``[cols//8, rows//20, cols - cols//8,
    rows - 1]`` (inclusive DICOM corners) with ``spacing_mm``.
    """
    frame = bmode_frame(rows, cols, seed=seed)
    region = RegionSpec((cols // 8, rows // 20, cols - cols // 8, rows - 1), spacing_mm=spacing_mm)
    ds = us_dataset(
        frame,
        transfer_syntax=JPEG2000Lossless if lossless else JPEG2000,
        regions=[region],
        seed=seed,
    )
    return write_dataset(ds, path)


def cine_us_dicom(
    path: str | os.PathLike,
    *,
    n_frames: int = 6,
    rows: int = 64,
    cols: int = 80,
    frame_time_ms: float = 40.0,
    spacing_mm: tuple[float, float] | None = (0.2, 0.2),
    transfer_syntax: str = ExplicitVRLittleEndian,
    seed: int = 0,
) -> Path:
    """A small grey multi-frame (cine) US DICOM: frame ``i`` is :func:`bmode_frame` with seed + i."""
    frames = np.stack([bmode_frame(rows, cols, seed=seed + i, text=False) for i in range(n_frames)])
    regions = [RegionSpec((0, 0, cols - 1, rows - 1), spacing_mm=spacing_mm)] if spacing_mm else []
    ds = us_dataset(
        frames,
        transfer_syntax=transfer_syntax,
        regions=regions,
        frame_time_ms=frame_time_ms,
        seed=seed,
    )
    return write_dataset(ds, path)
