"""Helpers of the Slicer extension's tests: MRML scenes built with 3D Slicer's own Qt-free core
(the ``slicer-core`` package) and ultrasound DICOMs made on the fly.

Imported by the tests as ``slicer_extension_helpers`` (conftest.py puts this folder on sys.path).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

#: Module logics whose node classes a case needs (sequences, markups, segmentations, tables).
_LOGICS = ("vtkSlicerSequencesLogic", "vtkSlicerMarkupsLogic", "vtkSlicerSegmentationsModuleLogic")


class SlicerScene:
    """A bare MRML scene with the module logics Slicer's application would register."""

    def __init__(self) -> None:
        import slicer

        self.scene = slicer.vtkMRMLScene()
        self.application_logic = slicer.vtkMRMLApplicationLogic()
        self.application_logic.SetMRMLScene(self.scene)
        self.logics = []
        for name in _LOGICS:
            logic = getattr(slicer, name)()
            logic.SetMRMLApplicationLogic(self.application_logic)
            logic.SetMRMLScene(self.scene)
            self.logics.append(logic)


def write_us_dicom(
    path: Path,
    frames: np.ndarray,
    regions: list[dict] | None = None,
) -> Path:
    """Write an uncompressed ultrasound DICOM of ``frames`` (``(n, rows, cols)`` grey or
    ``(n, rows, cols, 3)`` RGB, uint8).

    ``regions``: SequenceOfUltrasoundRegions items as dicts with ``bbox`` (MinX0, MinY0, MaxX1,
    MaxY1, max inclusive), ``spacing_mm`` ``(row_mm, col_mm)`` or ``None``, optional ``data_type``.
    """
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    frames = np.asarray(frames, dtype=np.uint8)
    multi = frames.shape[0] > 1
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1" if multi else "1.2.840.10008.5.1.4.1.1.6.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.PatientID = "SONOVLM-TEST"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Rows, ds.Columns = int(frames.shape[1]), int(frames.shape[2])
    colour = frames.ndim == 4
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = "RGB" if colour else "MONOCHROME2"
    if colour:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if multi:
        ds.NumberOfFrames = int(frames.shape[0])
        ds.FrameTime = 40.0
    items = []
    for spec in regions or []:
        item = Dataset()
        x0, y0, x1, y1 = spec["bbox"]
        item.RegionSpatialFormat = 1
        item.RegionDataType = spec.get("data_type", 1)
        item.RegionFlags = 0
        item.RegionLocationMinX0, item.RegionLocationMinY0 = x0, y0
        item.RegionLocationMaxX1, item.RegionLocationMaxY1 = x1, y1
        spacing = spec.get("spacing_mm")
        item.PhysicalUnitsXDirection = 3 if spacing else 0
        item.PhysicalUnitsYDirection = 3 if spacing else 0
        item.PhysicalDeltaX = spacing[1] / 10.0 if spacing else 0.0
        item.PhysicalDeltaY = spacing[0] / 10.0 if spacing else 0.0
        items.append(item)
    if items:
        ds.SequenceOfUltrasoundRegions = items
    ds.PixelData = frames.tobytes()
    ds.save_as(str(path), write_like_original=False)
    return path


def asymmetric_lesion(rows: int, cols: int) -> np.ndarray:
    """A bool ``(rows, cols)`` lesion with no symmetry: a tilted ellipse plus a lobe on one side,
    off centre, so that a transpose or a flip of any axis changes it."""
    yy, xx = np.mgrid[0:rows, 0:cols]
    cy, cx = rows * 0.40, cols * 0.35
    angle = np.deg2rad(25.0)
    u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    ellipse = (u / (cols * 0.22)) ** 2 + (v / (rows * 0.12)) ** 2 <= 1.0
    lobe = (xx - (cx + cols * 0.18)) ** 2 + (yy - (cy + rows * 0.12)) ** 2 <= (min(rows, cols) * 0.07) ** 2
    return ellipse | lobe


def other_pythons() -> list[str]:
    """Python 3.9 (Slicer 5.8), 3.12 (Slicer 5.10) and 3.13 (no cgi) interpreters found here."""
    found = []
    for version in ("3.9", "3.12", "3.13"):
        candidates = [shutil.which(f"python{version}")]
        pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
        candidates += sorted(str(p) for p in pyenv.glob(f"{version}.*/bin/python{version}"))
        for candidate in filter(None, candidates):
            probe = subprocess.run(
                [candidate, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True
            )
            if probe.returncode == 0 and f"({version.replace('.', ', ')})" in probe.stdout:
                found.append(candidate)
                break
    return found
