"""Lesion measurements from a mask and the pixel spacing, with NumPy alone.

Slicer's Python has NumPy but not the ``sonovlm`` package (nor, reliably, SciPy), so the
extension measures the segment itself, with the same definitions as ``sonovlm.measure`` (the
project's tests check that both give the same numbers):

* the lesion is the largest 8-connected component of the non-zero pixels, holes filled;
* pixel ``(x, y)`` (x = column, y = row, centres at integers) is the rectangle
  ``[x - 0.5, x + 0.5] x [y - 0.5, y + 0.5]`` scaled by ``col_mm`` x ``row_mm``;
* area: pixel count x ``row_mm`` x ``col_mm``;
* long axis: the largest distance between two corners of the lesion's convex hull; among the
  diameters within one pixel diagonal of the longest (pixelation makes them equally long in
  truth), the one closest in direction to the principal axis of the pixel centres;
* short axis: over the lines perpendicular to the long axis through every boundary vertex, the
  longest distance between the first and last boundary crossing;
* orientation: long-axis angle from the rows' direction, counter-clockwise on screen, [0, 180);
* taller than wide: antero-posterior (row direction) extent of the bounding box larger than the
  transverse (column direction) one.

Uncalibrated images (``spacing_mm`` ``None``) get pixel values only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Point = tuple[float, float]


@dataclass(frozen=True)
class Axes:
    """Measurements in one unit system (mm, or pixels of size 1 x 1).

    Attributes:
        area: mm² (or pixels).
        long_axis, short_axis: longest diameter and longest diameter perpendicular to it.
        axis_ratio: ``long_axis / short_axis``.
        orientation_deg: long-axis angle from the rows' direction, counter-clockwise on screen.
        ap_extent, transverse_extent: bounding-box extents along the rows (depth) and columns.
        long_axis_endpoints, short_axis_endpoints: two ``(x, y)`` points each, in pixel
            coordinates (pixel centres at integers), to draw the axes on the image.
    """

    area: float
    long_axis: float
    short_axis: float
    axis_ratio: float
    orientation_deg: float
    ap_extent: float
    transverse_extent: float
    long_axis_endpoints: tuple[Point, Point]
    short_axis_endpoints: tuple[Point, Point]

    @property
    def taller_than_wide(self) -> bool:
        return self.ap_extent > self.transverse_extent


@dataclass(frozen=True)
class LesionMeasurement:
    """Measurements of one lesion mask.

    Attributes:
        pixels: the axes in pixel units (always present).
        physical: the axes in millimetres, ``None`` when the image is not calibrated.
        spacing_mm: ``(row_mm, col_mm)`` used, or ``None``.
        area_px: pixel count of the measured component (holes filled).
        components: number of 8-connected components in the mask (the largest is measured).
    """

    pixels: Axes
    physical: Axes | None
    spacing_mm: tuple[float, float] | None
    area_px: int
    components: int

    @property
    def calibrated(self) -> bool:
        return self.physical is not None

    @property
    def geometry(self) -> Axes:
        """The axes to draw: physical when calibrated, else pixel ones."""
        return self.physical if self.physical is not None else self.pixels

    def table_rows(self) -> list:
        """``[(quantity, value text)]`` for the measurements table, in mm when calibrated."""
        axes, unit = (self.physical, "mm") if self.physical is not None else (self.pixels, "px")
        area_unit = "mm²" if self.physical is not None else "px"
        rows = [
            ("Long axis", f"{axes.long_axis:.1f} {unit}"),
            ("Short axis", f"{axes.short_axis:.1f} {unit}"),
            ("Long/short ratio", f"{axes.axis_ratio:.2f}"),
            ("Area", f"{axes.area:.1f} {area_unit}"),
            ("Orientation", f"{axes.orientation_deg:.0f}°"),
            ("Taller than wide", "yes" if axes.taller_than_wide else "no"),
        ]
        if self.physical is None:
            rows.append(("Calibration", "none: pixel units"))
        if self.components > 1:
            rows.append(("Note", f"{self.components} separate regions; the largest is measured"))
        return rows


def measure_lesion(mask: np.ndarray, spacing_mm: Sequence[float] | None = None) -> LesionMeasurement:
    """Measure the lesion in ``mask`` (``(rows, cols)``, non-zero = lesion).

    Raises:
        ValueError: the mask is not 2D or empty, or the spacing is not two positive numbers.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a lesion mask must be 2D (rows, cols), got shape {mask.shape}")
    spacing = None
    if spacing_mm is not None:
        spacing = tuple(float(v) for v in spacing_mm)
        if len(spacing) != 2 or not all(math.isfinite(v) and v > 0 for v in spacing):
            raise ValueError(f"spacing_mm must be two positive numbers (row_mm, col_mm), got {spacing_mm!r}")
    lesion, components = largest_component_filled(mask != 0)
    pixels = _axes(lesion, 1.0, 1.0)
    physical = _axes(lesion, spacing[0], spacing[1]) if spacing is not None else None
    return LesionMeasurement(
        pixels=pixels, physical=physical, spacing_mm=spacing, area_px=int(lesion.sum()), components=components
    )


