"""Ultrasound-specific augmentation as MONAI dictionary transforms, beside MONAI's geometric ones.

Shared by ``python -m training`` and the server's retraining (:mod:`sonovlm.app.train`, request
param ``augment``), so a model retrained from Slicer is augmented like the published one.

The ultrasound transforms model acquisition artefacts, after the augmentations studied in
Tupper et al., "Revisiting Data Augmentation for Ultrasound Images" (arXiv 2501.13193, 2025)
and their library ``usaugment`` (github.com/adamtupper/usaugment), which in turn follow
Østvik et al. 2021 (depth attenuation, haze, speckle reduction) and Smistad et al. 2018
(Gaussian shadow). ``usaugment`` needs numpy >= 2.2 and cannot sit beside monailabel 0.8.5, so
these are written here, for MONAI's dictionary pipeline and torch tensors, from the papers'
formulas (not copied code):

* :class:`RandDepthAttenuationd`: intensity falls with distance from the probe (top centre):
  ``I * ((1 - a_max) * exp(-rate * d) + a_max)``, ``d = sqrt((x - 0.5)^2 + y^2)`` on the unit grid.
* :class:`RandGaussianShadowd`: an acoustic shadow as a 2-D Gaussian dimming,
  ``I * (1 - s * exp(-((x - mx)^2 / 2sx^2 + (y - my)^2 / 2sy^2)))``.
* :class:`RandHazed`: near-field haze, uniform noise on a ring of radius r around the probe,
  ``I + 0.5 * U(0, 1) * exp(-(rho - r)^2 / 2 sigma^2)``, clipped to [0, 1].
* :class:`RandSpeckleReductiond`: a bilateral filter (Tomasi & Manduchi 1998) that smooths speckle
  while keeping edges, blended in inside the scan area.
* :class:`RandSpeckleNoised`: the opposite direction: multiplicative speckle, gamma-distributed
  (mean 1, ``1 / looks`` variance) and spatially correlated over ``grain`` pixels.

All take images ``(channels, rows, cols)`` with intensities in [0, 1] (before normalisation);
rows are depth. ``scan_mask_key`` names an optional ``(1, rows, cols)`` mask of the imaged area
(1) versus padding (0): artefacts stay inside it, as in ``usaugment``.

:func:`train_transforms` builds the training pipeline; its ``mode`` switches the groups on and
off for the ablation (``none``, ``geometric``, ``ultrasound``, ``all``); ``reference`` is the
reference code's strong + weak augmentation instead (:class:`ReferenceAugmentd`, ``--paper``).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    MapTransform,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandomizableTransform,
)
from monai.utils import convert_to_dst_type, convert_to_tensor

AUGMENT_MODES: tuple[str, ...] = ("none", "geometric", "ultrasound", "all", "reference")


def _uniform(rng: np.random.RandomState, value: float | Sequence[float]) -> float:
    if isinstance(value, int | float):
        return float(value)
    low, high = value
    return float(rng.uniform(low, high))


def _unit_grid(rows: int, cols: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` each ``(rows, cols)``: column and row positions on [0, 1]."""
    y = torch.linspace(0, 1, rows, device=device)
    x = torch.linspace(0, 1, cols, device=device)
    return torch.meshgrid(x, y, indexing="xy")


