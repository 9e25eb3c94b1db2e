"""The sonographer's workflow, without Qt: next case, auto-segment, correct with clicks and a box
(undo), propagate through a cine, classify, measure, submit, train. The Slicer module's logic
(``SonoVLMLogic``) holds one :class:`AnnotationSession`; the widget wires buttons to it and shows
what it returns.

Every action that talks to the server exists twice: ``auto_segment(...)`` runs it here and now,
``auto_segment_steps(...)`` is the same action as a generator of server requests
(:mod:`.tasks`), which the panel runs with the requests off Slicer's GUI thread.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .client import PROPAGATION_POLL_S, PROPAGATION_RUNNING, SonoVLMClient, SonoVLMClientError
from .interaction import (
    ContourHistory,
    ContourSnapshot,
    FrameConfidence,
    Prompts,
    box_roi,
    ras_to_ijk_matrix,
    ras_to_voxels,
    review_order,
)
from .measurement import LesionMeasurement
from .organs import ORGAN_LABELS
from .replies import (
    ClassificationSummary,
    ServerSummary,
    TrainingProgress,
    classification_summary,
    server_summary,
    training_progress,
)
from .scene import (
    UPLOAD_ID_ATTRIBUTE,
    UltrasoundCase,
    UltrasoundSceneLogic,
    read_frame_masks,
    read_mask,
)
from .tasks import Steps, run_steps

#: Contours kept for undo (per session, all cases together).
UNDO_DEPTH = 20

#: ``progress(done, total, message)`` of a propagation.
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class SegmentationOutcome:
    """What one auto-segmentation produced.

    Attributes:
        segment_id: the organ's segment in the case's segmentation.
        organ: the organ the server segmented (resolves ``auto``).
        result: the server's JSON (confidence, ``model_version``...).
        measurement: the extension's measurements of the segment, ``None`` if it is empty.
    """

    segment_id: str
    organ: str
    result: dict
    measurement: LesionMeasurement | None


@dataclass(frozen=True)
class UndoOutcome:
    """What an undo restored.

    Attributes:
        segment_id: the restored segment, ``None`` when the undo removed it (it did not exist).
        organ: the organ of the segment.
        frame: the frame it is on (``None`` for a single image).
        measurement: measurements of the restored contour, ``None`` when empty or removed.
    """

    segment_id: str | None
    organ: str
    frame: int | None
    measurement: LesionMeasurement | None


@dataclass(frozen=True)
class PropagationOutcome:
    """What a propagation through a cine produced.

    Attributes:
        segment_id: the organ's segment, one contour per frame (a segmentation sequence).
        organ: the organ the server segmented.
        review: the segmented frames with their confidence, weakest first.
        result: the server's JSON (``confidence``, ``review_first``, ``first_frame``...).
    """

    segment_id: str
    organ: str
    review: list[FrameConfidence]
    result: dict


class AnnotationSession:
    """One sonographer's session with a server and a scene.

    Args:
        client: the server's client.
        scene_logic: where cases, segments and lines live.
        work_dir: folder for downloaded images, masks and labels (a temporary one by default).
    """

    def __init__(
        self,
        client: SonoVLMClient,
        scene_logic: UltrasoundSceneLogic,
        work_dir: str | None = None,
    ) -> None:
        self.client = client
        self.scene_logic = scene_logic
        self.work_dir = work_dir or tempfile.mkdtemp(prefix="sonovlm-session-")
        self.submissions = 0
        self._info: dict[str, Any] | None = None
        self.history = ContourHistory(UNDO_DEPTH)
        self._prompts: dict[str, Prompts] = {}  # clicks and box per case, on its current frame
        self._organs: dict[str, str] = {}  # the organ last segmented per case (resolves "auto")

    # ---------------------------------------------------------------- server

    def connect(self) -> ServerSummary:
        """Fetch ``/info/`` (models, strategies, versions); raises SonoVLMClientError."""
        self._info = self.client.info()
        return server_summary(self._info)

    @property
    def info(self) -> dict[str, Any]:
        if self._info is None:
            self._info = self.client.info()
        return self._info

    # ---------------------------------------------------------------- cases

    def next_case(self, strategy: str) -> UltrasoundCase | None:
        """Ask ``strategy`` for the next image, download it and load it; ``None`` when the server
        has no unlabelled image left (an empty reply, or 404 for a strategy the server has)."""
        return run_steps(self.next_case_steps(strategy))

    def next_case_steps(self, strategy: str) -> Steps:
        strategies = self.info.get("strategies") or {}

        def ask() -> dict[str, Any] | None:
            try:
                return self.client.next_sample(strategy)
            except SonoVLMClientError as error:
                if error.status == 404 and strategy in strategies:
                    return None
                raise

        sample = yield ask
        image_id = sample.get("id") if sample else None
        if not image_id:
            return None
        folder = os.path.join(self.work_dir, "images")
        path = yield lambda: self.client.download_image(image_id, folder)
        return self.scene_logic.load_image(path, image_id=image_id, name=image_id)

    def upload_id(self, volume: Any) -> str:
        """The image id a volume the user loaded is uploaded as.

        A volume from Slicer's DICOM module: ``us-`` and a digest of its SOP Instance UID, so the
        same instance gets the same id from any annotator (and the UID itself never reaches the
        server). Any other volume: a new random id, kept on the volume so that it is reused.
        Node names ("1: US") repeat across patients and are never used.
        """
        uid = self.scene_logic.dicom_instance_uid(volume)
        if uid:
            return "us-" + hashlib.sha256(uid.encode("ascii", "replace")).hexdigest()[:32]
        known = volume.GetAttribute(UPLOAD_ID_ATTRIBUTE)
        if known:
            return known
        image_id = f"slicer-{uuid.uuid4().hex}"
        volume.SetAttribute(UPLOAD_ID_ATTRIBUTE, image_id)
        return image_id

    def open_volume(self, volume: Any, replace: bool = False) -> UltrasoundCase:
        """Use a volume already loaded in Slicer: build its case and upload it to the server
        under :meth:`upload_id`. An id the server has already is :class:`~.client.ImageExistsError`
        (the case is removed again) unless ``replace``; :meth:`use_server_copy` takes the
        server's image instead."""
        return run_steps(self.open_volume_steps(volume, replace))

    def open_volume_steps(self, volume: Any, replace: bool = False) -> Steps:
        image_id = self.upload_id(volume)
        case = self.scene_logic.case_from_volume(volume)
        upload_dir = os.path.join(self.work_dir, "uploads")
        os.makedirs(upload_dir, exist_ok=True)
        path = self.scene_logic.save_volume(case, os.path.join(upload_dir, f"{image_id}.nrrd"))
        try:
            given = yield lambda: self.client.upload_image(path, image_id, replace=replace)
        except BaseException:
            self.scene_logic.remove_case(case)
            raise
        finally:
            os.remove(path)
        case.set_image_id(given)
        return case

    def use_server_copy(self, volume: Any) -> UltrasoundCase:
        """The case of a volume whose image the server already has (after a 409): nothing is
        uploaded; the server's labels and results for that id apply."""
        case = self.scene_logic.case_from_volume(volume)
        case.set_image_id(self.upload_id(volume))
        return case

    def forget_case(self, case: UltrasoundCase) -> None:
        """Drop the session's clicks, undo history and organ of ``case``."""
        key = _case_key(case)
        self.history.forget(key)
        self._prompts.pop(key, None)
        self._organs.pop(key, None)

    def case_organ(self, case: UltrasoundCase) -> str | None:
        """The organ last segmented in ``case`` (``None`` before any)."""
        return self._organs.get(_case_key(case))

    def reset(self) -> None:
        """Forget every case (the scene was closed: node ids start again)."""
        self.history = ContourHistory(UNDO_DEPTH)
        self._prompts.clear()
        self._organs.clear()

    # ---------------------------------------------------------------- inference

    def auto_segment(
        self, case: UltrasoundCase, organ: str, prompt: str | None = None
    ) -> SegmentationOutcome:
        """Segment the case's current frame; the mask becomes the organ's segment, measured and
        drawn as two lines."""
        return run_steps(self.auto_segment_steps(case, organ, prompt))

    def auto_segment_steps(self, case: UltrasoundCase, organ: str, prompt: str | None = None) -> Steps:
        image_id = self._image_id(case)
        frame = case.current_frame() if case.is_cine else None
        mask_path, result = yield lambda: self.client.segment(
            image_id=image_id, organ=organ, prompt=prompt, frame=frame
        )
        self._check_frame(case, frame)
        mask, segmented_organ = self._reply_mask(image_id, mask_path, result, organ)
        before = self._prompts.get(_case_key(case))
        self._prompts.pop(_case_key(case), None)  # a new automatic contour starts the clicks afresh
        return self._replace_contour(case, mask, segmented_organ, result, before)

    # ---------------------------------------------------------------- interaction

    def add_click(self, case: UltrasoundCase, *args: Any, **kwargs: Any) -> SegmentationOutcome:
        """A positive (add) or negative (remove) click at RAS ``ras`` on the frame shown: the
        server refines the contour with every click and the box of this frame plus the current
        contour, and the segment is updated in place (undo restores it)."""
        return run_steps(self.add_click_steps(case, *args, **kwargs))

    def add_click_steps(
        self,
        case: UltrasoundCase,
        positive: bool,
        ras: Sequence[float],
        organ: str = "auto",
        prompt: str | None = None,
    ) -> Steps:
        prompts = self.prompts(case).copy()
        frame = prompts.frame
        point = ras_to_voxels(ras_to_ijk_matrix(case.volume), [ras], frame)[0]
        (prompts.foreground if positive else prompts.background).append(point)
        return (yield from self._interact(case, prompts, organ, prompt))

    def set_box(self, case: UltrasoundCase, *args: Any, **kwargs: Any) -> SegmentationOutcome:
        """A box with opposite RAS corners ``ras_a``, ``ras_b`` (any order) around the lesion on the
        frame shown; replaces an earlier box, keeps the clicks."""
        return run_steps(self.set_box_steps(case, *args, **kwargs))

    def set_box_steps(
        self,
        case: UltrasoundCase,
        ras_a: Sequence[float],
        ras_b: Sequence[float],
        organ: str = "auto",
        prompt: str | None = None,
    ) -> Steps:
        prompts = self.prompts(case).copy()
        prompts.roi = box_roi(ras_to_ijk_matrix(case.volume), ras_a, ras_b, prompts.frame)
        return (yield from self._interact(case, prompts, organ, prompt))

    def prompts(self, case: UltrasoundCase) -> Prompts:
        """The clicks and box of the frame shown (empty after another frame or a new contour)."""
        frame = case.current_frame()
        current = self._prompts.get(_case_key(case))
        return current if current is not None and current.frame == frame else Prompts(frame)

    def undo(self, case: UltrasoundCase) -> UndoOutcome | None:
        """Restore the contour (and clicks) before the latest change; ``None``: nothing to undo."""
        snapshot = self.history.pop(_case_key(case))
        if snapshot is None:
            return None
        per_frame = self.scene_logic.segmentation_sequence(case) is not None
        if per_frame and snapshot.frame is not None and snapshot.frame != case.current_frame():
            self.scene_logic.select_frame(case, snapshot.frame)  # that frame's contour changed
        self._prompts[_case_key(case)] = snapshot.prompts
        if snapshot.mask is None:
            segment_id = self.scene_logic.find_segment(case, snapshot.organ)
            if segment_id is not None:
                self.scene_logic.remove_segment(case, segment_id)
            self.scene_logic.remove_axes(case)
            return UndoOutcome(None, snapshot.organ, snapshot.frame, None)
        segment_id = self.scene_logic.apply_mask(case, snapshot.mask, snapshot.organ, frame=snapshot.frame)
        measurement = self.update_measurements(case, segment_id)
        return UndoOutcome(segment_id, snapshot.organ, snapshot.frame, measurement)

    def undo_prompts(self, case: UltrasoundCase) -> bool:
        """Restore only the clicks and box before the latest AI change (the contour itself is
        restored by Slicer's Segment Editor undo, which also holds the paint edits in between);
        ``False`` when there is nothing to restore."""
        snapshot = self.history.pop(_case_key(case))
        if snapshot is None:
            return False
        self._prompts[_case_key(case)] = snapshot.prompts
        return True

    def propagate(self, case: UltrasoundCase, *args: Any, **kwargs: Any) -> PropagationOutcome:
        """Follow the lesion through the cine from the frame shown (to ``first_frame`` ..
        ``last_frame``, default all). The seed is the organ's contour on this frame when there is
        one, plus this frame's clicks and box; without either, the server's automatic result.
        Every frame of the range gets its own contour in the organ's segment (frames outside the
        range keep theirs); ``progress(done, total, message)`` is called as the work goes on (on
        the thread that runs the scene work)."""
        return run_steps(self.propagate_steps(case, *args, **kwargs))

    def propagate_steps(
        self,
        case: UltrasoundCase,
        organ: str = "auto",
        prompt: str | None = None,
        first_frame: int | None = None,
        last_frame: int | None = None,
        progress: Progress | None = None,
    ) -> Steps:
        if not case.is_cine:
            raise ValueError(f"{case.name} is a single image: propagation needs a cine")
        report = progress or (lambda done, total, message: None)
        total = case.frames + 1
        image_id = self._image_id(case)
        prompts = self.prompts(case)
        seed_path = self._current_contour_file(case, organ)
        report(0, total, f"Propagating from frame {prompts.frame} on the server")
        try:
            labelmap_path, result = yield lambda: self.client.propagate_start(
                image_id=image_id,
                seed_mask=seed_path,
                first_frame=first_frame,
                last_frame=last_frame,
                organ=organ,
                prompt=prompt,
                **prompts.as_params(),
            )
        finally:
            if seed_path is not None:
                os.remove(seed_path)
        job = result.get("job") if labelmap_path is None else None
        try:
            # The server's own per-frame progress, polled off the GUI thread.
            while labelmap_path is None and result.get("state") in PROPAGATION_RUNNING:
                if result.get("frames_total"):
                    total = int(result["frames_total"]) + 1
                    done = int(result.get("frames_done") or 0)
                    report(done, total, f"Propagating: {done} of {total - 1} frames segmented")
                labelmap_path, result = yield lambda: self._poll_propagation(image_id, job)
            job = None
        finally:
            if job is not None:  # cancelled or failed here: stop the server's work too
                self._cancel_propagation(image_id, job)
        if result.get("state") == "cancelled":
            raise ValueError(f"the propagation of {image_id} was cancelled on the server")
        if labelmap_path is None:
            raise ValueError(f"the server sent no labelmap for {image_id} (reply: {result!r})")
        try:
            masks = read_frame_masks(labelmap_path)
        finally:
            os.remove(labelmap_path)
        segmented_organ = self._known_organ(result, organ)
        review = review_order(result)
        report(total - 1, total, "Reading the frames' contours")
        segmented = range(
            int(result.get("first_frame", 0)), int(result.get("last_frame", case.frames - 1)) + 1
        )
        segment_id = self.scene_logic.apply_frame_masks(case, masks, segmented_organ, frames=segmented)
        self._organs[_case_key(case)] = segmented_organ
        report(total, total, f"{len(review)} frames segmented")
        self.update_measurements(case, segment_id)
        return PropagationOutcome(segment_id, segmented_organ, review, result)

    def _poll_propagation(self, image_id: str, job: str) -> tuple[str | None, dict]:
        time.sleep(PROPAGATION_POLL_S)
        return self.client.propagate_poll(image_id, job)

    def _cancel_propagation(self, image_id: str, job: str) -> None:
        """Ask the server to stop job ``job``, on a thread of its own (this may be the GUI thread)."""

        def cancel() -> None:
            try:
                self.client.propagate_poll(image_id, job, cancel=True)
            except SonoVLMClientError:
                pass  # it had ended, or the server is gone: nothing left to stop

        threading.Thread(target=cancel, daemon=True, name="SonoVLM cancel").start()

    def _interact(self, case: UltrasoundCase, prompts: Prompts, organ: str, prompt: str | None) -> Steps:
        """One ``interactive`` request with ``prompts`` and the current contour; the reply replaces
        the contour in place. The prompts are kept only when the request succeeded."""
        image_id = self._image_id(case)
        previous_path = self._current_contour_file(case, organ)
        try:
            mask_path, result = yield lambda: self.client.interactive(
                image_id=image_id,
                previous_mask=previous_path,
                organ=organ,
                prompt=prompt,
                **prompts.as_params(),
            )
        finally:
            if previous_path is not None:
                os.remove(previous_path)
        self._check_frame(case, prompts.frame if case.is_cine else None)
        mask, segmented_organ = self._reply_mask(image_id, mask_path, result, organ)
        before = self._prompts.get(_case_key(case))
        self._prompts[_case_key(case)] = prompts
        return self._replace_contour(case, mask, segmented_organ, result, before)

    def _replace_contour(
        self,
        case: UltrasoundCase,
        mask: np.ndarray,
        organ: str,
        result: dict[str, Any],
        prompts_before: Prompts | None,
    ) -> SegmentationOutcome:
        """Snapshot the organ's contour for undo, then put ``mask`` in its place and measure it."""
        frame = result.get("frame") if case.is_cine else None
        frame = int(frame) if frame is not None else None
        existing = self.scene_logic.find_segment(case, organ)
        self.history.push(
            ContourSnapshot(
                case_key=_case_key(case),
                organ=organ,
                frame=self.scene_logic.segment_frame(case, existing) if existing is not None else frame,
                mask=self.scene_logic.segment_mask(case, existing) if existing is not None else None,
                prompts=(prompts_before or Prompts(case.current_frame())).copy(),
            )
        )
        segment_id = self.scene_logic.apply_mask(case, mask, organ, frame=frame)
        self._organs[_case_key(case)] = organ
        measurement = self.update_measurements(case, segment_id)
        return SegmentationOutcome(segment_id, organ, result, measurement)

    def _current_contour_file(self, case: UltrasoundCase, organ: str) -> str | None:
        """The organ's current contour on the frame shown as a label file for the server, ``None``
        when there is none (or it is empty). For ``auto``, the organ last segmented."""
        target = organ if organ in ORGAN_LABELS else self._organs.get(_case_key(case))
        segment_id = self.scene_logic.find_segment(case, target) if target else None
        if segment_id is None or not self.scene_logic.segment_mask(case, segment_id).any():
            return None
        folder = os.path.join(self.work_dir, "contours")
        os.makedirs(folder, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix="contour-", suffix=".nrrd", dir=folder)
        os.close(fd)
        return self.scene_logic.export_label(case, segment_id, path)

    def _reply_mask(
        self, image_id: str, mask_path: str | None, result: dict[str, Any], organ: str
    ) -> tuple[np.ndarray, str]:
        """The mask file of a segmentation-like reply, read and removed, and the organ segmented."""
        if mask_path is None:
            raise ValueError(f"the server sent no mask for {image_id} (reply: {result!r})")
        try:
            mask = read_mask(mask_path)
        finally:
            os.remove(mask_path)
        return mask, self._known_organ(result, organ)

    @staticmethod
    def _known_organ(result: dict[str, Any], organ: str) -> str:
        segmented_organ = str(result.get("organ") or organ)
        if segmented_organ not in ORGAN_LABELS:
            raise ValueError(
                f"the server segmented an organ the extension does not know: {segmented_organ!r}"
            )
        return segmented_organ

    def classify(self, case: UltrasoundCase, organ: str) -> ClassificationSummary:
        """Benign/malignant probabilities of the case's current frame."""
        return run_steps(self.classify_steps(case, organ))

    def classify_steps(self, case: UltrasoundCase, organ: str) -> Steps:
        image_id = self._image_id(case)
        frame = case.current_frame() if case.is_cine else None
        result = yield lambda: self.client.classify(image_id=image_id, organ=organ, frame=frame)
        return classification_summary(result)

    def update_measurements(self, case: UltrasoundCase, segment_id: str) -> LesionMeasurement | None:
        """Measure the segment again (after an edit) and move the axis lines."""
        measurement = self.scene_logic.measure(case, segment_id)
        self.scene_logic.show_axes(case, measurement, self.scene_logic.segment_organ(case, segment_id))
        return measurement

    def measure_shown(self, case: UltrasoundCase, segment_id: str | None = None) -> LesionMeasurement | None:
        """Measure what the panel shows and move the axis lines (after an edit, undo or a frame
        change): ``segment_id`` (the editor's current segment) when the case's segmentation has
        it, else the segment of the organ last segmented in ``case`` (on the frame shown, for a
        cine). With neither, the axis lines are removed and the result is ``None``.

        Returns:
            the measurements (mm when calibrated, else pixels), ``None`` for no segment or an
            empty one.

        Raises:
            ValueError, RuntimeError: Slicer could not export the segment to measure it.
        """
        segmentation = case.segmentation.GetSegmentation()
        if not segment_id or segmentation.GetSegment(segment_id) is None:
            organ = self.case_organ(case)
            segment_id = self.scene_logic.find_segment(case, organ) if organ else None
        if segment_id is None:
            self.scene_logic.remove_axes(case)
            return None
        return self.update_measurements(case, segment_id)

    # ---------------------------------------------------------------- labels

    def submit(self, case: UltrasoundCase, segment_id: str, pathology: str | None) -> dict[str, Any]:
        """Send the (corrected) segment as the image's final label with its organ and pathology
        (``None``/``"unknown"`` sends none). A cine's label is the whole cine: every frame's
        contour of the segment's organ, one slice per frame, frames without one listed as
        ``unannotated_frames`` (propagated contours are submitted too)."""
        return run_steps(self.submit_steps(case, segment_id, pathology))

    def submit_steps(self, case: UltrasoundCase, segment_id: str, pathology: str | None) -> Steps:
        if case.is_cine and case.segmentation.GetSegmentation().GetSegment(segment_id) is None:
            # The frame shown has no contour of its own: the organ the case was segmented for.
            organ = self.case_organ(case)
        else:
            organ = self.scene_logic.segment_organ(case, segment_id)
        if organ is None:
            raise ValueError(
                "this segment was not made for an organ: auto-segment first, or pick the organ's segment"
            )
        image_id = self._image_id(case)
        label_dir = os.path.join(self.work_dir, "labels")
        os.makedirs(label_dir, exist_ok=True)
        target = os.path.join(label_dir, f"{image_id}.nrrd")
        unannotated: list[int] | None = None
        if case.is_cine:
            label_path, unannotated = self.scene_logic.export_cine_label(case, organ, target)
        else:
            label_path = self.scene_logic.export_label(case, segment_id, target)
        try:
            reply = yield lambda: self.client.save_label(
                image_id, label_path, organ, pathology=pathology, unannotated_frames=unannotated
            )
        finally:
            os.remove(label_path)
        self.submissions += 1
        return reply

    def retrain_due(self, every: int) -> bool:
        """Whether a retraining is due after the latest submission (every ``every``; 0 = never)."""
        return every > 0 and self.submissions > 0 and self.submissions % every == 0

    # ---------------------------------------------------------------- training

    def start_training(self, model: str, **params: Any) -> dict[str, Any]:
        """Start training ``model`` on the server (asynchronous; poll :meth:`training`)."""
        return self.client.train(model, **params)

    def training(self) -> TrainingProgress:
        """The latest training's progress (``/train/`` plus ``/info``'s train stats)."""
        task = self.client.train_status()
        stats = None
        if task is not None:
            self._info = self.client.info()
            stats = self._info.get("train_stats")
        return training_progress(task, stats)

    def stop_training(self) -> dict[str, Any] | None:
        return self.client.stop_training()

    @staticmethod
    def _check_frame(case: UltrasoundCase, frame: int | None) -> None:
        """The reply is for ``frame``: refuse it when the user moved to another frame meanwhile."""
        if frame is not None and case.current_frame() != frame:
            raise ValueError(
                f"the frame shown changed from {frame} to {case.current_frame()} while the server "
                "worked; the result was not applied: go back to that frame and try again"
            )

    def _image_id(self, case: UltrasoundCase) -> str:
        if not case.image_id:
            raise ValueError(f"{case.name} is not on the server yet: use Next sample, or upload the volume")
        return case.image_id


def _case_key(case: UltrasoundCase) -> str:
    """A case's identity in the session's state: its volume node's id."""
    return str(case.volume.GetID())
