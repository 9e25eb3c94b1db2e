"""One simulated ultrasound case: B-mode frame with burned-in annotations, lesion mask, metadata."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import SonoInputError
from ..organs import PATHOLOGIES, organ_label
from .anatomy import Grid, build_scene
from .bmode import DEFAULT_SETTINGS, BModeSettings, render_bmode

#: Imaging depth choices (mm) per organ: high-frequency linear-probe presets.
DEPTHS_MM: dict[str, tuple[float, ...]] = {
    "lymph_node": (30.0, 35.0, 40.0),
    "breast_lesion": (40.0, 45.0, 50.0),
    "thyroid_nodule": (35.0, 40.0, 45.0),
}

_PRESET_NAMES = {"lymph_node": "NECK LN", "breast_lesion": "BREAST", "thyroid_nodule": "THYROID"}


@dataclass(frozen=True)
class SimulationMeta:
    """What was simulated, in frame coordinates.

    Attributes:
        organ, pathology: the lesion kind and its class.
        spacing_mm: ``(row_mm, col_mm)`` inside the imaging region.
        region_bbox: the imaging (calibrated B-mode) region, ``(x0, y0, x1, y1)`` exclusive ends.
        lesion_bbox: the lesion mask's bounding box, ``(x0, y0, x1, y1)`` exclusive ends.
        design_axes_mm: long and short axis of the lesion's base ellipse before its outline was
            modulated (the mask itself is the truth; measure it for exact values).
        design_angle_deg: the base ellipse's long axis angle, counter-clockwise on screen.
        frequency_mhz: transmit frequency.
        depth_mm: imaging depth of the region.
    """

    organ: str
    pathology: str
    spacing_mm: tuple[float, float]
    region_bbox: tuple[int, int, int, int]
    lesion_bbox: tuple[int, int, int, int]
    design_axes_mm: tuple[float, float]
    design_angle_deg: float
    frequency_mhz: float
    depth_mm: float


def imaging_region(rows: int, cols: int) -> tuple[int, int, int, int]:
    """Where the B-mode region sits in a ``rows`` × ``cols`` frame: ``(x0, y0, x1, y1)``.

    The margins around it hold burned-in text, a depth ruler and markers, as on a scanner screen.
    """
    x0 = round(cols * 0.125)
    y0 = round(rows * 0.1)
    return (x0, y0, cols - x0, rows - round(rows / 15))


def simulate_case(
    rng: np.random.Generator,
    organ: str,
    pathology: str = "benign",
    *,
    shape: tuple[int, int] = (480, 640),
    annotation: str = "",
    settings: BModeSettings = DEFAULT_SETTINGS,
) -> tuple[np.ndarray, np.ndarray, SimulationMeta]:
    """Simulate one B-mode frame of a lesion of ``organ``.

    Args:
        rng: the only source of randomness (the same generator state gives the same case).
        organ: ``lymph_node``, ``breast_lesion`` or ``thyroid_nodule``.
        pathology: ``benign`` or ``malignant``.
        shape: ``(rows, cols)`` of the frame (at least 96 × 128).
        annotation: text burned into the bottom margin (a case id, say).
        settings: scanner settings (see :mod:`~sonovlm.sample_data.bmode`).

    Returns:
        ``image`` ``(rows, cols)`` uint8 (black margins with text and ruler, B-mode inside the
        region), ``mask`` ``(rows, cols)`` uint8 holding the organ's label value on the lesion,
        and :class:`SimulationMeta`.
    """
    label = organ_label(organ)
    if pathology not in PATHOLOGIES:
        raise SonoInputError(
            "pathology", f"unknown pathology {pathology!r} (known: {', '.join(PATHOLOGIES)})"
        )
    rows, cols = shape
    if rows < 96 or cols < 128:
        raise SonoInputError(
            "shape", f"a simulated frame needs at least 96 x 128 pixels, got {rows} x {cols}"
        )

    region = imaging_region(rows, cols)
    x0, y0, x1, y1 = region
    depth_mm = float(rng.choice(DEPTHS_MM[organ]))
    spacing = depth_mm / (y1 - y0)
    grid = Grid.make(y1 - y0, x1 - x0, spacing)
    scene = build_scene(rng, organ, pathology, grid)
    bmode = render_bmode(scene.tissue, (spacing, spacing), rng, settings)

    image = _scanner_frame(rows, cols, region, depth_mm, settings.frequency_mhz, organ, annotation)
    image[y0:y1, x0:x1] = bmode
    mask = np.zeros((rows, cols), dtype=np.uint8)
    mask[y0:y1, x0:x1][scene.lesion] = label
    ys, xs = np.nonzero(mask)
    meta = SimulationMeta(
        organ=organ,
        pathology=pathology,
        spacing_mm=(spacing, spacing),
        region_bbox=region,
        lesion_bbox=(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1),
        design_axes_mm=(2 * scene.shape.semi_axes_mm[0], 2 * scene.shape.semi_axes_mm[1]),
        design_angle_deg=scene.shape.angle_deg % 180.0,
        frequency_mhz=settings.frequency_mhz,
        depth_mm=depth_mm,
    )
    return image, mask, meta


def _scanner_frame(
    rows: int,
    cols: int,
    region: tuple[int, int, int, int],
    depth_mm: float,
    frequency_mhz: float,
    organ: str,
    annotation: str,
) -> np.ndarray:
    """A black frame with scanner-style text, a depth ruler and markers, all outside ``region``."""
    x0, y0, x1, y1 = region
    canvas = Image.new("L", (cols, rows), 0)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    draw.text((x0, 4), f"SONOVLM SIMULATION  {_PRESET_NAMES[organ]}", fill=220, font=font)
    draw.text((x0, 4 + y0 // 3), "GAIN 50  DR 60", fill=180, font=font)
    right = f"{frequency_mhz:.1f} MHz  D {depth_mm / 10:.1f} cm"
    draw.text((x1 - draw.textlength(right, font=font), 4), right, fill=220, font=font)
    draw.text((x0, y1 + 4), f"{annotation}  NOT FOR CLINICAL USE".strip(), fill=200, font=font)
    draw.ellipse((x0 - 14, y0 + 2, x0 - 6, y0 + 10), fill=230)  # probe orientation marker

    # Depth ruler: a tick every 5 mm, long and numbered every centimetre.
    pixels_per_mm = (y1 - y0) / depth_mm
    draw.line((x1 + 4, y0, x1 + 4, y1 - 1), fill=160)
    for step in range(int(depth_mm // 5) + 1):
        y = y0 + round(step * 5 * pixels_per_mm)
        if y >= y1:
            break
        centimetre = step % 2 == 0
        draw.line((x1 + 4, y, x1 + (12 if centimetre else 8), y), fill=200)
        if centimetre and step:
            draw.text((x1 + 15, y - 6), str(step // 2), fill=200, font=font)
    focus = y0 + round(0.6 * (y1 - y0))
    draw.polygon([(x1 + 1, focus), (x1 + 3, focus - 3), (x1 + 3, focus + 3)], fill=230)

    frame = np.asarray(canvas, dtype=np.uint8).copy()
    frame[y0:y1, x0:x1] = 0  # nothing burned in over the imaging region
    return frame
