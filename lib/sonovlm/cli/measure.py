"""``sonovlm measure IMAGE MASK [--spacing-mm ROW COL] [--json]``: lesion size in millimetres.

MASK (PNG, NRRD including Slicer's one-slice labelmaps, NIfTI or ``.npy``; non-zero = lesion)
must have the image's size. The spacing is ``--spacing-mm`` when given, else that of the image's
ultrasound region holding the lesion (see :func:`sonovlm.measure.lesion_region`); without one the
sizes are in pixels only.

With ``--json`` one JSON object (a contract other tools rely on): the keys of
:meth:`sonovlm.measure.LesionMeasurement.to_dict` (``area_mm2``, ``long_axis_mm``,
``short_axis_mm``, ``axis_ratio``, ``orientation_deg``, ``taller_than_wide``, ``calibrated``,
their ``*_px`` twins, the axes' endpoints, ...) plus ``spacing_source``: ``"argument"``,
``"ultrasound_region"`` or null. Notes (several lesion parts, a lesion outside every calibrated
region) go to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "measure",
        help="measure a lesion mask: area, long and short axis, orientation, taller-than-wide",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("image", metavar="IMAGE", help="the ultrasound image the mask belongs to")
    parser.add_argument(
        "mask", metavar="MASK", help="lesion mask: PNG, NRRD, NIfTI or .npy (non-zero = lesion)"
    )
    parser.add_argument(
        "--spacing-mm",
        nargs=2,
        type=float,
        metavar=("ROW", "COL"),
        help="pixel size in mm (row, then column); overrides the image's calibration",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import SonoInputError
    from ..io import load_image, load_mask
    from ..measure import lesion_region, measure_lesion

    image = load_image(args.image)
    mask = load_mask(args.mask, shape=(image.height, image.width))
    if not mask.any():
        raise SonoInputError(args.mask, "the mask is empty (no non-zero lesion pixel)")

    notes = []
    if args.spacing_mm is not None:
        spacing, spacing_source = tuple(args.spacing_mm), "argument"
        if not all(v > 0 and v < float("inf") for v in spacing):
            raise SonoInputError("--spacing-mm", f"expected two positive numbers, got {args.spacing_mm}")
    else:
        region = lesion_region(image.regions, mask)
        spacing = region.spacing_mm if region is not None else None
        spacing_source = "ultrasound_region" if spacing is not None else None
        if spacing is None and any(r.spacing_mm is not None for r in image.regions):
            notes.append("the lesion is not inside a calibrated ultrasound region: sizes are in pixels")

    result = measure_lesion(mask, spacing, source=str(args.mask))
    if result.components > 1:
        notes.append(f"the mask has {result.components} separate parts; measured the largest")
    for note in notes:
        print(f"note: {note}", file=sys.stderr)

    info = result.to_dict()
    info["spacing_source"] = spacing_source
    if args.json:
        print(json.dumps(info))
    else:
        print(summary(info))
    return 0


def summary(info: dict) -> str:
    """A few lines for people."""
    lines = [f"lesion: {info['area_px']} pixels"]
    if info["calibrated"]:
        row_mm, col_mm = info["spacing_mm"]
        origin = "given" if info["spacing_source"] == "argument" else "from the ultrasound region"
        lines += [
            f"  area:        {info['area_mm2']:.1f} mm²",
            f"  long axis:   {info['long_axis_mm']:.1f} mm",
            f"  short axis:  {info['short_axis_mm']:.1f} mm",
            f"  long/short:  {info['axis_ratio']:.2f}",
            f"  orientation: {info['orientation_deg']:.1f}° from horizontal, counter-clockwise",
            f"  taller than wide: {'yes' if info['taller_than_wide'] else 'no'} "
            f"({info['ap_extent_mm']:.1f} mm deep, {info['transverse_extent_mm']:.1f} mm wide)",
            f"  spacing: {row_mm:.4g} x {col_mm:.4g} mm per pixel (row x col), {origin}",
        ]
    else:
        lines += [
            "  not calibrated: sizes in pixels (give --spacing-mm ROW COL for millimetres)",
            f"  long axis:   {info['long_axis_px']:.1f} px",
            f"  short axis:  {info['short_axis_px']:.1f} px",
            f"  long/short:  {info['axis_ratio_px']:.2f} (square pixels assumed)",
            f"  orientation: {info['orientation_deg_px']:.1f}° from horizontal, counter-clockwise",
            f"  taller than wide: {'yes' if info['taller_than_wide_px'] else 'no'} (in pixels)",
        ]
    return "\n".join(lines)
