"""The sonographer's workflow, without Qt: next case, auto-segment, classify, measure, submit,
train. The Slicer module's logic (``SonoVLMLogic``) is this class; the widget only wires buttons
to its methods and shows what they return.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any

from .client import SonoVLMClient, SonoVLMClientError
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
from .scene import UltrasoundCase, UltrasoundSceneLogic, read_mask


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
        try:
            sample = self.client.next_sample(strategy)
        except SonoVLMClientError as error:
            if error.status == 404 and strategy in (self.info.get("strategies") or {}):
                return None
            raise
        image_id = sample.get("id") if sample else None
        if not image_id:
            return None
        path = self.client.download_image(image_id, os.path.join(self.work_dir, "images"))
        return self.scene_logic.load_image(path, image_id=image_id, name=image_id)

    def open_volume(self, volume: Any) -> UltrasoundCase:
        """Use a volume already loaded in Slicer: build its case and upload it to the server."""
        case = self.scene_logic.case_from_volume(volume)
        upload_dir = os.path.join(self.work_dir, "uploads")
        os.makedirs(upload_dir, exist_ok=True)
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in case.name) or "image"
        path = self.scene_logic.save_volume(case, os.path.join(upload_dir, f"{stem}.nrrd"))
        case.set_image_id(self.client.upload_image(path))
        return case

    # ---------------------------------------------------------------- inference

    def auto_segment(
        self, case: UltrasoundCase, organ: str, prompt: str | None = None
    ) -> SegmentationOutcome:
        """Segment the case's current frame; the mask becomes the organ's segment, measured and
        drawn as two lines."""
        image_id = self._image_id(case)
        mask_path, result = self.client.segment(
            image_id=image_id,
            organ=organ,
            prompt=prompt,
            frame=case.current_frame() if case.is_cine else None,
        )
        if mask_path is None:
            raise ValueError(f"the server sent no mask for {image_id} (reply: {result!r})")
        try:
            mask = read_mask(mask_path)
        finally:
            os.remove(mask_path)
        segmented_organ = str(result.get("organ") or organ)
        if segmented_organ not in ORGAN_LABELS:
            raise ValueError(
                f"the server segmented an organ the extension does not know: {segmented_organ!r}"
            )
        frame = result.get("frame") if case.is_cine else None
        segment_id = self.scene_logic.apply_mask(
            case, mask, segmented_organ, frame=int(frame) if frame is not None else None
        )
        measurement = self.update_measurements(case, segment_id)
        return SegmentationOutcome(segment_id, segmented_organ, result, measurement)

    def classify(self, case: UltrasoundCase, organ: str) -> ClassificationSummary:
        """Benign/malignant probabilities of the case's current frame."""
        result = self.client.classify(
            image_id=self._image_id(case), organ=organ, frame=case.current_frame() if case.is_cine else None
        )
        return classification_summary(result)

    def update_measurements(self, case: UltrasoundCase, segment_id: str) -> LesionMeasurement | None:
        """Measure the segment again (after an edit) and move the axis lines."""
        measurement = self.scene_logic.measure(case, segment_id)
        self.scene_logic.show_axes(case, measurement, self.scene_logic.segment_organ(case, segment_id))
        return measurement

    # ---------------------------------------------------------------- labels

    def submit(self, case: UltrasoundCase, segment_id: str, pathology: str | None) -> dict[str, Any]:
        """Send the (corrected) segment as the image's final label with its organ and pathology
        (``None``/``"unknown"`` sends none); a cine's label is the frame it was made on."""
        organ = self.scene_logic.segment_organ(case, segment_id)
        if organ is None:
            raise ValueError(
                "this segment was not made for an organ: auto-segment first, or pick the organ's segment"
            )
        label_dir = os.path.join(self.work_dir, "labels")
        os.makedirs(label_dir, exist_ok=True)
        label_path = self.scene_logic.export_label(
            case, segment_id, os.path.join(label_dir, f"{self._image_id(case)}.nrrd")
        )
        try:
            reply = self.client.save_label(
                self._image_id(case),
                label_path,
                organ,
                pathology=pathology,
                frame=self.scene_logic.segment_frame(case, segment_id),
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

    def _image_id(self, case: UltrasoundCase) -> str:
        if not case.image_id:
            raise ValueError(f"{case.name} is not on the server yet: use Next sample, or upload the volume")
        return case.image_id
