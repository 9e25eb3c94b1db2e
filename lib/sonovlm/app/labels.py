"""Checking a submitted label against its image before anything is stored.

A label arrives as any mask file :func:`sonovlm.io.load_mask` reads (PNG, NRRD and NIfTI as 3D
Slicer writes them, ``.npy``), one frame, or for a cine loop one slice per frame. Non-zero pixels
are the lesion. The checked label is stored in one canonical form: ``(rows, cols)`` (or
``(frames, rows, cols)``) uint8 whose lesion pixels carry the organ's label value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import SonoInputError
from ..organs import ORGAN_LABELS, PATHOLOGIES, organ_label


@dataclass(frozen=True)
class CheckedLabel:
    """A label that matches its image.

    Attributes:
        mask: ``(rows, cols)`` for one frame, ``(frames, rows, cols)`` for a whole cine; uint8,
            organ label value on the lesion, 0 elsewhere.
        organ: organ name (a key of :data:`~sonovlm.organs.ORGAN_LABELS`).
        pathology: ``benign``/``malignant`` or ``None`` when unknown.
        frame: the frame a one-frame label belongs to (0 for a single-frame image); ``None`` for a
            whole-cine label.
        annotated_frames: frames whose annotation training may use.
    """

    mask: np.ndarray
    organ: str
    pathology: str | None
    frame: int | None
    annotated_frames: list[int]

    @property
    def is_volume(self) -> bool:
        return self.mask.ndim == 3


def read_label_slices(path: str | os.PathLike, n_frames: int = 1) -> np.ndarray:
    """Read a label file as ``(slices, rows, cols)`` (values as stored).

    A label with one slice per frame of an ``n_frames`` cine (NRRD, NIfTI as 3D Slicer writes them,
    or ``.npy`` as ``(frames, rows, cols)``) is returned whole; everything else goes through
    :func:`sonovlm.io.load_mask` (one frame; Slicer one-slice labelmaps, ``.seg.nrrd`` layers).
    """
    from ..io import load_mask
    from ..io.formats import NIFTI, NRRD, NUMPY, sniff
    from ..io.volume import read_nifti, read_nrrd

    if n_frames > 1:
        kind = sniff(path)
        volume: np.ndarray | None = None
        if kind in (NRRD, NIFTI):
            volume = (read_nrrd(path) if kind == NRRD else read_nifti(path)).array
            if volume.ndim == 4:  # colour components: lesion where any is non-zero
                volume = volume.max(axis=-1)
        elif kind == NUMPY:
            try:
                volume = np.load(os.fspath(path), allow_pickle=False)
            except (ValueError, OSError, EOFError) as exc:
                raise SonoInputError(path, f"cannot read the NumPy file: {exc}") from exc
        if volume is not None and volume.ndim == 3 and volume.shape[0] == n_frames:
            return np.asarray(volume)
        if volume is not None and volume.ndim == 3 and volume.shape[0] > 1:
            raise SonoInputError(
                "label", f"has {volume.shape[0]} slices but the image has {n_frames} frame(s)"
            )
    return np.asarray(load_mask(path))[None]


def _frame_param(value: Any, n_frames: int, source: str) -> int:
    try:
        frame = int(value)
    except (TypeError, ValueError):
        raise SonoInputError(source, f"expected a frame number, got {value!r}") from None
    if not 0 <= frame < n_frames:
        raise SonoInputError(source, f"frame {frame} is out of range: the image has {n_frames} frame(s)")
    return frame


def resolve_organ(value: Any, recorded: str | None, source: str = "organ") -> str:
    """The organ a request means: ``value`` unless empty/``auto``, else the ``recorded`` one."""
    text = str(value).strip() if value is not None else ""
    if text in ("", "auto"):
        if recorded is None:
            known = ", ".join(ORGAN_LABELS)
            raise SonoInputError(source, f"no organ recorded for this image; give one of {known}")
        return recorded
    organ_label(text)  # raises SonoInputError for an unknown organ
    return text


def resolve_pathology(value: Any) -> str | None:
    """``benign``/``malignant`` (case-insensitive), ``None`` when omitted; SonoInputError otherwise."""
    if value is None or str(value).strip() == "":
        return None
    text = str(value).strip().lower()
    if text not in PATHOLOGIES:
        raise SonoInputError("pathology", f"unknown pathology {value!r} (known: {', '.join(PATHOLOGIES)})")
    return text


def check_label(
    path: str | os.PathLike,
    image_shape: tuple[int, int, int],
    params: dict[str, Any],
    recorded_organ: str | None,
) -> CheckedLabel:
    """Check a label file against its image; raises :class:`SonoInputError` naming the problem.

    Args:
        path: the submitted label file.
        image_shape: ``(frames, rows, cols)`` of the image.
        params: the request's params: ``organ`` (default: the recorded organ), ``pathology``,
            ``frame`` (a one-frame label of a cine), ``unannotated_frames`` (whole-cine label: frames
            left without annotation).
        recorded_organ: the image's organ known from earlier labels, its info or ``cases.csv``.
    """
    n_frames, rows, cols = image_shape
    organ = resolve_organ(params.get("organ"), recorded_organ)
    pathology = resolve_pathology(params.get("pathology"))

    slices = read_label_slices(path, n_frames)
    if slices.shape[1:] != (rows, cols):
        raise SonoInputError(
            "label",
            f"frame size {slices.shape[2]}x{slices.shape[1]} (columns x rows) does not match the image's "
            f"{cols}x{rows}",
        )
    if not np.all(np.isfinite(slices)):
        raise SonoInputError("label", "contains NaN or infinite values")
    lesion = slices != 0
    value = np.uint8(organ_label(organ))

    if slices.shape[0] == 1:
        frame_value = params.get("frame")
        if n_frames > 1:
            if frame_value is None or str(frame_value).strip() == "":
                raise SonoInputError(
                    "frame",
                    f"the image is a cine of {n_frames} frames: give 'frame' for a one-frame label, "
                    "or submit one slice per frame",
                )
            frame = _frame_param(frame_value, n_frames, "frame")
        else:
            frame = 0 if frame_value in (None, "") else _frame_param(frame_value, 1, "frame")
        if not lesion.any():
            raise SonoInputError("label", "has no lesion pixels (non-zero values); nothing to learn from")
        mask = (lesion[0] * value).astype(np.uint8)
        return CheckedLabel(
            mask=mask, organ=organ, pathology=pathology, frame=frame, annotated_frames=[frame]
        )

    if slices.shape[0] != n_frames:
        raise SonoInputError("label", f"has {slices.shape[0]} slices but the image has {n_frames} frame(s)")
    if params.get("frame") not in (None, ""):
        raise SonoInputError("frame", "a label with one slice per frame must not name a single 'frame'")
    unannotated_raw = params.get("unannotated_frames") or []
    if not isinstance(unannotated_raw, list | tuple):
        raise SonoInputError(
            "unannotated_frames", f"expected a list of frame numbers, got {unannotated_raw!r}"
        )
    unannotated = {_frame_param(f, n_frames, "unannotated_frames") for f in unannotated_raw}
    annotated = [f for f in range(n_frames) if f not in unannotated]
    if not annotated:
        raise SonoInputError("unannotated_frames", "lists every frame: nothing is annotated")
    if not lesion[annotated].any():
        raise SonoInputError("label", "has no lesion pixels (non-zero values) in its annotated frames")
    mask = (lesion * value).astype(np.uint8)
    return CheckedLabel(mask=mask, organ=organ, pathology=pathology, frame=None, annotated_frames=annotated)


def write_label(path: str | os.PathLike, label: CheckedLabel, spacing_mm: tuple[float, float] | None) -> None:
    """Write a checked label: PNG for one frame, NRRD (x-fastest, one slice per frame) for a cine."""
    if not label.is_volume:
        from ..io import save_mask

        save_mask(path, label.mask, spacing_mm=spacing_mm)
        return
    import nrrd

    row_mm, col_mm = spacing_mm if spacing_mm else (1.0, 1.0)
    header = {
        "type": "unsigned char",
        "space": "left-posterior-superior",
        "space directions": np.diag([col_mm, row_mm, 1.0]),
        "space origin": np.zeros(3),
        "kinds": ["domain", "domain", "domain"],
        "encoding": "gzip",
    }
    nrrd.write(str(path), np.ascontiguousarray(label.mask.transpose(2, 1, 0)), header, index_order="F")


def label_extension(label: CheckedLabel) -> str:
    """File extension of the canonical stored form of ``label``."""
    return ".nrrd" if label.is_volume else ".png"


def read_stored_label(path: str | os.PathLike, n_frames: int = 1) -> np.ndarray:
    """Read a stored label: ``(rows, cols)`` for one frame, ``(frames, rows, cols)`` for a cine."""
    slices = read_label_slices(path, n_frames)
    return slices[0] if slices.shape[0] == 1 else slices


def label_frame_items(record: dict[str, Any], **fields: Any) -> list[dict[str, Any]]:
    """Training items of one stored final label: one per annotated frame.

    ``record`` is what the datastore keeps about the label: ``frame`` (a one-frame label of a cine)
    or ``annotated_frames`` (a whole-cine label); with neither, frame 0. Each item is ``fields``
    plus ``frame`` (the image's frame) and ``label_frame`` (the slice of the label file: 0 for a
    one-frame label, else ``frame``).
    """
    frames = record.get("annotated_frames")
    one_frame = "frame" in record or frames is None
    frames = [int(record.get("frame", 0))] if one_frame else [int(f) for f in frames]
    return [{**fields, "frame": frame, "label_frame": 0 if one_frame else frame} for frame in frames]
