"""OpenIGTLink IMAGE messages <-> SonoVLM frames: pixels, spacing and the frame's pose.

An OpenIGTLink IMAGE (as PLUS sends it, read by :class:`pyigtl.ImageMessage`) holds voxels
``(k, j, i[, components])`` and a 4 x 4 IJK-to-world matrix whose first two columns are the
directions of the image columns (``i``) and rows (``j``) scaled by their spacing in mm, and whose
last column is the origin (the centre of voxel 0). A 2D ultrasound frame is one slice (``k = 1``).

:func:`frame_from_message` turns one into a :class:`LiveFrame`: an in-memory
:class:`~sonovlm.io.UltrasoundImage` of one frame (``(1, rows, cols)`` grey or
``(1, rows, cols, 3)`` RGB) whose one region covers the whole frame with
``spacing_mm = (row_mm, col_mm) = (|column 1|, |column 0|)``, plus the matrix, the coordinate
system and the message timestamp. :func:`label_message` builds the labelmap answer: a
``(1, rows, cols)`` uint8 IMAGE with the same matrix, coordinate system and timestamp, so a viewer
(3D Slicer's OpenIGTLinkIF) lays it exactly over the frame it was computed from, wherever the
tracked probe was.

A spacing of exactly 1 x 1 mm is read as "not calibrated" (as :mod:`sonovlm.io` reads NRRD and
NIfTI headers): measurements are then in pixels only.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyigtl

from ..errors import SonoInputError
from ..io import UltrasoundImage, UltrasoundRegion

#: DICOM RegionDataType of tissue (B-mode), given to the whole-frame region.
TISSUE_REGION = 1
#: Longest device name OpenIGTLink's header holds (20 bytes).
DEVICE_NAME_MAX = 20


@dataclass(frozen=True)
class StreamGeometry:
    """What must stay the same from frame to frame of one stream (the pose may change).

    Attributes:
        rows, cols: frame size in pixels.
        channels: 1 (grey) or 3 (RGB; 4-component RGBA arrives as RGB).
        dtype: the voxels' NumPy type name (``uint8``...).
        spacing_mm: ``(row_mm, col_mm)``, or ``None`` when the message's spacing is 1 x 1 (uncalibrated).
    """

    rows: int
    cols: int
    channels: int
    dtype: str
    spacing_mm: tuple[float, float] | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "cols": self.cols,
            "channels": self.channels,
            "dtype": self.dtype,
            "spacing_mm": list(self.spacing_mm) if self.spacing_mm is not None else None,
        }

    def same_as(self, other: StreamGeometry | None, rtol: float = 1e-4) -> bool:
        """Same size, channels, type and (within ``rtol``) spacing as ``other``."""
        if other is None:
            return False
        if (self.rows, self.cols, self.channels, self.dtype) != (
            other.rows,
            other.cols,
            other.channels,
            other.dtype,
        ):
            return False
        if self.spacing_mm is None or other.spacing_mm is None:
            return self.spacing_mm is None and other.spacing_mm is None
        return bool(np.allclose(self.spacing_mm, other.spacing_mm, rtol=rtol, atol=0.0))


@dataclass
class LiveFrame:
    """One received ultrasound frame.

    Attributes:
        image: one-frame :class:`~sonovlm.io.UltrasoundImage` (``source`` is ``igtl:DEVICE``).
        geometry: the stream's :class:`StreamGeometry`.
        ijk_to_world: ``(4, 4)`` float64 matrix as received (spacing in its columns, origin last).
        coordinate_system: ``"lps"`` or ``"ras"``, as received.
        timestamp: the message's timestamp, seconds since 1970 (the frame's acquisition time).
        device_name: the IMAGE message's device name.
        received_monotonic: ``time.monotonic()`` when the message was read (latency start).
    """

    image: UltrasoundImage
    geometry: StreamGeometry
    ijk_to_world: np.ndarray
    coordinate_system: str
    timestamp: float
    device_name: str
    received_monotonic: float = 0.0


def spacing_from_matrix(matrix: np.ndarray, source: str) -> tuple[float, float]:
    """``(row_mm, col_mm)`` of an IJK-to-world matrix: lengths of its row (j) and column (i) axes."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (4, 4) or not np.isfinite(matrix).all():
        raise SonoInputError(source, f"the IJK-to-world matrix must be 4 x 4 and finite, got {matrix.shape}")
    col_mm = float(np.linalg.norm(matrix[:3, 0]))
    row_mm = float(np.linalg.norm(matrix[:3, 1]))
    if not (col_mm > 0 and row_mm > 0 and math.isfinite(col_mm) and math.isfinite(row_mm)):
        raise SonoInputError(
            source, f"pixel spacing must be positive, got rows {row_mm} mm, columns {col_mm} mm"
        )
    return row_mm, col_mm


