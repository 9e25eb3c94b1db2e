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


def load_as_dicom_image_sequence(scene, path: Path, colour: bool, spacing_mm: tuple | None, uid: str):
    """Load an ultrasound DICOM into ``scene`` the way 3D Slicer's DICOM module does.

    Follows Slicer's Modules/Scripted/DICOMPlugins/DICOMImageSequencePlugin.py (loadImageData,
    addSequenceFromImageData, addSequenceBrowserNode; it takes every US instance, one frame or
    many, with confidence 0.7 over the scalar-volume plugin's 0.5): the file is read with ITK's
    archetype reader (scalar reader for MONOCHROME, vector reader for colour), each frame becomes
    an item of a sequence (a one-slice vtkMRMLScalarVolumeNode, or vtkMRMLVectorVolumeNode for
    colour) with IJK-to-RAS diag(-1, -1, 1), spacing ``(PhysicalDeltaX, PhysicalDeltaY) * 10`` mm
    when the file has exactly one usable region (``spacing_mm`` = ``(row_mm, col_mm)`` here, else
    the reader's 1 mm), origin 0 and the ``DICOM.instanceUIDs`` attribute; a browser shows the
    sequence through a proxy volume. Returns ``(browser, sequence, proxy)``.
    """
    import slicer
    import vtk

    reader = (
        slicer.vtkITKArchetypeImageSeriesVectorReaderFile()
        if colour
        else slicer.vtkITKArchetypeImageSeriesScalarReader()
    )
    reader.SetArchetype(str(path))
    reader.AddFileName(str(path))
    reader.SetSingleFile(True)
    reader.SetOutputScalarTypeToNative()
    reader.SetDesiredCoordinateOrientationToNative()
    reader.SetUseNativeOriginOn()
    reader.SetDICOMImageIOApproachToGDCM()
    reader.Update()
    image = reader.GetOutput()
    col_mm, row_mm = (spacing_mm[1], spacing_mm[0]) if spacing_mm else image.GetSpacing()[:2]

    frame_node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode" if colour else "vtkMRMLScalarVolumeNode")
    flip = vtk.vtkMatrix4x4()
    flip.SetElement(0, 0, -1.0)
    flip.SetElement(1, 1, -1.0)
    frame_node.SetIJKToRASMatrix(flip)
    frame_node.SetSpacing(col_mm, row_mm, 1.0)
    frame_node.SetAttribute("DICOM.instanceUIDs", uid)
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "1: US")
    sequence.SetIndexName("time")
    sequence.SetIndexUnit("s")
    x0, x1, y0, y1, z0, z1 = image.GetExtent()
    for frame in range(z1 - z0 + 1):
        clip = vtk.vtkImageClip()
        clip.SetInputData(image)
        clip.SetOutputWholeExtent(x0, x1, y0, y1, z0 + frame, z0 + frame)
        clip.ClipDataOn()
        clip.Update()
        one = vtk.vtkImageData()
        one.DeepCopy(clip.GetOutput())
        one.SetExtent(x0, x1, y0, y1, 0, 0)
        one.SetOrigin(0.0, 0.0, 0.0)
        one.SetSpacing(1.0, 1.0, 1.0)
        frame_node.SetAndObserveImageData(one)
        sequence.SetDataNodeAtValue(frame_node, f"{frame * 0.04:.3f}")
    scene.RemoveNode(frame_node)
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "1: US browser")
    browser.AddSynchronizedSequenceNode(sequence)
    return browser, sequence, browser.GetProxyNode(sequence)


def serve_http(handler):
    """Start a threading HTTP server on 127.0.0.1 with ``handler``; returns ``(url, stop)``."""
    import threading
    from http.server import ThreadingHTTPServer

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

    def stop() -> None:
        httpd.shutdown()
        httpd.server_close()

    return f"http://127.0.0.1:{httpd.server_address[1]}", stop