class _UltrasoundTransform(RandomizableTransform, MapTransform):
    """Shared plumbing: keys, probability, the scan mask, tensor conversion."""

    def __init__(
        self, keys: KeysCollection, prob: float, scan_mask_key: str | None, allow_missing_keys: bool
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.scan_mask_key = scan_mask_key

    def _scan_mask(self, d: Mapping, like: torch.Tensor) -> torch.Tensor:
        if self.scan_mask_key and self.scan_mask_key in d:
            mask = convert_to_tensor(d[self.scan_mask_key], device=like.device, dtype=like.dtype)
            return (mask[:1] > 0).to(like.dtype)
        return torch.ones_like(like[:1])

    def _draw(self, rows: int, cols: int) -> None:
        """Draw the transform's parameters with ``self.R`` (subclasses)."""

    def _apply(self, img: torch.Tensor, scan: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        drawn = False
        for key in self.key_iterator(d):
            original = d[key]
            img = convert_to_tensor(original, dtype=torch.float32)
            if not drawn:
                self._draw(img.shape[-2], img.shape[-1])
                drawn = True
            out = self._apply(img, self._scan_mask(d, img))
            d[key] = convert_to_dst_type(out, original, dtype=torch.float32)[0]
        return d


class RandDepthAttenuationd(_UltrasoundTransform):
    """Depth-dependent attenuation (Østvik et al. 2021).

    Args:
        keys: image keys. prob: probability of applying.
        attenuation_rate: decay rate per unit distance (image height = 1), or a (low, high) range.
        max_attenuation: floor of the attenuation map (0 = may fade to black).
        scan_mask_key: key of the scan-area mask, or ``None``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.5,
        attenuation_rate: float | Sequence[float] = (0.0, 3.0),
        max_attenuation: float = 0.0,
        scan_mask_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, prob, scan_mask_key, allow_missing_keys)
        self.attenuation_rate = attenuation_rate
        self.max_attenuation = max_attenuation

    def _draw(self, rows: int, cols: int) -> None:
        self.rate = _uniform(self.R, self.attenuation_rate)

    def _apply(self, img: torch.Tensor, scan: torch.Tensor) -> torch.Tensor:
        x, y = _unit_grid(img.shape[-2], img.shape[-1], img.device)
        distance = torch.sqrt((x - 0.5) ** 2 + y**2)
        gain = (1 - self.max_attenuation) * torch.exp(-self.rate * distance) + self.max_attenuation
        gain = torch.where(scan[0] > 0, gain, torch.ones_like(gain))
        return img * gain


class RandGaussianShadowd(_UltrasoundTransform):
    """Acoustic shadow as a Gaussian dimming (Smistad et al. 2018).

    Args:
        strength: depth of the shadow at its centre (0 none, 1 black), or a range.
        sigma_x, sigma_y: extent as a fraction of the image width / height, or ranges.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.5,
        strength: float | Sequence[float] = (0.25, 0.8),
        sigma_x: float | Sequence[float] = (0.01, 0.2),
        sigma_y: float | Sequence[float] = (0.01, 0.2),
        scan_mask_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, prob, scan_mask_key, allow_missing_keys)
        self.strength, self.sigma_x, self.sigma_y = strength, sigma_x, sigma_y

    def _draw(self, rows: int, cols: int) -> None:
        self.centre = (float(self.R.uniform(0, 1)), float(self.R.uniform(0, 1)))
        self.s = _uniform(self.R, self.strength)
        self.sx = max(_uniform(self.R, self.sigma_x), 1e-3)
        self.sy = max(_uniform(self.R, self.sigma_y), 1e-3)

    def _apply(self, img: torch.Tensor, scan: torch.Tensor) -> torch.Tensor:
        x, y = _unit_grid(img.shape[-2], img.shape[-1], img.device)
        mx, my = self.centre
        blob = torch.exp(-((x - mx) ** 2 / (2 * self.sx**2) + (y - my) ** 2 / (2 * self.sy**2)))
        gain = torch.where(scan[0] > 0, 1 - self.s * blob, torch.ones_like(blob))
        return img * gain


class RandHazed(_UltrasoundTransform):
    """Haze artefact (Østvik et al. 2021): noisy brightening on a ring around the probe.

    Args:
        radius: ring radius on the unit grid, or a range. sigma: ring width, or a range.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.5,
        radius: float | Sequence[float] = (0.05, 0.95),
        sigma: float | Sequence[float] = (0.0, 0.1),
        scan_mask_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, prob, scan_mask_key, allow_missing_keys)
        self.radius, self.sigma = radius, sigma

    def _draw(self, rows: int, cols: int) -> None:
        self.r = _uniform(self.R, self.radius)
        self.s = max(_uniform(self.R, self.sigma), 1e-3)
        self.noise = torch.from_numpy(self.R.uniform(0, 1, (rows, cols)).astype(np.float32))

    def _apply(self, img: torch.Tensor, scan: torch.Tensor) -> torch.Tensor:
        x, y = _unit_grid(img.shape[-2], img.shape[-1], img.device)
        rho = torch.sqrt((x - 0.5) ** 2 + y**2)
        haze = self.noise.to(img.device) * torch.exp(-((rho - self.r) ** 2) / (2 * self.s**2)) * scan[0]
        return torch.clamp(img + 0.5 * haze, 0.0, 1.0)


def bilateral_filter(
    img: torch.Tensor, sigma_spatial: float, sigma_color: float, window: int = 5
) -> torch.Tensor:
    """Bilateral filter of ``img`` ``(channels, rows, cols)`` over a ``window`` × ``window`` patch.

    Weights ``exp(-|p - q|^2 / 2 sigma_spatial^2) * exp(-(I_p - I_q)^2 / 2 sigma_color^2)``, with
    reflect padding at the borders.
    """
    half = window // 2
    c, rows, cols = img.shape
    padded = F.pad(img[None], (half, half, half, half), mode="reflect")
    patches = F.unfold(padded, window).view(c, window * window, rows, cols)
    offsets = torch.arange(-half, half + 1, device=img.device, dtype=img.dtype)
    dy, dx = torch.meshgrid(offsets, offsets, indexing="ij")
    spatial = torch.exp(-(dx**2 + dy**2) / (2 * sigma_spatial**2)).reshape(1, -1, 1, 1)
    colour = torch.exp(-((patches - img[:, None]) ** 2) / (2 * sigma_color**2))
    weights = spatial * colour
    return (weights * patches).sum(1) / weights.sum(1).clamp_min(1e-12)


class RandSpeckleReductiond(_UltrasoundTransform):
    """Speckle reduction by a bilateral filter, applied inside the scan area.

    Args:
        sigma_spatial: spatial sigma in pixels, or a range. sigma_color: intensity sigma, or a range.
        window: filter window (odd, pixels).
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.5,
        sigma_spatial: float | Sequence[float] = (0.1, 2.0),
        sigma_color: float | Sequence[float] = (0.0, 1.0),
        window: int = 5,
        scan_mask_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, prob, scan_mask_key, allow_missing_keys)
        if window % 2 != 1:
            raise ValueError("window must be odd")
        self.sigma_spatial, self.sigma_color, self.window = sigma_spatial, sigma_color, window

    def _draw(self, rows: int, cols: int) -> None:
        self.ss = max(_uniform(self.R, self.sigma_spatial), 1e-3)
        self.sc = max(_uniform(self.R, self.sigma_color), 1e-3)

    def _apply(self, img: torch.Tensor, scan: torch.Tensor) -> torch.Tensor:
        smooth = bilateral_filter(img, self.ss, self.sc, self.window)
        return torch.where(scan > 0, smooth, img)


