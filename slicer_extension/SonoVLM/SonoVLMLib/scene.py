"""Ultrasound images, segments and measurement lines in a Slicer MRML scene, without Qt.

:class:`UltrasoundSceneLogic` works on any ``vtkMRMLScene`` (Slicer's ``slicer.mrmlScene`` in the
application, a bare scene in tests with the ``slicer-core`` package). It uses only MRML nodes and
the static functions of ``vtkSlicerSegmentationsModuleLogic``, never ``slicer.app`` or
``slicer.modules``. ``slicer`` and ``vtk`` are imported inside the functions, so that the module
imports anywhere.

Layout of a case in the scene:

* a 2D image is a one-slice grey scalar volume (colour turned to ITU-R BT.601 luma), spacing
  ``(col_mm, row_mm, 1)`` from the DICOM ultrasound region when there is one;
* a cine loop is a sequence of such one-slice volumes with a sequence browser; the browser's
  proxy volume is the displayed frame, and the frame segmented is the browser's current one;
* one segmentation node per case, whose segments are named and coloured per organ and tagged with
  the organ (and the frame, for a cine). For a cine the segmentation node is, from the start, the
  proxy of a segmentation sequence synchronised with the frames (Slicer's way of segmenting a
  sequence): every frame has its own contours, whichever way the frame is changed (the Sequences
  toolbar included), and paint edits are saved to the frame shown;
* two markups line nodes per case for the long and short axis of the measured segment.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .dicom_header import is_dicom, read_dicom_header
from .geometry import array_to_matrix, pixel_points_to_ras, ultrasound_ijk_to_ras, volume_ijk_to_ras
from .measurement import LesionMeasurement, measure_lesion
from .organs import FRAME_TAG, ORGAN_TAG, segment_colour, segment_name

#: Node attributes the extension sets.
IMAGE_ID_ATTRIBUTE = "SonoVLM.imageId"
CALIBRATED_ATTRIBUTE = "SonoVLM.calibrated"
AXIS_ATTRIBUTE = "SonoVLM.axis"
CASE_ATTRIBUTE = "SonoVLM.case"
OWNED_ATTRIBUTE = "SonoVLM.owned"  # made by the extension (removed with its case)
UPLOAD_ID_ATTRIBUTE = "SonoVLM.uploadId"  # the image id a user's volume was (or will be) uploaded as
#: Attribute Slicer's DICOM plugins put on what they load: the SOP Instance UID(s), space separated.
DICOM_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"
#: Singleton tag of the Segment Editor module's parameter node (qSlicerSegmentEditorModuleWidget).
SEGMENT_EDITOR_SINGLETON_TAG = "SegmentEditor"

#: Events a segmentation node invokes when its contours change. Segment Editor strokes (paint,
#: erase, scissors...) and ``SetBinaryLabelmapToSegment`` invoke ``SourceRepresentationModified``
#: only; renames, colours and tags invoke ``SegmentModified``.
EDIT_EVENT_NAMES = ("SourceRepresentationModified", "SegmentModified", "SegmentAdded", "SegmentRemoved")

#: ITU-R BT.601 luma weights (R, G, B), as sonovlm.io uses for colour B-mode.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


@dataclass
class UltrasoundCase:
    """One image (or cine) being annotated.

    Attributes:
        name: node name stem.
        volume: the displayed one-slice scalar volume (for a cine, the browser's proxy volume).
        segmentation: the case's segmentation node.
        rows, cols, frames: frame size and number of frames.
        spacing_mm: ``(row_mm, col_mm)``, or ``None`` when the image is not calibrated.
        image_id: the server's datastore id (``None`` until the image is on the server).
        browser: the sequence browser of a cine, else ``None``.
        sequence: the frames' sequence node of a cine, else ``None``.
        source_path: the file the image was read from, if any.
        source_volume: the user's volume (or sequence proxy) the case was made from, if any.
        owned: the extension made the case's volume (it is removed with the case). Not a node
            attribute: a cine's proxy takes the attributes of each frame shown.
    """

    name: str
    volume: Any
    segmentation: Any
    rows: int
    cols: int
    frames: int
    spacing_mm: tuple[float, float] | None
    image_id: str | None = None
    browser: Any = None
    sequence: Any = None
    source_path: str | None = None
    source_volume: Any = None
    owned: bool = False

    @property
    def is_cine(self) -> bool:
        return self.browser is not None

    def current_frame(self) -> int:
        """0-based frame shown now (always 0 for a single image)."""
        return int(self.browser.GetSelectedItemNumber()) if self.browser is not None else 0

    def set_image_id(self, image_id: str) -> None:
        self.image_id = image_id
        self.volume.SetAttribute(IMAGE_ID_ATTRIBUTE, image_id)


class UltrasoundSceneLogic:
    """Builds and reads ultrasound cases in an MRML scene.

    Args:
        scene: the ``vtkMRMLScene``; ``slicer.mrmlScene`` when ``None`` (in the application).
    """

    def __init__(self, scene: Any = None) -> None:
        if scene is None:
            import slicer

            scene = slicer.mrmlScene
        self.scene = scene

    # ---------------------------------------------------------------- images in

    def load_image(self, path: str, image_id: str | None = None, name: str | None = None) -> UltrasoundCase:
        """Read an image file (DICOM, or any format Slicer reads) into a new case.

        DICOM spacing comes from the ultrasound region (:mod:`.dicom_header`); other files are
        calibrated when Slicer reads a spacing other than 1 x 1 from them (NRRD, NIfTI).
        """
        header = read_dicom_header(path) if is_dicom(path) else None
        colour = header.samples_per_pixel > 1 if header is not None else _file_components(path) > 1
        volume = self._read_volume(path, colour)
        try:
            voxels = _volume_array(volume)
            if header is not None:
                spacing = header.spacing_mm
            else:
                spacing = _calibrated_spacing(volume)
        finally:
            self._remove(volume)
        name = name or os.path.basename(path).split(".")[0]
        case = self.case_from_frames(_grey_frames(voxels, colour), spacing, name, image_id)
        case.source_path = path
        return case

    def case_from_volume(
        self,
        volume: Any,
        image_id: str | None = None,
        spacing_mm: Sequence[float] | None = None,
    ) -> UltrasoundCase:
        """A case for a volume already in the scene (loaded by the user).

        The proxy volume of a sequence (how Slicer's DICOM module loads every ultrasound
        instance, single-frame or cine: ``DICOMImageSequencePlugin``, a one-slice proxy, a vector
        volume for colour) becomes a case of the whole sequence, one frame per item. A one-slice
        scalar volume is used as it is; a colour or multi-slice one (slices as frames) becomes a
        new grey case. Calibrated when its spacing is not 1 x 1, or with ``spacing_mm``
        ``(row_mm, col_mm)`` when given (e.g. from the DICOM file's ultrasound region).
        """
        browser, sequence = self.browser_of_proxy(volume)
        if sequence is not None:
            return self._case_from_sequence(volume, sequence, image_id, spacing_mm)
        voxels = _volume_array(volume)
        colour = volume.IsA("vtkMRMLVectorVolumeNode") and voxels.ndim == 4
        spacing = tuple(spacing_mm) if spacing_mm is not None else _calibrated_spacing(volume)
        if not colour and voxels.shape[0] == 1:
            segmentation = self._segmentation_for(volume, volume.GetName())
            volume.SetAttribute(CALIBRATED_ATTRIBUTE, "1" if spacing is not None else "0")
            case = UltrasoundCase(
                name=volume.GetName(),
                volume=volume,
                segmentation=segmentation,
                rows=int(voxels.shape[1]),
                cols=int(voxels.shape[2]),
                frames=1,
                spacing_mm=spacing,
            )
        else:
            case = self.case_from_frames(_grey_frames(voxels, colour), spacing, volume.GetName())
        case.source_volume = volume
        if image_id:
            case.set_image_id(image_id)
        return case

    def browser_of_proxy(self, volume: Any) -> tuple[Any, Any]:
        """``(browser, sequence)`` when ``volume`` is the proxy node of a sequence browser in the
        scene (not one of the extension's own cases), else ``(None, None)``."""
        browsers = self.scene.GetNodesByClass("vtkMRMLSequenceBrowserNode")
        for index in range(browsers.GetNumberOfItems()):
            browser = browsers.GetItemAsObject(index)
            if browser.IsProxyNodeID(volume.GetID()):
                sequence = browser.GetSequenceNode(volume)
                if sequence is not None and sequence.GetNumberOfDataNodes() > 0:
                    return browser, sequence
        return None, None

    def _case_from_sequence(
        self, proxy: Any, sequence: Any, image_id: str | None, spacing_mm: Sequence[float] | None
    ) -> UltrasoundCase:
        """A case of every item of a volume sequence (grey, one slice each), showing the item the
        user's browser shows."""
        frames = []
        for index in range(sequence.GetNumberOfDataNodes()):
            item = sequence.GetNthDataNode(index)
            voxels = _volume_array(item)
            colour = item.IsA("vtkMRMLVectorVolumeNode") and voxels.ndim == 4
            grey = _grey_frames(voxels, colour)
            if grey.shape[0] != 1:
                raise ValueError(
                    f"{sequence.GetName()}: item {index} has {grey.shape[0]} slices; a cine's frames are 2D"
                )
            if frames and grey.shape[1:] != frames[0].shape:
                raise ValueError(f"{sequence.GetName()}: item {index} has another frame size than item 0")
            frames.append(grey[0])
        first = sequence.GetNthDataNode(0)
        spacing = tuple(spacing_mm) if spacing_mm is not None else _calibrated_spacing(first)
        case = self.case_from_frames(np.stack(frames), spacing, proxy.GetName(), image_id)
        case.source_volume = proxy
        return case

    def dicom_instance_uid(self, volume: Any) -> str | None:
        """The SOP Instance UID Slicer's DICOM module recorded for ``volume`` (or for the first
        item of the sequence it is the proxy of), ``None`` for a volume not loaded from DICOM."""
        candidates = [volume]
        _, sequence = self.browser_of_proxy(volume)
        if sequence is not None:
            candidates.append(sequence.GetNthDataNode(0))
        for node in candidates:
            uids = (node.GetAttribute(DICOM_UIDS_ATTRIBUTE) or "").split()
            if uids:
                return uids[0]
        return None

    def case_from_frames(
        self,
        frames: np.ndarray,
        spacing_mm: Sequence[float] | None,
        name: str,
        image_id: str | None = None,
    ) -> UltrasoundCase:
        """A case from grey ``(frames, rows, cols)`` pixels.

        One frame gives a one-slice volume; several give a sequence and a browser, showing the
        middle frame (the server's default frame).
        """
        import slicer

        frames = np.asarray(frames)
        if frames.ndim != 3 or frames.shape[0] < 1:
            raise ValueError(f"expected (frames, rows, cols) pixels, got shape {frames.shape}")
        spacing = (float(spacing_mm[0]), float(spacing_mm[1])) if spacing_mm is not None else None
        ijk_to_ras = array_to_matrix(ultrasound_ijk_to_ras(spacing))
        count, rows, cols = (int(n) for n in frames.shape)

        browser = sequence = None
        if count == 1:
            volume = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
            volume.SetIJKToRASMatrix(ijk_to_ras)
            slicer.util.updateVolumeFromArray(volume, frames[:1])
        else:
            sequence = self.scene.AddNewNodeByClass("vtkMRMLSequenceNode", f"{name} frames")
            sequence.SetIndexName("frame")
            sequence.SetIndexUnit("")
            sequence.SetIndexType(sequence.NumericIndex)
            for index in range(count):
                frame_volume = slicer.vtkMRMLScalarVolumeNode()
                frame_volume.SetName(f"{name} frame {index}")
                frame_volume.SetIJKToRASMatrix(ijk_to_ras)
                slicer.util.updateVolumeFromArray(frame_volume, frames[index : index + 1])
                sequence.SetDataNodeAtValue(frame_volume, str(index))
            browser = self.scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", f"{name} browser")
            # Slicer 5.8-5.10 name it "Master"; later versions may call it "Primary".
            set_primary = getattr(browser, "SetAndObservePrimarySequenceNodeID", None)
            (set_primary or browser.SetAndObserveMasterSequenceNodeID)(sequence.GetID())
            browser.SetSelectedItemNumber(count // 2)
            self._sequences_logic().UpdateProxyNodesFromSequences(browser)
            volume = browser.GetProxyNode(sequence)
            volume.SetName(name)
        volume.CreateDefaultDisplayNodes()
        volume.SetAttribute(CALIBRATED_ATTRIBUTE, "1" if spacing is not None else "0")
        volume.SetAttribute(OWNED_ATTRIBUTE, "1")
        case = UltrasoundCase(
            name=name,
            volume=volume,
            segmentation=self._segmentation_for(volume, name),
            rows=rows,
            cols=cols,
            frames=count,
            spacing_mm=spacing,
            browser=browser,
            sequence=sequence,
            owned=True,
        )
        if browser is not None:
            self._attach_segmentation_sequence(case)
        if image_id:
            case.set_image_id(image_id)
        return case

    def _attach_segmentation_sequence(self, case: UltrasoundCase) -> None:
        """Make the case's segmentation the proxy of a sequence with one (empty) segmentation per
        frame, synchronised with the cine's browser and saving edits to the frame shown."""
        segments = self.scene.AddNewNodeByClass("vtkMRMLSequenceNode", f"{case.name} segments")
        segments.SetIndexName(case.sequence.GetIndexName())
        segments.SetIndexUnit(case.sequence.GetIndexUnit())
        segments.SetIndexType(case.sequence.GetIndexType())
        segments.SetAttribute(CASE_ATTRIBUTE, case.volume.GetID())
        for frame in range(case.frames):
            segments.SetDataNodeAtValue(case.segmentation, case.sequence.GetNthIndexValue(frame))
        case.browser.AddSynchronizedSequenceNode(segments)
        made = case.browser.GetProxyNode(segments)  # Slicer's sequences logic may make its own proxy
        case.browser.AddProxyNode(case.segmentation, segments, False)
        case.browser.SetSaveChanges(segments, True)
        if made is not None and made is not case.segmentation:
            self._remove(made)

    def select_frame(self, case: UltrasoundCase, frame: int) -> None:
        """Show ``frame`` of a cine (the proxy volume takes its pixels)."""
        if case.browser is None:
            if frame != 0:
                raise ValueError(f"{case.name} is a single image; frame {frame} does not exist")
            return
        if not 0 <= frame < case.frames:
            raise ValueError(f"frame {frame} is out of range: {case.name} has {case.frames} frames")
        case.browser.SetSelectedItemNumber(frame)
        self._sequences_logic().UpdateProxyNodesFromSequences(case.browser)

    def remove_case(self, case: UltrasoundCase) -> None:
        """Remove a case's nodes (image, frames, browser, segmentation, axis lines) from the scene.

        A volume the user loaded (a case made by :meth:`case_from_volume` around it) is kept.
        """
        self.remove_axes(case)
        segments = self.segmentation_sequence(case)
        if case.browser is not None:
            # The browser first: it no longer copies items into its proxies while they go.
            # (vtkMRMLSequenceBrowserNode.RemoveProxyNode takes a postfix string, not a node.)
            self.scene.RemoveNode(case.browser)
        if segments is not None:
            self.scene.RemoveNode(segments)
        self._remove(case.segmentation)
        if case.sequence is not None:
            self._remove(case.sequence)
        if case.owned:
            self._remove(case.volume)

    def save_volume(self, case: UltrasoundCase, path: str) -> str:
        """Write the case's image to ``path`` (NRRD) for upload: all frames of a cine as slices."""
        import slicer

        if case.sequence is None:
            self._write_nrrd(case.volume, path)
            return path
        frames = [slicer.util.arrayFromVolume(case.sequence.GetNthDataNode(i))[0] for i in range(case.frames)]
        stack = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"{case.name} upload")
        try:
            stack.CopyOrientation(case.volume)
            slicer.util.updateVolumeFromArray(stack, np.stack(frames))
            self._write_nrrd(stack, path)
        finally:
            self._remove(stack)
        return path

    # ---------------------------------------------------------------- segments

    def apply_mask(self, case: UltrasoundCase, mask: np.ndarray, organ: str, frame: int | None = None) -> str:
        """Put a server mask into the case's segment for ``organ``; returns the segment id.

        ``mask`` is ``(rows, cols)`` of the frame, non-zero = lesion. The segment is created
        (named and coloured for the organ) or its content replaced. The mask takes the case
        volume's geometry, whatever geometry its file declared. For a cine the mask goes to
        ``frame`` (default: the frame shown), which is shown.
        """
        import slicer
        import vtk

        mask = np.asarray(mask)
        if mask.shape != (case.rows, case.cols):
            raise ValueError(
                f"the mask's shape is {mask.shape} but the frame's (rows, cols) is ({case.rows}, {case.cols})"
            )
        if case.is_cine and frame is not None and frame != case.current_frame():
            self.select_frame(case, frame)
        segmentation = case.segmentation.GetSegmentation()
        segment_id = self.find_segment(case, organ)
        if segment_id is None:
            # One id per organ on every frame of a cine, so the segment shown keeps its id.
            wanted = f"SonoVLM_{organ}"
            if segmentation.GetSegment(wanted) is not None:
                wanted = ""  # a user's segment took it: let Slicer pick one
            segment_id = segmentation.AddEmptySegment(
                wanted, segment_name(organ), list(segment_colour(organ))
            )
        segment = segmentation.GetSegment(segment_id)
        segment.SetTag(ORGAN_TAG, organ)
        if case.is_cine:
            segment.SetTag(FRAME_TAG, str(case.current_frame() if frame is None else frame))

        labelmap = self.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{case.name} mask")
        try:
            labelmap.CopyOrientation(case.volume)
            slicer.util.updateVolumeFromArray(labelmap, (mask != 0).astype(np.uint8)[np.newaxis])
            segment_ids = vtk.vtkStringArray()
            segment_ids.InsertNextValue(segment_id)
            if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
                labelmap, case.segmentation, segment_ids
            ):
                raise RuntimeError(f"Slicer could not import the mask into segment {segment_id}")
        finally:
            self._remove(labelmap)
        self.store_frame(case)
        return segment_id

    def store_frame(self, case: UltrasoundCase) -> None:
        """Save the frame shown's contours into the cine's segmentation sequence now (the browser
        saves edits too; this does not wait for it). Nothing to do for a single image."""
        segments = self.segmentation_sequence(case)
        if segments is not None:
            segments.SetDataNodeAtValue(
                case.segmentation, case.sequence.GetNthIndexValue(case.current_frame())
            )

    def apply_frame_masks(
        self,
        case: UltrasoundCase,
        masks: np.ndarray,
        organ: str,
        frames: Sequence[int] | None = None,
    ) -> str:
        """Put one mask per cine frame into the organ's segment; returns the segment id.

        ``masks`` is ``(frames, rows, cols)``, non-zero = lesion. Only ``frames`` (default all)
        are written: the other frames keep their contours. The frame shown is kept.
        """
        if case.browser is None:
            raise ValueError(f"{case.name} is a single image: per-frame masks need a cine")
        masks = np.asarray(masks)
        if masks.shape != (case.frames, case.rows, case.cols):
            raise ValueError(
                f"the masks' shape is {masks.shape}; the cine is ({case.frames}, {case.rows}, {case.cols})"
            )
        targets = list(range(case.frames)) if frames is None else [int(f) for f in frames]
        if not targets:
            raise ValueError("no frame to write masks to")
        shown = case.current_frame()
        segment_id = None
        try:
            for frame in targets:
                segment_id = self.apply_mask(case, masks[frame], organ, frame=frame)
        finally:
            self.select_frame(case, shown)
        return segment_id

    def frame_masks(self, case: UltrasoundCase, organ: str) -> tuple[np.ndarray, list[int]]:
        """Every frame's contour of ``organ``: ``(frames, rows, cols)`` uint8 (1 inside) and the
        frames that have the organ's segment (the annotated ones). The frame shown is kept."""
        if case.browser is None:
            raise ValueError(f"{case.name} is a single image: it has no frames to collect")
        masks = np.zeros((case.frames, case.rows, case.cols), dtype=np.uint8)
        annotated = []
        shown = case.current_frame()
        try:
            for frame in range(case.frames):
                self.select_frame(case, frame)
                segment_id = self.find_segment(case, organ)
                if segment_id is not None:
                    masks[frame] = self.segment_mask(case, segment_id)
                    annotated.append(frame)
        finally:
            self.select_frame(case, shown)
        return masks, annotated

    def export_cine_label(self, case: UltrasoundCase, organ: str, path: str) -> tuple[str, list[int]]:
        """Write the organ's contours of every frame as one labelmap, frames as slices (the
        server's whole-cine label; NRRD by Slicer's writer, x fastest, 1 inside). Returns the path
        and the frames without the organ's segment (the label's ``unannotated_frames``).

        Raises:
            ValueError: no frame has a non-empty contour of the organ.
        """
        import slicer

        masks, annotated = self.frame_masks(case, organ)
        if not annotated or not masks[annotated].any():
            raise ValueError(
                f"no frame of {case.name} has a {segment_name(organ)} contour: segment before submitting"
            )
        stack = self.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{case.name} cine label")
        try:
            stack.CopyOrientation(case.volume)
            slicer.util.updateVolumeFromArray(stack, masks)
            self._write_nrrd(stack, path)
        finally:
            self._remove(stack)
        return path, [f for f in range(case.frames) if f not in annotated]

    def segmentation_sequence(self, case: UltrasoundCase) -> Any:
        """The sequence of per-frame segmentations of a cine, ``None`` for a single image."""
        if case.browser is None:
            return None
        sequence = case.browser.GetSequenceNode(case.segmentation)
        return sequence if sequence is not None and sequence is not case.sequence else None

    def remove_segment(self, case: UltrasoundCase, segment_id: str) -> None:
        """Remove a segment from the case's segmentation (the frame shown, for a propagated cine)."""
        case.segmentation.GetSegmentation().RemoveSegment(segment_id)

    def find_segment(self, case: UltrasoundCase, organ: str) -> str | None:
        """Id of the case's segment tagged with ``organ``, or ``None``."""
        import vtk

        segmentation = case.segmentation.GetSegmentation()
        for index in range(segmentation.GetNumberOfSegments()):
            segment_id = segmentation.GetNthSegmentID(index)
            value = vtk.mutable("")
            if segmentation.GetSegment(segment_id).GetTag(ORGAN_TAG, value) and str(value) == organ:
                return segment_id
        return None

    def segment_organ(self, case: UltrasoundCase, segment_id: str) -> str | None:
        """The organ a segment was made for (its tag), or ``None`` for a user-made segment."""
        return _segment_tag(case, segment_id, ORGAN_TAG)

    def segment_frame(self, case: UltrasoundCase, segment_id: str) -> int | None:
        """The frame a cine's segment belongs to (each frame has its own segments: the frame
        shown), ``None`` for a single image."""
        if not case.is_cine:
            return None
        _segment_tag(case, segment_id, FRAME_TAG)  # raises for an unknown segment
        return case.current_frame()

    def segment_mask(self, case: UltrasoundCase, segment_id: str) -> np.ndarray:
        """The segment as a ``(rows, cols)`` uint8 mask (1 inside) on the case's frame grid."""
        import slicer

        labelmap = self._export_segment(case, segment_id)
        try:
            voxels = np.array(slicer.util.arrayFromVolume(labelmap))
        finally:
            self._remove(labelmap)
        if voxels.shape != (1, case.rows, case.cols):
            raise RuntimeError(
                f"exported segment has shape {voxels.shape}, expected (1, {case.rows}, {case.cols})"
            )
        return (voxels[0] != 0).astype(np.uint8)

    def export_label(self, case: UltrasoundCase, segment_id: str, path: str) -> str:
        """Write the segment as the label the server receives: a one-slice NRRD labelmap in the
        frame's geometry (x fastest, value 1 inside), written by Slicer's NRRD writer.

        Raises:
            ValueError: the segment is empty (nothing to submit).
        """
        import slicer

        labelmap = self._export_segment(case, segment_id)
        try:
            if not np.any(slicer.util.arrayFromVolume(labelmap)):
                raise ValueError("the segment is empty: auto-segment or paint the lesion before submitting")
            self._write_nrrd(labelmap, path)
        finally:
            self._remove(labelmap)
        return path

    # ---------------------------------------------------------------- measurements

    def measure(self, case: UltrasoundCase, segment_id: str) -> LesionMeasurement | None:
        """Measurements of the segment (mm when calibrated), ``None`` when it is empty."""
        mask = self.segment_mask(case, segment_id)
        if not mask.any():
            return None
        return measure_lesion(mask, case.spacing_mm)

    def show_axes(
        self, case: UltrasoundCase, measurement: LesionMeasurement | None, organ: str | None = None
    ) -> tuple:
        """Draw (or move) the long and short axis lines; remove them for ``None``.

        Returns ``(long_axis_node, short_axis_node)`` (``(None, None)`` when removed).
        """
        import vtk

        if measurement is None:
            self.remove_axes(case)
            return None, None
        ijk_to_ras = volume_ijk_to_ras(case.volume)
        geometry = measurement.geometry
        colour = segment_colour(organ) if organ else (1.0, 1.0, 0.0)
        label = segment_name(organ) if organ else "Lesion"
        nodes = []
        for axis, endpoints in (
            ("long", geometry.long_axis_endpoints),
            ("short", geometry.short_axis_endpoints),
        ):
            node = self._axis_node(case, axis)
            if node is None:
                node = self.scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode", f"{label} {axis} axis")
                node.SetAttribute(AXIS_ATTRIBUTE, axis)
                node.SetAttribute(CASE_ATTRIBUTE, case.volume.GetID())
                node.CreateDefaultDisplayNodes()
            node.SetName(f"{label} {axis} axis")
            node.RemoveAllControlPoints()
            for point in pixel_points_to_ras(ijk_to_ras, endpoints):
                node.AddControlPoint(vtk.vtkVector3d(*point))
            node.SetLocked(True)  # computed from the segment; edit the segment instead
            display = node.GetDisplayNode()
            if display is not None:
                display.SetSelectedColor(*colour)
                display.SetColor(*colour)
            nodes.append(node)
        return nodes[0], nodes[1]

    def remove_axes(self, case: UltrasoundCase) -> None:
        for axis in ("long", "short"):
            node = self._axis_node(case, axis)
            if node is not None:
                self.scene.RemoveNode(node)

    def _axis_node(self, case: UltrasoundCase, axis: str) -> Any:
        nodes = self.scene.GetNodesByClass("vtkMRMLMarkupsLineNode")
        for index in range(nodes.GetNumberOfItems()):
            node = nodes.GetItemAsObject(index)
            if (
                node.GetAttribute(AXIS_ATTRIBUTE) == axis
                and node.GetAttribute(CASE_ATTRIBUTE) == case.volume.GetID()
            ):
                return node
        return None

    # ---------------------------------------------------------------- editor

    def segment_editor_node(self) -> Any:
        """The Segment Editor module's own parameter node (the ``vtkMRMLSegmentEditorNode`` with
        singleton tag :data:`SEGMENT_EDITOR_SINGLETON_TAG`), added to the scene when missing, so
        that the panel's embedded editor and the Segment Editor module show the same state."""
        node = self.scene.GetSingletonNode(SEGMENT_EDITOR_SINGLETON_TAG, "vtkMRMLSegmentEditorNode")
        if node is None:
            node = self.scene.CreateNodeByClass("vtkMRMLSegmentEditorNode")
            if node is None:
                raise RuntimeError(
                    "the scene cannot make a vtkMRMLSegmentEditorNode (Slicer's Segmentations "
                    "module logic registers it)"
                )
            node.UnRegister(None)
            node.SetSingletonTag(SEGMENT_EDITOR_SINGLETON_TAG)
            node = self.scene.AddNode(node)
        return node

    # ---------------------------------------------------------------- helpers

    def _segmentation_for(self, volume: Any, name: str) -> Any:
        segmentation = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{name} segmentation")
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        segmentation.CreateDefaultDisplayNodes()
        return segmentation

    def _export_segment(self, case: UltrasoundCase, segment_id: str) -> Any:
        import slicer
        import vtk

        if case.segmentation.GetSegmentation().GetSegment(segment_id) is None:
            raise ValueError(f"no segment {segment_id!r} in {case.segmentation.GetName()}")
        labelmap = self.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{case.name} label")
        segment_ids = vtk.vtkStringArray()
        segment_ids.InsertNextValue(segment_id)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            case.segmentation, segment_ids, labelmap, case.volume
        ):
            self._remove(labelmap)
            raise RuntimeError(f"Slicer could not export segment {segment_id!r}")
        return labelmap

    def _read_volume(self, path: str, colour: bool) -> Any:
        import slicer

        class_name = "vtkMRMLVectorVolumeNode" if colour else "vtkMRMLScalarVolumeNode"
        volume = self.scene.AddNewNodeByClass(class_name, "SonoVLM read")
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(path)
        storage.SetSingleFile(True)
        self.scene.AddNode(storage)
        try:
            if not storage.ReadData(volume) or volume.GetImageData() is None:
                self._remove(volume)
                raise ValueError(f"{path}: Slicer could not read this file as an image")
        finally:
            self.scene.RemoveNode(storage)
        return volume

    def _write_nrrd(self, volume: Any, path: str) -> None:
        import slicer

        storage = slicer.vtkMRMLNRRDStorageNode()
        storage.SetFileName(path)
        storage.SetUseCompression(True)
        self.scene.AddNode(storage)
        try:
            if not storage.WriteData(volume):
                raise OSError(f"Slicer could not write {path}")
        finally:
            self.scene.RemoveNode(storage)

    def _remove(self, node: Any) -> None:
        """Remove a node and the display, storage and colour nodes made for it."""
        for index in range(node.GetNumberOfDisplayNodes() if hasattr(node, "GetNumberOfDisplayNodes") else 0):
            display = node.GetNthDisplayNode(index)
            if display is not None:
                self.scene.RemoveNode(display)
        storage = node.GetStorageNode() if hasattr(node, "GetStorageNode") else None
        if storage is not None:
            self.scene.RemoveNode(storage)
        self.scene.RemoveNode(node)

    def _sequences_logic(self) -> Any:
        """Slicer's sequences logic: the application's module logic, else one for this scene."""
        import slicer

        modules = getattr(slicer, "modules", None)
        if (
            modules is not None
            and hasattr(modules, "sequences")
            and self.scene is getattr(slicer, "mrmlScene", None)
        ):
            return modules.sequences.logic()
        if not hasattr(self, "_own_sequences_logic"):
            self._own_sequences_logic = slicer.vtkSlicerSequencesLogic()
            self._own_sequences_logic.SetMRMLScene(self.scene)
        return self._own_sequences_logic


class CaseObserver:
    """Calls back when a case's contours are edited or its cine frame changes, however that
    happens (Segment Editor strokes, the Sequences toolbar, the extension itself).

    The callbacks run on the thread that changed the scene (Slicer's GUI thread). Observers sit on
    the segmentation *node* (a cine's frame change swaps the ``vtkSegmentation`` object inside
    it) and on the browser; :meth:`close` removes them.

    Args:
        case: the case to watch.
        on_edit: ``on_edit()`` after a contour changed.
        on_frame: ``on_frame(frame)`` after the frame shown changed (cine only).
    """

    def __init__(self, case: UltrasoundCase, on_edit: Any = None, on_frame: Any = None) -> None:
        import slicer
        import vtk

        self.case = case
        self._tags: list[tuple[Any, int]] = []
        self._frame = case.current_frame()
        if on_edit is not None:
            for name in EDIT_EVENT_NAMES:
                event = getattr(slicer.vtkSegmentation, name, None)
                if event is not None:
                    tag = case.segmentation.AddObserver(event, lambda caller, event_name: on_edit())
                    self._tags.append((case.segmentation, tag))
        if on_frame is not None and case.browser is not None:

            def frame_changed(caller: Any, event_name: str) -> None:
                frame = case.current_frame()
                if frame != self._frame:
                    self._frame = frame
                    on_frame(frame)

            self._tags.append(
                (case.browser, case.browser.AddObserver(vtk.vtkCommand.ModifiedEvent, frame_changed))
            )

    def close(self) -> None:
        for node, tag in self._tags:
            node.RemoveObserver(tag)
        self._tags = []


def read_mask(path: str) -> np.ndarray:
    """Read a server mask (one-slice NRRD/NIfTI, or PNG) as ``(rows, cols)`` with the stored values.

    The voxel order is kept as stored (x fastest, as the server writes for Slicer); the file's
    own geometry is not used: :meth:`UltrasoundSceneLogic.apply_mask` puts the mask on the
    image's grid.
    """
    if path.lower().endswith(".png"):
        import vtk
        from vtk.util import numpy_support

        reader = vtk.vtkPNGReader()
        reader.SetFileName(path)
        reader.Update()
        image = reader.GetOutput()
        if image is None or image.GetPointData().GetScalars() is None:
            raise ValueError(f"{path}: not a readable PNG")
        cols, rows, _ = image.GetDimensions()
        components = image.GetNumberOfScalarComponents()
        if components != 1:
            raise ValueError(f"{path}: a mask PNG must be grey, this one has {components} channels")
        pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(rows, cols)
        # VTK's PNG reader stores the image bottom-up (lower-left origin): flip back to rows top-down.
        return pixels[::-1].copy()

    voxels = _read_label_voxels(path)
    if voxels.ndim != 3 or voxels.shape[0] != 1:
        raise ValueError(f"{path}: a mask must be one slice, got voxel array shape {voxels.shape}")
    return voxels[0]


def read_frame_masks(path: str) -> np.ndarray:
    """Read a cine's labelmap (NRRD/NIfTI, frames as slices, as ``propagate`` writes it) as
    ``(frames, rows, cols)`` with the stored values; the file's geometry is not used."""
    voxels = _read_label_voxels(path)
    if voxels.ndim != 3:
        raise ValueError(f"{path}: a cine labelmap must be (frames, rows, cols), got {voxels.shape}")
    return voxels


def _read_label_voxels(path: str) -> np.ndarray:
    """A labelmap file's voxels ``(slices, rows, cols)`` as Slicer reads them, in a private scene."""
    import slicer

    scene = slicer.vtkMRMLScene()
    volume = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "mask")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(path)
    storage.SetSingleFile(True)
    scene.AddNode(storage)
    if not storage.ReadData(volume) or volume.GetImageData() is None:
        raise ValueError(f"{path}: Slicer could not read this mask")
    return np.array(slicer.util.arrayFromVolume(volume))