def largest_component_filled(lesion: np.ndarray) -> tuple[np.ndarray, int]:
    """The largest 8-connected component of a bool ``(rows, cols)`` array, holes filled, and the
    number of components. Ties go to the component met first in raster order."""
    runs, roots = _label_runs(lesion, eight_connected=True)
    if len(runs) == 0:
        raise ValueError("the mask is empty (no non-zero lesion pixel)")
    lengths = runs[:, 2] - runs[:, 1]
    unique_roots, first_run = np.unique(roots, return_index=True)
    sizes = np.array([lengths[roots == r].sum() for r in unique_roots])
    order = np.lexsort((first_run, -sizes))  # largest, then earliest
    chosen = unique_roots[order[0]]
    component = np.zeros(lesion.shape, dtype=bool)
    for row, start, end in runs[roots == chosen]:
        component[row, start:end] = True
    return _fill_holes(component), int(unique_roots.size)


def _fill_holes(component: np.ndarray) -> np.ndarray:
    """Fill background regions (4-connected) that do not reach outside the component's box."""
    ys, xs = np.nonzero(component)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    box = np.pad(component[y0:y1, x0:x1], 1)  # the padding ring is background, outside
    runs, roots = _label_runs(~box, eight_connected=False)
    rows, cols = box.shape
    touches = (runs[:, 0] == 0) | (runs[:, 0] == rows - 1) | (runs[:, 1] == 0) | (runs[:, 2] == cols)
    outside = set(roots[touches].tolist())
    filled = component.copy()
    for (row, start, end), root in zip(runs, roots):
        if root not in outside:
            filled[y0 + row - 1, x0 + start - 1 : x0 + end - 1] = True
    return filled


