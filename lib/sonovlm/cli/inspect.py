"""``sonovlm inspect PATH [--json]``: what SonoVLM reads from an image file.

With ``--json`` one JSON object (a contract other tools rely on) with exactly the keys
``frames``, ``height``, ``width``, ``channels``, ``modality`` (or null), ``photometric`` (or
null), ``regions`` (a list of ``{"bbox": [x0, y0, x1, y1], "spacing_mm": [row_mm, col_mm] or
null, "clipped": bool}``) and ``spacing_mm`` (the main region's, or null). Without it, a short
summary for people.
"""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="show frames, size, colour, ultrasound regions and spacing of an image",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("path", metavar="PATH", help="PNG, JPEG, BMP, TIFF, DICOM, NIfTI or NRRD file")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def describe(image) -> dict:
    """The ``--json`` object of an :class:`~sonovlm.io.UltrasoundImage`."""
    spacing = image.spacing_mm
    return {
        "frames": image.n_frames,
        "height": image.height,
        "width": image.width,
        "channels": image.channels,
        "modality": image.modality,
        "photometric": image.photometric,
        "regions": [
            {
                "bbox": list(region.bbox),
                "spacing_mm": list(region.spacing_mm) if region.spacing_mm is not None else None,
                "clipped": region.clipped,
            }
            for region in image.regions
        ],
        "spacing_mm": list(spacing) if spacing is not None else None,
    }


def summary(image, info: dict) -> str:
    """A few lines for people."""
    colour = "grey" if info["channels"] == 1 else f"{info['channels']} channels (RGB)"
    lines = [
        f"{image.source}",
        f"  {info['frames']} frame(s) of {info['width']} x {info['height']} pixels (width x height), "
        f"{colour}",
    ]
    if info["modality"] or info["photometric"]:
        lines.append(f"  modality {info['modality'] or '-'}, photometric {info['photometric'] or '-'}")
    if image.frame_time_ms is not None:
        lines.append(f"  frame time {image.frame_time_ms:g} ms")
    if not info["regions"]:
        lines.append("  no ultrasound regions")
    for number, region in enumerate(info["regions"], start=1):
        spacing = region["spacing_mm"]
        calibration = (
            f"{spacing[0]:.4g} x {spacing[1]:.4g} mm per pixel (row x col)" if spacing else "uncalibrated"
        )
        clipped = ", clipped to the image" if region["clipped"] else ""
        lines.append(f"  region {number}: box {region['bbox']} {calibration}{clipped}")
    lines.append(
        f"  spacing: {info['spacing_mm'][0]:.4g} x {info['spacing_mm'][1]:.4g} mm (row x col)"
        if info["spacing_mm"]
        else "  spacing: none (measurements in pixels)"
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..io import load_image

    image = load_image(args.path)
    info = describe(image)
    print(json.dumps(info) if args.json else summary(image, info))
    return 0