def _segment_tag(case: UltrasoundCase, segment_id: str, tag: str) -> str | None:
    import vtk

    segment = case.segmentation.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        raise ValueError(f"no segment {segment_id!r} in {case.segmentation.GetName()}")
    value = vtk.mutable("")
    return str(value) if segment.GetTag(tag, value) else None


def _volume_array(volume: Any) -> np.ndarray:
    """A copy of a volume's voxels: ``(slices, rows, cols)`` or ``(slices, rows, cols, channels)``."""
    import slicer

    return np.array(slicer.util.arrayFromVolume(volume))


def _grey_frames(voxels: np.ndarray, colour: bool) -> np.ndarray:
    """``(frames, rows, cols)`` grey pixels from scalar or colour voxels (luma, BT.601)."""
    if not colour:
        return voxels if voxels.ndim == 3 else voxels[..., 0]
    channels = voxels.shape[-1]
    if channels == 1:
        return voxels[..., 0]
    luma = voxels[..., :3].astype(np.float32) @ np.asarray(LUMA_WEIGHTS, dtype=np.float32)
    if np.issubdtype(voxels.dtype, np.integer):
        info = np.iinfo(voxels.dtype)
        return np.clip(np.rint(luma), info.min, info.max).astype(voxels.dtype)
    return luma


def _calibrated_spacing(volume: Any) -> tuple[float, float] | None:
    """``(row_mm, col_mm)`` of a volume read from a file with physical spacing; ``None`` for the
    1 x 1 that Slicer gives images without one (PNG, JPEG, and ultrasound DICOM)."""
    col_mm, row_mm, _ = volume.GetSpacing()
    if abs(col_mm - 1.0) < 1e-9 and abs(row_mm - 1.0) < 1e-9:
        return None
    return float(row_mm), float(col_mm)


def _file_components(path: str) -> int:
    """Colour channels of a non-DICOM image file, from its header (1 when VTK cannot tell)."""
    import vtk

    reader = vtk.vtkImageReader2Factory.CreateImageReader2(path)
    if reader is None:
        return 1
    reader.SetFileName(path)
    reader.UpdateInformation()
    components = reader.GetNumberOfScalarComponents()
    return int(components) if components else 1
