"""Tissue maps of the three lesion kinds, for :func:`~sonovlm.sample_data.bmode.render_bmode`.

Each scene is a longitudinal view with a high-frequency linear probe: skin, subcutaneous layers,
the organ, and one lesion whose appearance follows the textbook features of its kind and
pathology:

* ``lymph_node``: oval, hypoechoic cortex, thin echogenic capsule. Benign: elongated (long/short
  2-3) with a central echogenic fatty hilum. Malignant: rounder (long/short < 1.7), more
  hypoechoic, hilum effaced (absent or a thin eccentric remnant), small necrotic areas.
* ``breast_lesion``: an irregular hypoechoic mass in the fibroglandular layer that attenuates
  (posterior acoustic shadowing). Benign: gently lobulated, wider than tall, weak shadow.
  Malignant: spiculated, often taller than wide, markedly hypoechoic, strong shadow, sometimes an
  echogenic halo.
* ``thyroid_nodule``: a nodule inside a homogeneous, echogenic thyroid lobe under the strap
  muscles. Benign: iso- to hyperechoic, oval, wider than tall, thin hypoechoic halo, sometimes a
  cystic part. Malignant: markedly hypoechoic, taller than wide, microcalcifications.

Geometry: ``z`` is depth in mm from the probe face (rows), ``x`` lateral position in mm from the
image centre (columns); lesion angles are counter-clockwise on screen from the ``+x`` direction,
as in :mod:`sonovlm.measure`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .bmode import TissueMap


@dataclass(frozen=True)
class Grid:
    """Pixel-centre coordinates of the imaged plane: ``z`` depth (mm, rows), ``x`` lateral (mm)."""

    z: np.ndarray  # (rows, 1)
    x: np.ndarray  # (1, cols)
    spacing_mm: float

    @classmethod
    def make(cls, rows: int, cols: int, spacing_mm: float) -> Grid:
        z = ((np.arange(rows) + 0.5) * spacing_mm)[:, None]
        x = ((np.arange(cols) + 0.5 - cols / 2) * spacing_mm)[None, :]
        return cls(z=z, x=x, spacing_mm=spacing_mm)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.z.shape[0], self.x.shape[1])

    @property
    def depth_mm(self) -> float:
        return self.z.shape[0] * self.spacing_mm

    @property
    def width_mm(self) -> float:
        return self.x.shape[1] * self.spacing_mm


@dataclass(frozen=True)
class LesionShape:
    """A closed lesion outline: an ellipse whose polar radius is modulated.

    The radius at polar angle ``theta`` (in the lesion's own frame) is the ellipse's radius times
    ``1 + sum(a_k cos(k theta + phi_k)) + sum(s_j max(0, cos(theta - theta_j)) ** 200)``: low
    harmonics make it lobulated, the narrow peaks are spicules.

    Attributes:
        centre_mm: ``(z, x)`` of the centre.
        semi_axes_mm: ``(a, b)``, half the long and short axes of the base ellipse.
        angle_deg: long axis direction, counter-clockwise on screen from ``+x``.
        harmonics: ``(k, a_k, phi_k)`` triples.
        spicules: ``(theta_j, s_j)`` pairs.
    """

    centre_mm: tuple[float, float]
    semi_axes_mm: tuple[float, float]
    angle_deg: float
    harmonics: tuple[tuple[int, float, float], ...] = ()
    spicules: tuple[tuple[float, float], ...] = ()

    def max_radius_mm(self) -> float:
        """An upper bound of the outline's distance from the centre."""
        bump = sum(abs(a) for _, a, _ in self.harmonics) + max((s for _, s in self.spicules), default=0.0)
        return self.semi_axes_mm[0] * (1.0 + bump)

    def relative_radius(self, grid: Grid, scale: float = 1.0) -> np.ndarray:
        """``rho``: distance from the centre over the outline's radius (scaled); < 1 inside.

        Computed in a window of 1.3 times the outline's reach around the centre; ``inf`` beyond.
        """
        z0, x0 = self.centre_mm
        reach = 1.3 * self.max_radius_mm() * scale + grid.spacing_mm
        zs, xs = grid.z[:, 0], grid.x[0, :]
        rows = slice(int(np.searchsorted(zs, z0 - reach)), int(np.searchsorted(zs, z0 + reach, side="right")))
        cols = slice(int(np.searchsorted(xs, x0 - reach)), int(np.searchsorted(xs, x0 + reach, side="right")))
        rho = np.full(grid.shape, np.inf)
        if rows.start >= rows.stop or cols.start >= cols.stop:
            return rho
        t = math.radians(self.angle_deg)
        dx = grid.x[:, cols] - x0
        dz = grid.z[rows, :] - z0
        u = dx * math.cos(t) - dz * math.sin(t)
        v = dx * math.sin(t) + dz * math.cos(t)
        theta = np.arctan2(v, u)
        a, b = self.semi_axes_mm[0] * scale, self.semi_axes_mm[1] * scale
        radius = a * b / np.sqrt((b * np.cos(theta)) ** 2 + (a * np.sin(theta)) ** 2)
        modulation = np.ones_like(theta)
        for k, amplitude, phase in self.harmonics:
            modulation += amplitude * np.cos(k * theta + phase)
        for direction, length in self.spicules:
            modulation += length * np.maximum(0.0, np.cos(theta - direction)) ** 200
        rho[rows, cols] = np.hypot(u, v) / (radius * modulation)
        return rho

    def inside(self, grid: Grid, scale: float = 1.0) -> np.ndarray:
        return self.relative_radius(grid, scale) <= 1.0


@dataclass(frozen=True)
class Scene:
    """A simulated plane: its tissue map, the lesion's mask and outline."""

    tissue: TissueMap
    lesion: np.ndarray  # (rows, cols) bool
    shape: LesionShape


def build_scene(rng: np.random.Generator, organ: str, pathology: str, grid: Grid) -> Scene:
    """Tissue map and lesion of ``organ`` (``lymph_node``, ``breast_lesion``, ``thyroid_nodule``)."""
    builders = {"lymph_node": _lymph_node, "breast_lesion": _breast_lesion, "thyroid_nodule": _thyroid_nodule}
    return builders[organ](rng, pathology == "malignant", grid)


# --- shared layers ---------------------------------------------------------------------------


class _Layers:
    """Mutable echo / attenuation / specular maps being painted."""

    def __init__(self, grid: Grid, rng: np.random.Generator) -> None:
        self.grid = grid
        self.rng = rng
        self.echo = np.ones(grid.shape)
        self.attenuation = np.full(grid.shape, 0.5)
        self.specular = np.zeros(grid.shape)

    def texture(self, sigma_mm: float, strength: float) -> np.ndarray:
        """Log-normal multiplicative texture with correlation length ``sigma_mm``."""
        return np.exp(strength * _smooth_noise(self.rng, self.grid.shape, sigma_mm / self.grid.spacing_mm))

    def wavy(self, base_mm: np.ndarray | float, amplitude_mm: float, length_mm: float) -> np.ndarray:
        """A depth that meanders across the image (``(1, cols)``): ``base_mm`` plus a smooth random
        curve of standard deviation ``amplitude_mm`` and correlation length ``length_mm``."""
        cols = self.grid.shape[1]
        curve = _smooth_noise(self.rng, (1, cols), length_mm / self.grid.spacing_mm, axes=(1,))
        tilt = self.rng.uniform(-0.03, 0.03)
        return base_mm + amplitude_mm * curve + tilt * self.grid.x

    def rows_between(self, top_mm: float, bottom_mm: float) -> slice:
        """The rows whose centres lie in ``[top_mm, bottom_mm]``."""
        zs = self.grid.z[:, 0]
        return slice(int(np.searchsorted(zs, top_mm)), int(np.searchsorted(zs, bottom_mm, side="right")))

    def line(self, depth_mm: np.ndarray, amplitude: float, thickness_mm: float = 0.15) -> None:
        """A specular interface along ``depth_mm`` (``(1, cols)``), its strength varying along it."""
        along = np.exp(
            0.5 * _smooth_noise(self.rng, (1, self.grid.shape[1]), 1.5 / self.grid.spacing_mm, axes=(1,))
        )
        rows = self.rows_between(
            float(np.min(depth_mm)) - 5 * thickness_mm, float(np.max(depth_mm)) + 5 * thickness_mm
        )
        profile = np.exp(-0.5 * ((self.grid.z[rows] - depth_mm) / thickness_mm) ** 2)
        self.specular[rows] += amplitude * profile * along

    def band(self, top_mm: np.ndarray, bottom_mm: np.ndarray | float, echo: np.ndarray | float) -> np.ndarray:
        region = (self.grid.z >= top_mm) & (self.grid.z < bottom_mm)
        self.echo = np.where(region, echo, self.echo)
        return region

    def skin(self) -> np.ndarray:
        thickness = self.rng.uniform(1.2, 1.8)
        self.band(0.0, thickness, 1.8 * self.texture(0.3, 0.3))
        self.line(np.full((1, 1), 0.15), 1.0, 0.1)
        self.line(np.full((1, 1), thickness), 0.6)
        return np.full((1, self.grid.shape[1]), thickness)

    def fat(self, top: np.ndarray, bottom: np.ndarray, septa: int) -> None:
        self.band(top, bottom, 0.45 * self.texture(0.8, 0.35))
        for _ in range(septa):  # thin oblique connective-tissue septa
            fraction = self.wavy(float(self.rng.uniform(0.15, 0.85)), 0.15, self.rng.uniform(4.0, 10.0))
            self.line(top + (bottom - top) * np.clip(fraction, 0.05, 0.95), self.rng.uniform(0.15, 0.35), 0.1)

    def muscle(self, top: np.ndarray, bottom: np.ndarray | float, echo: float = 0.6) -> None:
        """Muscle between ``top`` and ``bottom``: fibres seen as bright striations along the layer."""
        region = self.band(top, bottom, echo * self.texture(1.0, 0.25))
        bottom = np.minimum(bottom, self.grid.depth_mm)
        rows = self.rows_between(float(np.min(top)) - 1.0, float(np.max(bottom)) + 1.0)
        z = self.grid.z[rows]
        striations = np.zeros((z.shape[0], self.grid.shape[1]))
        for _ in range(max(2, int(float(np.max(bottom - top)) / 1.5))):
            depth = (
                top + self.rng.uniform(0, 1) * (bottom - top) + self.rng.uniform(-0.05, 0.05) * self.grid.x
            )
            striations += np.exp(-0.5 * ((z - depth) / 0.12) ** 2)
        fibres = np.ones(self.grid.shape)
        fibres[rows] += 1.2 * np.minimum(striations, 1.5)
        self.echo = np.where(region, self.echo * fibres, self.echo)

    def done(self) -> TissueMap:
        return TissueMap(echo=self.echo, attenuation=self.attenuation, specular=self.specular)


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int], sigma_px: float, axes: tuple[int, ...] = (0, 1)
) -> np.ndarray:
    """Gaussian-correlated noise of unit standard deviation (``sigma_px`` along ``axes``).

    Drawn on a grid coarser by ``sigma_px / 3`` and interpolated up: the same statistics at a
    fraction of the cost of filtering full-size noise with a wide kernel.
    """
    factor = max(1, int(sigma_px / 3))
    coarse_shape = tuple(-(-n // factor) + 1 if i in axes and factor > 1 else n for i, n in enumerate(shape))
    sigma = tuple(sigma_px / factor if i in axes else 0.0 for i in range(len(shape)))
    noise = ndimage.gaussian_filter(rng.standard_normal(coarse_shape, dtype=np.float32), sigma, mode="wrap")
    if factor > 1:  # separable linear interpolation (no BLAS: the same sums in the same order)
        noise = _upsample_axis(noise, shape[0], factor, axis=0)
        noise = _upsample_axis(noise, shape[1], factor, axis=1)
    return (noise - noise.mean()) / (noise.std() + 1e-12)


def _upsample_axis(values: np.ndarray, n_out: int, factor: int, axis: int) -> np.ndarray:
    """Linear interpolation along ``axis`` of samples spaced ``factor`` apart, to ``n_out`` samples."""
    n_in = values.shape[axis]
    if n_in == n_out:
        return values
    position = np.arange(n_out) / factor
    low = np.minimum(position.astype(int), n_in - 2)
    weight = (position - low).astype(values.dtype)
    shape = [1, 1]
    shape[axis] = n_out
    weight = weight.reshape(shape)
    return np.take(values, low, axis=axis) * (1 - weight) + np.take(values, low + 1, axis=axis) * weight


def _place(
    rng: np.random.Generator,
    grid: Grid,
    shape: LesionShape,
    depth_range: tuple[float, float],
    margin_mm: float,
) -> LesionShape:
    """``shape`` moved to a random centre that keeps it ``margin_mm`` inside the plane."""
    reach = shape.max_radius_mm() + margin_mm
    z_low = min(max(depth_range[0], reach), grid.depth_mm - reach)
    z_high = max(z_low, min(depth_range[1], grid.depth_mm - reach))
    x_half = max(0.0, grid.width_mm / 2 - reach)
    centre = (float(rng.uniform(z_low, z_high)), float(rng.uniform(-x_half, x_half)))
    return LesionShape(centre, shape.semi_axes_mm, shape.angle_deg, shape.harmonics, shape.spicules)


def _harmonics(rng: np.random.Generator, ks: range, low: float, high: float) -> tuple:
    return tuple((k, float(rng.uniform(low, high)), float(rng.uniform(0, 2 * math.pi))) for k in ks)


def _fit(grid: Grid, shape: LesionShape) -> LesionShape:
    """Shrink ``shape`` so that it fits in the plane with a margin (small test images)."""
    limit = 0.3 * min(grid.depth_mm, grid.width_mm)
    factor = min(1.0, limit / shape.max_radius_mm())
    a, b = shape.semi_axes_mm
    return LesionShape(
        shape.centre_mm, (a * factor, b * factor), shape.angle_deg, shape.harmonics, shape.spicules
    )


# --- lymph node ------------------------------------------------------------------------------


def _lymph_node(rng: np.random.Generator, malignant: bool, grid: Grid) -> Scene:
    layers = _Layers(grid, rng)
    skin = layers.skin()
    fat_bottom = layers.wavy(rng.uniform(4.0, 7.0) * grid.depth_mm / 40, 0.5, 8.0)
    layers.fat(skin, fat_bottom, septa=3)
    layers.line(fat_bottom, 0.6)
    muscle_bottom = fat_bottom + rng.uniform(5.0, 8.0) * grid.depth_mm / 40
    layers.muscle(fat_bottom, muscle_bottom)
    layers.line(muscle_bottom, 0.5)
    layers.band(muscle_bottom, np.inf, 0.8 * layers.texture(2.0, 0.35))

    long_mm = rng.uniform(10.0, 20.0)
    ratio = rng.uniform(1.15, 1.6) if malignant else rng.uniform(2.0, 2.8)
    shape = LesionShape(
        (0.0, 0.0),
        (long_mm / 2, long_mm / 2 / ratio),
        float(rng.uniform(-12, 12)),
        _harmonics(rng, range(3, 6), 0.0, 0.03),
    )
    shape = _fit(grid, shape)
    shape = _place(rng, grid, shape, (float(np.max(muscle_bottom)) + 3.0, grid.depth_mm * 0.7), 2.0)
    rho = shape.relative_radius(grid)
    node = rho <= 1.0

    cortex = (0.1 if malignant else 0.22) * layers.texture(0.6, 0.3)
    echo = np.where(node, cortex, layers.echo)
    if malignant:
        for _ in range(int(rng.integers(1, 4))):  # small necrotic (cystic) areas
            a, b = shape.semi_axes_mm
            necrosis = LesionShape(
                (
                    shape.centre_mm[0] + rng.uniform(-0.4, 0.4) * b,
                    shape.centre_mm[1] + rng.uniform(-0.4, 0.4) * a,
                ),
                (b * rng.uniform(0.15, 0.3), b * rng.uniform(0.1, 0.2)),
                float(rng.uniform(0, 180)),
            )
            echo = np.where(necrosis.inside(grid) & node, 0.03, echo)
        if rng.uniform() < 0.5:  # thin eccentric hilum remnant
            remnant = LesionShape(
                _offset(shape, 0.0, rng.uniform(0.35, 0.55)),
                (shape.semi_axes_mm[0] * 0.35, shape.semi_axes_mm[1] * 0.12),
                shape.angle_deg,
            )
            echo = np.where(remnant.inside(grid) & node, 1.4 * layers.texture(0.4, 0.3), echo)
    else:
        hilum = LesionShape(
            _offset(shape, 0.0, rng.uniform(-0.15, 0.15)),
            (shape.semi_axes_mm[0] * rng.uniform(0.5, 0.65), shape.semi_axes_mm[1] * rng.uniform(0.3, 0.45)),
            shape.angle_deg + float(rng.uniform(-5, 5)),
            _harmonics(rng, range(2, 4), 0.0, 0.08),
        )
        echo = np.where(hilum.inside(grid), 2.0 * layers.texture(0.4, 0.35), echo)
    layers.echo = echo
    layers.specular += 0.3 * np.exp(-0.5 * ((rho - 1.0) * shape.semi_axes_mm[1] / 0.15) ** 2)
    layers.attenuation = np.where(node, 0.35, layers.attenuation)
    return Scene(layers.done(), node, shape)


def _offset(shape: LesionShape, along: float, across: float) -> tuple[float, float]:
    """A point ``along`` × a and ``across`` × b from ``shape``'s centre, in its own frame."""
    t = math.radians(shape.angle_deg)
    a, b = shape.semi_axes_mm
    dx = along * a * math.cos(t) + across * b * math.sin(t)
    dz = -along * a * math.sin(t) + across * b * math.cos(t)
    return (shape.centre_mm[0] + dz, shape.centre_mm[1] + dx)


# --- breast ----------------------------------------------------------------------------------


def _breast_lesion(rng: np.random.Generator, malignant: bool, grid: Grid) -> Scene:
    layers = _Layers(grid, rng)
    scale = grid.depth_mm / 40
    skin = layers.skin()
    gland_top = layers.wavy(rng.uniform(4.0, 7.0) * scale, 1.0, 6.0)
    layers.fat(skin, gland_top, septa=2)
    gland_bottom = gland_top + rng.uniform(16.0, 20.0) * scale
    fat_patches = layers.texture(2.0, 1.0) < 0.7
    gland_echo = np.where(fat_patches, 0.5, 1.3) * layers.texture(0.7, 0.3)
    gland = layers.band(gland_top, gland_bottom, gland_echo)
    for _ in range(3):  # Cooper's ligaments: bright curved bands at the gland's surface
        arc = (
            gland_top
            + rng.uniform(-1.5, 0.5) * scale
            + 1.5 * np.cos(2 * math.pi * grid.x / rng.uniform(12, 25))
        )
        layers.line(arc, 0.3, 0.12)
    fascia = gland_bottom + rng.uniform(2.0, 4.0) * scale
    layers.band(gland_bottom, fascia, 0.45 * layers.texture(0.8, 0.3))
    layers.line(fascia, 0.7)
    layers.muscle(fascia, np.inf, 0.6)

    long_mm = rng.uniform(9.0, 18.0)
    if malignant:
        ratio = rng.uniform(1.0, 1.4)
        angle = float(rng.uniform(60, 120)) if rng.uniform() < 0.6 else float(rng.uniform(0, 180))
        harmonics = _harmonics(rng, range(2, 7), 0.04, 0.1)
        spicules = tuple(
            (float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0.1, 0.25)))
            for _ in range(int(rng.integers(8, 16)))
        )
    else:
        ratio = rng.uniform(1.4, 2.0)
        angle = float(rng.uniform(-15, 15))
        harmonics = _harmonics(rng, range(2, 6), 0.02, 0.06)
        spicules = ()
    shape = _fit(
        grid, LesionShape((0.0, 0.0), (long_mm / 2, long_mm / 2 / ratio), angle, harmonics, spicules)
    )
    gland_mid = float(np.mean(gland_top + gland_bottom) / 2)
    shape = _place(rng, grid, shape, (gland_mid - 3 * scale, gland_mid + 3 * scale), 2.0)
    rho = shape.relative_radius(grid)
    mass = rho <= 1.0

    if malignant and rng.uniform() < 0.5:  # echogenic halo around the mass
        halo = (rho > 1.0) & (rho <= 1.15) & gland
        layers.echo = np.where(halo, 1.6 * layers.texture(0.4, 0.3), layers.echo)
    inner = (0.1 if malignant else 0.2) * layers.texture(0.8, 0.4)
    layers.echo = np.where(mass, inner, layers.echo)
    layers.attenuation = np.where(
        mass, rng.uniform(1.2, 1.5) if malignant else rng.uniform(0.85, 1.0), layers.attenuation
    )
    return Scene(layers.done(), mass, shape)