class RandSpeckleNoised(_UltrasoundTransform):
    """Multiplicative speckle: ``I * n``, ``n`` gamma(looks, 1/looks) noise, correlated over ``grain`` px.

    Args:
        looks: equivalent number of looks (higher = weaker speckle), or a range.
        grain: Gaussian correlation length of the speckle in pixels, or a range.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.5,
        looks: float | Sequence[float] = (4.0, 20.0),
        grain: float | Sequence[float] = (0.5, 1.5),
        scan_mask_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, prob, scan_mask_key, allow_missing_keys)
        self.looks, self.grain = looks, grain

    def _draw(self, rows: int, cols: int) -> None:
        looks = _uniform(self.R, self.looks)
        self.sigma = _uniform(self.R, self.grain)
        self.field = torch.from_numpy(self.R.gamma(looks, 1.0 / looks, (rows, cols)).astype(np.float32))

    def _apply(self, img: torch.Tensor, scan: torch.Tensor) -> torch.Tensor:
        field = self.field.to(img.device)
        radius = max(1, math.ceil(3 * self.sigma))
        taps = torch.arange(-radius, radius + 1, device=img.device, dtype=img.dtype)
        kernel = torch.exp(-(taps**2) / (2 * self.sigma**2))
        kernel = kernel / kernel.sum()
        f = field[None, None]
        f = F.conv2d(F.pad(f, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
        f = F.conv2d(F.pad(f, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))[0, 0]
        f = f / f.mean().clamp_min(1e-6)
        gain = torch.where(scan[0] > 0, f, torch.ones_like(f))
        return torch.clamp(img * gain, 0.0, 1.0)


def ultrasound_transforms(
    image_key: str = "image", scan_mask_key: str | None = "scan_mask", prob: float = 0.25
) -> list[MapTransform]:
    """The five ultrasound transforms, each applied with probability ``prob``."""
    common = {"keys": [image_key], "prob": prob, "scan_mask_key": scan_mask_key, "allow_missing_keys": False}
    return [
        RandDepthAttenuationd(**common),
        RandGaussianShadowd(**common),
        RandHazed(**common),
        RandSpeckleReductiond(**common),
        RandSpeckleNoised(**common),
    ]


def geometric_transforms(
    image_key: str = "image", mask_keys: Sequence[str] = ("mask", "scan_mask"), prob: float = 0.5
) -> list[MapTransform]:
    """MONAI's own: left-right flip, small affine (±10°, ±10 % scale, ±5 % shift), gamma contrast.

    No up-down flip: rows are depth, and a probe never images from below.
    """
    keys = [image_key, *mask_keys]
    modes = ["bilinear"] + ["nearest"] * len(mask_keys)
    return [
        RandFlipd(keys=keys, prob=prob, spatial_axis=1, allow_missing_keys=True),
        RandAffined(
            keys=keys,
            prob=prob,
            rotate_range=math.radians(10),
            scale_range=(0.1, 0.1),
            translate_range=(0.05, 0.05),
            mode=modes,
            padding_mode="zeros",
            allow_missing_keys=True,
        ),
        RandAdjustContrastd(keys=[image_key], prob=prob, gamma=(0.8, 1.25)),
    ]


def train_transforms(mode: str = "all", image_key: str = "image", seed: int | None = None) -> Compose:
    """Training augmentation for ``mode`` in :data:`AUGMENT_MODES` (the ablation switch).

    Ultrasound artefacts come first (they act along the acquisition's depth axis), geometry after.
    """
    if mode not in AUGMENT_MODES:
        raise ValueError(f"unknown augmentation mode {mode!r} (known: {', '.join(AUGMENT_MODES)})")
    steps: list = []
    if mode in ("ultrasound", "all"):
        steps += ultrasound_transforms(image_key)
    if mode in ("geometric", "all"):
        steps += geometric_transforms(image_key)
    if mode == "reference":
        steps.append(ReferenceAugmentd(image_key))
    compose = Compose(steps)
    if seed is not None:
        compose.set_random_state(seed=seed)
    return compose


#: The reference code's photometric ("strong") operations and their value ranges.
_STRONG_OPS: tuple[tuple[str, tuple[float, float] | None], ...] = (
    ("identity", None),
    ("autocontrast", None),
    ("equalize", None),
    ("blur", (0.75, 1.25)),
    ("contrast", (0.75, 1.25)),
    ("brightness", (0.75, 1.25)),
    ("sharpness", (0.75, 1.25)),
    ("posterize", (4, 8)),
    ("solarize", (1, 256)),
)
_WEAK_OPS = ("resized_crop", "hflip", "vflip", "identity")


class ReferenceAugmentd(RandomizableTransform, MapTransform):
    """The reference code's training augmentation (NextGen-UIA, segmentation and classification).

    With probability 0.5 nothing happens. Otherwise the *strong* part draws ``n`` uniformly from
    0 .. 9 and applies ``n`` operations picked with replacement from identity, autocontrast,
    equalize, Gaussian blur (sigma 0.75-1.25), contrast, brightness, sharpness (factors 0.75-1.25),
    posterize (4-7 bits) and solarize (threshold 1-255), as Pillow implements them, to the 8-bit grey
    image; then the *weak* part draws ``n`` from 0 .. 4 and applies ``n`` picked with replacement
    from a square random resized crop (area 0.8-1.2 of the image; a crop that does not fit is
    redrawn, up to 10 times, else the whole image), a left-right flip, an up-down flip and the
    identity, to the image and the masks alike (masks nearest-neighbour).

    Keys: ``image`` ``(1, S, S)`` in [0, 1]; ``mask`` and ``scan_mask`` (when present) follow the
    geometry. Unlike :func:`geometric_transforms` this flips up-down, as the reference does,
    although rows are depth.
    """

    def __init__(self, image_key: str = "image", mask_keys: Sequence[str] = ("mask", "scan_mask")) -> None:
        MapTransform.__init__(self, [image_key], allow_missing_keys=False)
        RandomizableTransform.__init__(self, prob=0.5)
        self.image_key = image_key
        self.mask_keys = tuple(mask_keys)

    def _strong(self, img: torch.Tensor) -> torch.Tensor:
        from PIL import Image, ImageEnhance, ImageFilter, ImageOps

        grey = Image.fromarray(
            (img[0].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy(), mode="L"
        )
        count = int(self.R.randint(0, len(_STRONG_OPS) + 1))
        for index in self.R.randint(0, len(_STRONG_OPS), size=count):
            name, span = _STRONG_OPS[int(index)]
            u = float(self.R.uniform())
            if name == "autocontrast":
                grey = ImageOps.autocontrast(grey)
            elif name == "equalize":
                grey = ImageOps.equalize(grey)
            elif name == "blur":
                grey = grey.filter(ImageFilter.GaussianBlur(radius=span[0] + (span[1] - span[0]) * u))
            elif name in ("contrast", "brightness", "sharpness"):
                enhancer = {
                    "contrast": ImageEnhance.Contrast,
                    "brightness": ImageEnhance.Brightness,
                    "sharpness": ImageEnhance.Sharpness,
                }[name]
                grey = enhancer(grey).enhance(span[1] - (span[1] - span[0]) * u)
            elif name == "posterize":
                grey = ImageOps.posterize(grey, int(span[1] - max(1, math.ceil((span[1] - span[0]) * u))))
            elif name == "solarize":
                grey = ImageOps.solarize(grey, int(span[1] - max(1, math.ceil((span[1] - span[0]) * u))))
        out = torch.from_numpy(np.asarray(grey, dtype=np.float32) / 255.0)[None]
        return out.to(device=img.device, dtype=img.dtype)

    def _crop_box(self, side: int) -> tuple[int, int, int]:
        for _ in range(10):
            crop = int(round(math.sqrt(self.R.uniform(0.8, 1.2)) * side))
            if 0 < crop <= side:
                return int(self.R.randint(0, side - crop + 1)), int(self.R.randint(0, side - crop + 1)), crop
        return 0, 0, side

    def _weak(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        count = int(self.R.randint(0, len(_WEAK_OPS) + 1))
        for index in self.R.randint(0, len(_WEAK_OPS), size=count):
            name = _WEAK_OPS[int(index)]
            if name == "hflip":
                tensors = {k: v.flip(-1) for k, v in tensors.items()}
            elif name == "vflip":
                tensors = {k: v.flip(-2) for k, v in tensors.items()}
            elif name == "resized_crop":
                side = tensors[self.image_key].shape[-1]
                top, left, crop = self._crop_box(side)
                resized = {}
                for key, value in tensors.items():
                    patch = value[None, :, top : top + crop, left : left + crop].float()
                    mode = "bilinear" if key == self.image_key else "nearest"
                    extra = {"align_corners": False} if mode == "bilinear" else {}
                    out = F.interpolate(patch, size=(side, side), mode=mode, **extra)[0]
                    resized[key] = out.to(value.dtype)
                tensors = resized
        return tensors

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        image = convert_to_tensor(d[self.image_key], dtype=torch.float32, track_meta=False)
        tensors = {self.image_key: self._strong(image)}
        for key in self.mask_keys:
            if key in d:
                tensors[key] = convert_to_tensor(d[key], track_meta=False)
        tensors = self._weak(tensors)
        for key, value in tensors.items():
            d[key] = convert_to_dst_type(value, d[key])[0]
        return d