def frame_from_message(message: Any, received_monotonic: float = 0.0) -> LiveFrame:
    """A :class:`LiveFrame` of one :class:`pyigtl.ImageMessage`.

    Raises:
        SonoInputError: not an IMAGE message, several slices, an unsupported number of components,
            no pixels, or a matrix without a positive spacing. The message names the device.
    """
    device = str(getattr(message, "device_name", "") or "")
    source = f"OpenIGTLink IMAGE {device!r}"
    if getattr(message, "message_type", None) != "IMAGE" or getattr(message, "image", None) is None:
        raise SonoInputError(
            source, f"expected an IMAGE message, got {getattr(message, 'message_type', None)!r}"
        )
    voxels = np.asarray(message.image)
    if voxels.ndim == 3:
        voxels = voxels[..., np.newaxis]
    if voxels.ndim != 4:
        raise SonoInputError(
            source, f"expected voxels (slices, rows, cols[, components]), got shape {voxels.shape}"
        )
    slices, rows, cols, components = (int(n) for n in voxels.shape)
    if slices != 1:
        raise SonoInputError(source, f"a live ultrasound frame is one slice; this image has {slices}")
    if rows < 1 or cols < 1:
        raise SonoInputError(source, f"the frame has no pixels ({rows} x {cols})")
    if components not in (1, 3, 4):
        raise SonoInputError(
            source, f"{components} components per pixel; expected 1 (grey), 3 (RGB) or 4 (RGBA)"
        )
    if voxels.dtype.kind not in "uif":
        raise SonoInputError(source, f"unsupported pixel type {voxels.dtype}")
    # Native byte order (the wire may be big-endian), alpha dropped, one contiguous copy.
    native = voxels.astype(voxels.dtype.newbyteorder("="), copy=False)
    if components == 1:
        pixels = np.ascontiguousarray(native[..., 0])
        channels = 1
    else:
        pixels = np.ascontiguousarray(native[..., :3])
        channels = 3
    matrix = np.asarray(message.ijk_to_world_matrix, dtype=np.float64)
    row_mm, col_mm = spacing_from_matrix(matrix, source)
    calibrated = not (math.isclose(row_mm, 1.0, rel_tol=1e-6) and math.isclose(col_mm, 1.0, rel_tol=1e-6))
    spacing = (row_mm, col_mm) if calibrated else None
    region = UltrasoundRegion(bbox=(0, 0, cols, rows), spacing_mm=spacing, data_type=TISSUE_REGION)
    image = UltrasoundImage(
        frames=pixels,
        source=f"igtl:{device}",
        modality="US",
        photometric="MONOCHROME2" if channels == 1 else "RGB",
        channels=channels,
        regions=[region],
    )
    geometry = StreamGeometry(
        rows=rows, cols=cols, channels=channels, dtype=str(pixels.dtype), spacing_mm=spacing
    )
    return LiveFrame(
        image=image,
        geometry=geometry,
        ijk_to_world=matrix,
        coordinate_system=str(getattr(message, "world_coordinate_system", "lps") or "lps"),
        timestamp=float(message.timestamp),
        device_name=device,
        received_monotonic=float(received_monotonic),
    )


def check_device_name(name: str, what: str) -> str:
    """``name`` when it fits an OpenIGTLink header (1 to 20 ASCII bytes), else SonoInputError."""
    try:
        size = len(name.encode("ascii"))
    except UnicodeEncodeError:
        raise SonoInputError(what, f"device name {name!r} must be ASCII") from None
    if not 1 <= size <= DEVICE_NAME_MAX:
        raise SonoInputError(what, f"device name {name!r} must have 1 to {DEVICE_NAME_MAX} characters")
    return name


def label_message(mask: np.ndarray, frame: LiveFrame, device_name: str) -> pyigtl.ImageMessage:
    """The labelmap IMAGE for ``frame``: ``mask`` ``(rows, cols)`` as ``(1, rows, cols)`` uint8 with
    the frame's matrix, coordinate system and timestamp.

    Raises:
        SonoInputError: the mask's shape is not the frame's.
    """
    mask = np.asarray(mask)
    expected = (frame.geometry.rows, frame.geometry.cols)
    if mask.shape != expected:
        raise SonoInputError("labelmap", f"shape {mask.shape} does not match the frame {expected}")
    return pyigtl.ImageMessage(
        image=np.ascontiguousarray(mask.astype(np.uint8, copy=False))[np.newaxis],
        ijk_to_world_matrix=frame.ijk_to_world,
        world_coordinate_system=frame.coordinate_system,
        timestamp=frame.timestamp,
        device_name=device_name,
    )


def frame_message(frame: LiveFrame) -> pyigtl.ImageMessage:
    """The frame itself as an IMAGE: its pixels (``(1, rows, cols)`` grey or ``(1, rows, cols, 3)``
    RGB), matrix, coordinate system, timestamp and device name, as received (alpha dropped)."""
    return pyigtl.ImageMessage(
        image=frame.image.frames,
        ijk_to_world_matrix=frame.ijk_to_world,
        world_coordinate_system=frame.coordinate_system,
        timestamp=frame.timestamp,
        device_name=frame.device_name,
    )


def string_message(
    payload: dict[str, Any], device_name: str, timestamp: float | None = None
) -> pyigtl.StringMessage:
    """A STRING message holding ``payload`` as one line of JSON (OpenIGTLink strings hold < 64 KiB)."""
    text = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    if len(text.encode("utf8")) >= 65535:
        raise SonoInputError("status message", f"{len(text)} characters do not fit an OpenIGTLink STRING")
    return pyigtl.StringMessage(text, timestamp=timestamp, device_name=device_name)


def image_message(
    pixels: np.ndarray,
    spacing_mm: tuple[float, float],
    *,
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
    timestamp: float | None = None,
    device_name: str = "Image_Reference",
) -> pyigtl.ImageMessage:
    """An IMAGE message of one frame as PLUS sends it: ``pixels`` ``(rows, cols)`` or
    ``(rows, cols, 3)``, axis-aligned with ``spacing_mm = (row_mm, col_mm)`` and ``origin`` (mm,
    LPS). What the simulated PLUS server in the tests and the benchmark streams."""
    pixels = np.asarray(pixels)
    row_mm, col_mm = (float(s) for s in spacing_mm)
    matrix = np.diag([col_mm, row_mm, 1.0, 1.0])
    matrix[:3, 3] = origin
    return pyigtl.ImageMessage(
        image=pixels[np.newaxis], ijk_to_world_matrix=matrix, timestamp=timestamp, device_name=device_name
    )