def _principal_axis(xs: np.ndarray, ys: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Unit ``(x, y)`` principal axis of the pixel centres in scaled units, from their sample
    covariance computed with exact integers as sonovlm.measure does; the rows' direction when the
    moments have none (a disc, a square, one square pixel)."""
    n = int(xs.size)
    if n < 2:  # one pixel: the identity, scaled (its rectangle's own shape)
        cov = np.diag(scale * scale)
    else:
        sx, sy = int(xs.sum()), int(ys.sum())
        sxx, syy = int((xs.astype(np.int64) ** 2).sum()), int((ys.astype(np.int64) ** 2).sum())
        sxy = int((xs.astype(np.int64) * ys).sum())
        d = n * (n - 1)
        xx, yy, xy = (n * sxx - sx * sx) / d, (n * syy - sy * sy) / d, (n * sxy - sx * sy) / d
        cov = np.array([[xx, xy], [xy, yy]]) * np.outer(scale, scale)
    if cov[0, 0] == cov[1, 1] and cov[0, 1] == 0:
        return np.array([1.0, 0.0])
    return np.linalg.eigh(cov)[1][:, -1]


def _label_runs(binary: np.ndarray, eight_connected: bool) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of a bool image by runs: ``(runs (n, 3) [row, start, end), roots (n,))``.

    Runs are in raster order; runs of one component share a root.
    """
    padded = np.pad(binary.astype(np.int8), ((0, 0), (1, 1)))
    change = np.diff(padded, axis=1)
    start_rows, starts = np.nonzero(change == 1)
    _, ends = np.nonzero(change == -1)
    runs = np.stack([start_rows, starts, ends], axis=1) if start_rows.size else np.zeros((0, 3), int)
    parent = list(range(len(runs)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if len(runs) == 0:
        return runs, np.zeros(0, dtype=int)
    reach = 1 if eight_connected else 0
    row_start = np.searchsorted(runs[:, 0], np.arange(binary.shape[0] + 1))
    for row in range(1, binary.shape[0]):
        above = range(row_start[row - 1], row_start[row])
        here = range(row_start[row], row_start[row + 1])
        j = above.start
        for i in here:
            # Advance past runs above that end before this run can touch them.
            while j < above.stop and runs[j, 2] + reach <= runs[i, 1]:
                j += 1
            k = j
            while k < above.stop and runs[k, 1] < runs[i, 2] + reach:
                a, b = find(i), find(k)
                if a != b:
                    parent[max(a, b)] = min(a, b)
                k += 1
    roots = np.array([find(i) for i in range(len(runs))], dtype=int)
    return runs, roots


def _axes(lesion: np.ndarray, row_mm: float, col_mm: float) -> Axes:
    """Axes of the union of the lesion's pixel rectangles, scaled by (row_mm, col_mm)."""
    scale = np.array([col_mm, row_mm])
    ys, xs = np.nonzero(lesion)
    area = float(ys.size) * row_mm * col_mm
    ap_extent = float(ys.max() - ys.min() + 1) * row_mm
    transverse_extent = float(xs.max() - xs.min() + 1) * col_mm

    edges = _boundary_edges(lesion) * scale  # (n, 2 ends, (x, y))
    vertices = np.unique(edges.reshape(-1, 2), axis=0)

    # Pixelation makes several diameters equally long in truth (a blunt tip is a run of pixels):
    # among those within one pixel diagonal of the longest, take the one closest in direction to
    # the principal axis of the pixel centres, then the longest, as sonovlm.measure does; of
    # parallel equals, the one passing closest to the lesion's centre.
    hull = _convex_hull(vertices)
    diff = hull[:, None, :] - hull[None, :, :]
    dist = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
    tolerance = math.hypot(row_mm, col_mm)
    i_idx, j_idx = np.nonzero(np.triu(dist >= dist.max() - tolerance, k=1))
    centres = np.stack([xs * col_mm, ys * row_mm], axis=1)
    principal = _principal_axis(xs, ys, scale)
    directions = diff[i_idx, j_idx] / dist[i_idx, j_idx, None]
    alignment = np.round(np.abs(directions @ principal), 9)
    midpoints = (hull[i_idx] + hull[j_idx]) / 2.0
    off_centre = np.round(np.hypot(*(midpoints - centres.mean(axis=0)).T), 9)
    best = np.lexsort((off_centre, -dist[i_idx, j_idx], -alignment))[0]
    a, b = hull[i_idx[best]], hull[j_idx[best]]
    if (a[0], a[1]) > (b[0], b[1]):  # left (then top) end first
        a, b = b, a
    long_axis = float(dist[i_idx[best], j_idx[best]])
    u = (b - a) / long_axis
    v = np.array([-u[1], u[0]])

    # Lines perpendicular to u through every boundary vertex; the extent of the boundary
    # crossings along v on each line; the largest is the short axis.
    t_candidates = np.unique(vertices @ u)
    p0, p1 = edges[:, 0, :], edges[:, 1, :]
    du = (p1 - p0) @ u
    crossing = np.abs(du) > 1e-12 * max(long_axis, 1.0)
    p0, p1, du = p0[crossing], p1[crossing], du[crossing]
    u0 = p0 @ u
    v0, v1 = p0 @ v, p1 @ v
    best_extent, best_t, best_vmin, best_vmax = -1.0, 0.0, 0.0, 0.0
    for chunk in np.array_split(t_candidates, max(1, t_candidates.size * p0.shape[0] // 2_000_000 + 1)):
        s = (chunk[:, None] - u0[None, :]) / du[None, :]
        hits = (s >= -1e-9) & (s <= 1 + 1e-9)
        vs = v0[None, :] + s * (v1 - v0)[None, :]
        vmax = np.where(hits, vs, -np.inf).max(axis=1)
        vmin = np.where(hits, vs, np.inf).min(axis=1)
        extent = vmax - vmin
        k = int(np.argmax(extent))
        if extent[k] > best_extent + 1e-12:
            best_extent, best_t, best_vmin, best_vmax = float(extent[k]), chunk[k], vmin[k], vmax[k]
    short_a = best_t * u + best_vmin * v
    short_b = best_t * u + best_vmax * v

    orientation = math.degrees(math.atan2(-u[1], u[0])) % 180.0  # image y points down
    if orientation >= 180.0:
        orientation = 0.0

    def to_pixels(p: np.ndarray) -> Point:  # rounded to 1e-6 px: drops floating-point dust
        return (round(float(p[0] / col_mm), 6), round(float(p[1] / row_mm), 6))

    return Axes(
        area=area,
        long_axis=long_axis,
        short_axis=best_extent,
        axis_ratio=long_axis / best_extent,
        orientation_deg=orientation,
        ap_extent=ap_extent,
        transverse_extent=transverse_extent,
        long_axis_endpoints=(to_pixels(a), to_pixels(b)),
        short_axis_endpoints=(to_pixels(short_a), to_pixels(short_b)),
    )


def _boundary_edges(lesion: np.ndarray) -> np.ndarray:
    """Edges between lesion and background pixels: ``(n, 2, 2)`` segments of ``(x, y)`` corners
    (the image border counts as background)."""
    padded = np.pad(lesion, 1).astype(np.int8)
    rows, cols = np.nonzero(np.diff(padded, axis=0) != 0)
    y = rows - 0.5
    x = cols - 1.0
    horizontal = np.stack([np.stack([x - 0.5, y], 1), np.stack([x + 0.5, y], 1)], 1)
    rows, cols = np.nonzero(np.diff(padded, axis=1) != 0)
    x = cols - 0.5
    y = rows - 1.0
    vertical = np.stack([np.stack([x, y - 0.5], 1), np.stack([x, y + 0.5], 1)], 1)
    return np.concatenate([horizontal, vertical]).astype(float)


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Vertices of the convex hull of ``(n, 2)`` points (Andrew's monotone chain), ``(h, 2)``."""
    pts = points[np.lexsort((points[:, 1], points[:, 0]))]
    if len(pts) < 3:
        return pts
    # Points on a hull edge are dropped (as Qhull does): a cross product within rounding of zero
    # counts as collinear.
    span = float(np.ptp(pts, axis=0).max()) or 1.0
    eps = 1e-9 * span * span

    def chain(sequence: np.ndarray) -> list:
        out: list = []
        for p in sequence:
            while len(out) >= 2:
                (ax, ay), (bx, by) = out[-2], out[-1]
                if (bx - ax) * (p[1] - ay) - (by - ay) * (p[0] - ax) > eps:
                    break
                out.pop()
            out.append((float(p[0]), float(p[1])))
        return out

    lower, upper = chain(pts), chain(pts[::-1])
    return np.array(lower[:-1] + upper[:-1])
