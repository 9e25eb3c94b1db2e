"""Frame <-> model-space geometry: what the backbone sees of an ultrasound frame, and the way back.

Preprocessing is part of the model's configuration (:class:`PreprocessConfig`, stored in every
checkpoint), so training and serving cannot diverge. For one frame:

1. crop to the ultrasound imaging region (``UltrasoundImage.imaging_bbox()``): burned-in text,
   rulers and patient details never reach the model;
2. pad the crop to a square, centred (no centre crop: CLIP's own processor cuts the sides off a
   640 x 480 frame, and lesions near the edge with them);
3. resize the square to the backbone's input side ``S`` (bilinear, antialiased);
4. scale intensities to [0, 1] (uint8 frames by 255, others by their min-max), replicate the grey
   frame to 3 channels and normalise with the backbone's mean and std.

The inverse (:func:`from_model_space`) takes model-space maps ``(..., S, S)`` back to the frame's
``(rows, cols)``: resize to the square, drop the padding, place at the region; 0 outside it.
Resampling is torch's ``interpolate``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from ..errors import SonoInputError

if TYPE_CHECKING:
    from ..io import UltrasoundImage


@dataclass(frozen=True)
class PreprocessConfig:
    """How a frame becomes the backbone's pixel input.

    Attributes:
        image_size: side ``S`` of the square model input, pixels (the backbone's input size).
        image_mean, image_std: per-channel normalisation (CLIP's OpenAI values by default).
        crop_to_region: crop to the imaging region first (True) or use the whole frame.
        pad_value: intensity of the padding, on the [0, 1] scale before normalisation (0 = black,
            as outside the sector).
    """

    image_size: int = 224
    image_mean: tuple[float, float, float] = tuple(OPENAI_CLIP_MEAN)  # type: ignore[assignment]
    image_std: tuple[float, float, float] = tuple(OPENAI_CLIP_STD)  # type: ignore[assignment]
    crop_to_region: bool = True
    pad_value: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_mean", tuple(float(v) for v in self.image_mean))
        object.__setattr__(self, "image_std", tuple(float(v) for v in self.image_std))
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise SonoInputError("preprocess", "image_mean and image_std need 3 values (RGB)")
        if self.image_size < 1:
            raise SonoInputError("preprocess.image_size", f"must be positive, got {self.image_size}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["image_mean"] = list(self.image_mean)
        data["image_std"] = list(self.image_std)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise SonoInputError("preprocess config", f"unknown keys {sorted(unknown)}")
        return cls(**data)


@dataclass(frozen=True)
class FrameGeometry:
    """Where a frame's region sits in model space.

    Attributes:
        frame_shape: ``(rows, cols)`` of the frame.
        bbox: ``(x0, y0, x1, y1)`` of the region used, ends exclusive.
        side: side of the padded square, frame pixels (``max`` of the region's height and width).
        offset: ``(top, left)`` of the region inside that square, frame pixels.
        image_size: side ``S`` of model space.
    """

    frame_shape: tuple[int, int]
    bbox: tuple[int, int, int, int]
    side: int
    offset: tuple[int, int]
    image_size: int

    @property
    def region_shape(self) -> tuple[int, int]:
        x0, y0, x1, y1 = self.bbox
        return y1 - y0, x1 - x0

    @property
    def scale(self) -> float:
        """Model pixels per frame pixel."""
        return self.image_size / self.side

    def region_in_model_space(self) -> torch.Tensor:
        """``(S, S)`` bool: model pixels whose centre falls on the region rather than the padding."""
        rows, cols = self.region_shape
        top, left = self.offset
        centres = (torch.arange(self.image_size, dtype=torch.float64) + 0.5) / self.scale
        inside_rows = (centres >= top) & (centres < top + rows)
        inside_cols = (centres >= left) & (centres < left + cols)
        return inside_rows[:, None] & inside_cols[None, :]


def frame_geometry(
    frame_shape: tuple[int, int], bbox: tuple[int, int, int, int] | None, config: PreprocessConfig
) -> FrameGeometry:
    """Geometry for a frame of ``frame_shape`` whose region is ``bbox`` (whole frame when None)."""
    rows, cols = int(frame_shape[0]), int(frame_shape[1])
    if bbox is None or not config.crop_to_region:
        bbox = (0, 0, cols, rows)
    x0, y0, x1, y1 = (int(v) for v in bbox)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, cols), min(y1, rows)
    if x1 <= x0 or y1 <= y0:
        raise SonoInputError("imaging region", f"empty region {bbox} in a {rows} x {cols} frame")
    height, width = y1 - y0, x1 - x0
    side = max(height, width)
    offset = ((side - height) // 2, (side - width) // 2)
    return FrameGeometry((rows, cols), (x0, y0, x1, y1), side, offset, config.image_size)


def to_model_space(
    array: np.ndarray | torch.Tensor, geometry: FrameGeometry, pad_value: float = 0.0
) -> torch.Tensor:
    """Crop, pad and resize a frame-space map ``(..., rows, cols)`` to model space ``(..., S, S)``.

    Float32, bilinear with antialiasing (a binary mask comes out as a soft mask; threshold it).
    """
    tensor = torch.as_tensor(np.asarray(array) if not isinstance(array, torch.Tensor) else array)
    tensor = tensor.to(torch.float32)
    if tuple(tensor.shape[-2:]) != geometry.frame_shape:
        raise SonoInputError(
            "array", f"shape {tuple(tensor.shape[-2:])} does not match the frame {geometry.frame_shape}"
        )
    lead = tensor.shape[:-2]
    x0, y0, x1, y1 = geometry.bbox
    region = tensor[..., y0:y1, x0:x1].reshape(-1, 1, y1 - y0, x1 - x0)
    top, left = geometry.offset
    bottom = geometry.side - (y1 - y0) - top
    right = geometry.side - (x1 - x0) - left
    square = F.pad(region, (left, right, top, bottom), value=pad_value)
    resized = _resize(square, geometry.image_size)
    return resized.reshape(*lead, geometry.image_size, geometry.image_size)


def from_model_space(maps: torch.Tensor, geometry: FrameGeometry) -> torch.Tensor:
    """Map model-space maps ``(..., S, S)`` back to the frame: ``(..., rows, cols)`` float32.

    Bilinear resize to the padded square, padding dropped, values placed at the region; 0 outside
    the region. Threshold probabilities after the mapping, not before, so edges stay smooth.
    """
    maps = torch.as_tensor(maps).to(torch.float32)
    if tuple(maps.shape[-2:]) != (geometry.image_size, geometry.image_size):
        raise ValueError(f"model-space maps must end in {geometry.image_size} x {geometry.image_size}")
    lead = maps.shape[:-2]
    square = _resize(maps.reshape(-1, 1, geometry.image_size, geometry.image_size), geometry.side)
    top, left = geometry.offset
    height, width = geometry.region_shape
    region = square[..., top : top + height, left : left + width]
    rows, cols = geometry.frame_shape
    x0, y0, x1, y1 = geometry.bbox
    out = maps.new_zeros((region.shape[0], 1, rows, cols))
    out[..., y0:y1, x0:x1] = region
    return out.reshape(*lead, rows, cols)


def _resize(batch: torch.Tensor, side: int) -> torch.Tensor:
    """Bilinear resize of ``(N, C, H, W)`` to ``(N, C, side, side)``; antialiased when shrinking."""
    if batch.shape[-2:] == (side, side):
        return batch
    shrinking = batch.shape[-1] > side or batch.shape[-2] > side
    return F.interpolate(batch, size=(side, side), mode="bilinear", align_corners=False, antialias=shrinking)


def unit_intensity(grey: np.ndarray, stored_dtype: np.dtype) -> np.ndarray:
    """Grey values in the stored range -> [0, 1] float32: uint8 by 255, anything else by min-max."""
    grey = np.asarray(grey, dtype=np.float32)
    if np.dtype(stored_dtype) == np.uint8:
        return np.clip(grey / 255.0, 0.0, 1.0)
    from monai.transforms import ScaleIntensity

    return np.asarray(ScaleIntensity(minv=0.0, maxv=1.0)(grey[None]))[0].astype(np.float32)


def normalise(unit: torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    """``(..., S, S)`` grey in [0, 1] -> ``(..., 3, S, S)`` normalised pixel values."""
    mean = torch.tensor(config.image_mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(config.image_std, dtype=torch.float32).view(3, 1, 1)
    rgb = unit.unsqueeze(-3).expand(*unit.shape[:-2], 3, *unit.shape[-2:])
    return (rgb - mean) / std


def check_frame(image: UltrasoundImage, frame: int | None) -> int:
    """The frame to use: ``frame`` (0-based), or the middle one when None; SonoInputError if out of range."""
    if frame is None:
        return image.n_frames // 2
    if isinstance(frame, bool) or not isinstance(frame, int | np.integer):
        raise SonoInputError("frame", f"must be an integer, got {frame!r}")
    if not 0 <= int(frame) < image.n_frames:
        raise SonoInputError(
            "frame", f"frame {frame} is out of range: {image.source} has {image.n_frames} frame(s) (0-based)"
        )
    return int(frame)


def image_geometry(image: UltrasoundImage, config: PreprocessConfig) -> FrameGeometry:
    """Geometry of ``image``'s frames (the imaging region is the same for every frame)."""
    bbox = image.imaging_bbox() if config.crop_to_region else None
    return frame_geometry((image.height, image.width), bbox, config)


def preprocess_frame(
    image: UltrasoundImage, frame: int | None, config: PreprocessConfig
) -> tuple[torch.Tensor, FrameGeometry]:
    """One frame -> ``(pixel_values (3, S, S) float32, geometry)``; ``frame`` None = middle frame."""
    frame = check_frame(image, frame)
    geometry = image_geometry(image, config)
    unit = unit_intensity(image.grey(frame), image.frames.dtype)
    model_grey = to_model_space(unit, geometry, pad_value=config.pad_value)
    return normalise(model_grey, config), geometry


def mask_to_model_space(mask: np.ndarray, geometry: FrameGeometry) -> torch.Tensor:
    """Frame mask ``(rows, cols)`` (non-zero = lesion) -> ``(1, S, S)`` float32 of 0/1."""
    soft = to_model_space((np.asarray(mask) != 0).astype(np.float32), geometry)
    return (soft >= 0.5).to(torch.float32).unsqueeze(0)


def preprocess_pair(
    image: UltrasoundImage, mask: np.ndarray, frame: int | None, config: PreprocessConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """A training pair in model space: ``(pixel_values (3, S, S), mask (1, S, S) of 0/1)``.

    The same geometry as serving, so what the model learns is where the server draws.
    """
    mask = np.asarray(mask)
    if mask.shape != (image.height, image.width):
        raise SonoInputError(
            "mask", f"shape {mask.shape} does not match the image ({image.height}, {image.width})"
        )
    pixel_values, geometry = preprocess_frame(image, frame, config)
    return pixel_values, mask_to_model_space(mask, geometry)