# --- thyroid ---------------------------------------------------------------------------------


def _thyroid_nodule(rng: np.random.Generator, malignant: bool, grid: Grid) -> Scene:
    layers = _Layers(grid, rng)
    scale = grid.depth_mm / 40
    skin = layers.skin()
    strap_top = skin + rng.uniform(1.0, 2.0) * scale
    layers.fat(skin, strap_top, septa=1)
    lobe_top = float(rng.uniform(6.0, 8.0) * scale)
    thickness = float(rng.uniform(16.0, 20.0) * scale)
    layers.muscle(strap_top, lobe_top + 1.0 * scale, 0.55)
    layers.band(lobe_top + 1.0 * scale, np.inf, 0.45 * layers.texture(1.5, 0.3))  # prevertebral muscle

    lobe = LesionShape(
        (lobe_top + thickness / 2, float(rng.uniform(-2.0, 2.0)) * scale),
        (grid.width_mm * rng.uniform(0.46, 0.55), thickness / 2),
        float(rng.uniform(-3, 3)),
        _harmonics(rng, range(2, 4), 0.0, 0.03),
    )
    lobe_rho = lobe.relative_radius(grid)
    gland = lobe_rho <= 1.0
    layers.echo = np.where(gland, 1.9 * layers.texture(0.5, 0.2), layers.echo)
    layers.specular += 0.4 * np.exp(-0.5 * ((lobe_rho - 1.0) * lobe.semi_axes_mm[1] / 0.15) ** 2)

    long_mm = rng.uniform(6.0, min(13.0, 0.75 * thickness))
    if malignant:
        ratio = rng.uniform(1.1, 1.5)
        angle = float(rng.uniform(70, 110))
        harmonics = _harmonics(rng, range(3, 8), 0.03, 0.08)
    else:
        ratio = rng.uniform(1.3, 1.8)
        angle = float(rng.uniform(-15, 15))
        harmonics = _harmonics(rng, range(2, 5), 0.0, 0.03)
    nodule = LesionShape((0.0, 0.0), (long_mm / 2, long_mm / 2 / ratio), angle, harmonics)
    # Inside the lobe with a margin: centres from the lobe eroded by the nodule's reach.
    reach = nodule.max_radius_mm() + 1.0
    allowed = ndimage.distance_transform_edt(gland, sampling=grid.spacing_mm) > reach
    candidates = np.argwhere(allowed)
    if candidates.size == 0:  # a tiny test image: centre of the lobe, nodule shrunk to fit
        centre = lobe.centre_mm
        nodule = LesionShape(
            centre, (lobe.semi_axes_mm[1] * 0.5, lobe.semi_axes_mm[1] * 0.35), angle, harmonics
        )
    else:
        r, c = candidates[int(rng.integers(len(candidates)))]
        nodule = LesionShape(
            (float(grid.z[r, 0]), float(grid.x[0, c])), nodule.semi_axes_mm, angle, harmonics
        )
    rho = nodule.relative_radius(grid)
    inside = (rho <= 1.0) & gland

    if malignant:
        layers.echo = np.where(inside, 0.22 * layers.texture(0.6, 0.35), layers.echo)
        ys, xs = np.nonzero(rho <= 0.8)
        for k in rng.choice(len(ys), size=min(len(ys), int(rng.integers(5, 14))), replace=False):
            layers.specular[ys[k], xs[k]] += rng.uniform(4.0, 8.0)  # microcalcifications
        layers.attenuation = np.where(inside, 0.8, layers.attenuation)
    else:
        core = rng.uniform(3.0, 4.0) * layers.texture(0.6, 0.3)  # hyperechoic to the lobe's 1.9
        halo = 1.0 - rng.uniform(0.5, 0.9) / nodule.semi_axes_mm[1]  # a thin hypoechoic rim, 0.5-0.9 mm
        layers.echo = np.where(inside, np.where(rho <= halo, core, 0.25), layers.echo)
        if rng.uniform() < 0.4:  # a cystic part
            a, b = nodule.semi_axes_mm
            cyst = LesionShape(_offset(nodule, rng.uniform(-0.3, 0.3), 0.0), (a * 0.35, b * 0.35), angle)
            layers.echo = np.where(cyst.inside(grid) & inside, 0.02, layers.echo)
        layers.attenuation = np.where(inside, 0.4, layers.attenuation)
    return Scene(layers.done(), inside, nodule)
