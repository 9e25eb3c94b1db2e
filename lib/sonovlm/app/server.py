"""The SonoVLM MONAI Label app: tasks, datastore, strategies and the shared model, wired together.

``monailabel_app/main.py`` subclasses :class:`SonoVLMServer`; MONAI Label builds it as
``cls(app_dir, studies, conf)`` in the server and again in every training subprocess. Building it
is cheap (no model is loaded): the server loads and warms up the model in
:meth:`SonoVLMServer.on_init_complete`, which only the server calls; a backbone that cannot be
loaded stops the server there with the reason.

Overridden MONAI Label 0.8.5 behaviour (see the reference notes):

* ``infer``/``next_sample``: unknown image ids and strategies are 404, bad input 422.
* ``propagate`` with ``"as_job": true`` runs as a job a client polls (:mod:`sonovlm.app.jobs`).
* automatic re-scoring after every next-sample is off; scores follow publishes instead
  (:mod:`sonovlm.app.scoring`).
* the datastore is :class:`~sonovlm.app.datastore.SonoDatastore` (a studies folder) or
  :class:`~sonovlm.app.dicomweb.DICOMwebUltrasoundDatastore` (``--studies`` a DICOMweb URL); the
  app asks either through :class:`~sonovlm.app.label_store.LabelStore`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag

from .. import __version__
from ..errors import ModelLoadError, SonoInputError
from ..organs import ORGAN_LABELS
from .compat import infer_tasks, server_mode, stop_rescoring_on_next_sample, strategies
from .config import AppConfig
from .datastore import STATE_DIR, SonoDatastore
from .dicomweb import build_datastore
from .frames import ImageCache
from .http import bad_input, not_found
from .infer import DEFAULT_ORGAN, ClassificationTask, SegmentationTask
from .interactive import InteractiveTask
from .jobs import JobBoard
from .label_store import LabelStore
from .model_store import ModelStore
from .pacs_index import dicomweb_cache_dir
from .propagate import PropagateTask
from .registry import ModelRegistry
from .results import ResultLog
from .scoring import BackgroundScorer, ScoreStore, ScoringJob
from .strategies import DiversityStrategy, FirstStrategy, RandomStrategy, ServedLog, UncertaintyStrategy

logger = logging.getLogger(__name__)


class SonoVLMServer(MONAILabelApp):
    """MONAI Label app serving one SonoVLM model (see the module notes)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        try:
            self.app_config = AppConfig.from_conf(conf, app_dir)
        except SonoInputError as exc:
            logger.error("Bad configuration: %s", exc)
            raise
        remote = studies.startswith(("http://", "https://"))
        # A PACS's instances, labels and the app's state live in a local cache folder.
        local_root = dicomweb_cache_dir(studies, conf) if remote else Path(studies)
        state_dir = local_root / STATE_DIR
        self.store = ModelStore(self.app_config.model_dir, keep=self.app_config.keep_versions)
        self.images = ImageCache(cache_under=local_root)
        self.registry = ModelRegistry(self.app_config, self.store, self.images)
        self.scores = ScoreStore(state_dir / "scores")
        self.results = ResultLog(state_dir / "results", deferred=True)  # no reply waits for the disk
        self.served = ServedLog()
        self.propagations = JobBoard()
        self.scorer: BackgroundScorer | None = None
        self._rescored_for: tuple[str, int] | None = None
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="SonoVLM",
            description="Ultrasound lesion segmentation and benign/malignant classification "
            "with a vision-language foundation model",
            version=__version__,
            labels=list(ORGAN_LABELS),
        )
        # MONAI Label's re-scoring rebuilds the whole app in a subprocess after every next-sample.
        stop_rescoring_on_next_sample(self)

    # -- wiring ------------------------------------------------------------------------------------

    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            # Not MONAI Label's DICOMweb datastore: it lists CT, downloads dcmqi at start and
            # converts to NIfTI (losing the ultrasound calibration).
            return build_datastore(self.studies, self.conf, load_image=self.images.get)
        return SonoDatastore(
            self.studies,
            geometry=self._geometry,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def _geometry(self, path: str) -> tuple[int, int, int, tuple[float, float] | None]:
        image = self.images.get(path)
        return image.n_frames, image.height, image.width, image.spacing_mm

    def _recorded_organ(self, image_id: str | None) -> str | None:
        datastore = self.datastore()
        if image_id and isinstance(datastore, LabelStore):
            return datastore.recorded_organ(image_id)
        return None

    def init_infers(self) -> dict[str, Any]:
        infers: dict[str, Any] = {}
        if "segmentation" in self.app_config.models:
            infers["segmentation"] = SegmentationTask(
                self.registry, self._recorded_organ, self.results.record
            )
            # Clicks/box/previous mask and cine propagation reuse the segmentation network.
            infers["interactive"] = InteractiveTask(self.registry, self._recorded_organ, self.results.record)
            infers["propagate"] = PropagateTask(
                self.registry, self._recorded_organ, self.results.record, jobs=self.propagations
            )
        if "classification" in self.app_config.models:
            infers["classification"] = ClassificationTask(
                self.registry, self._recorded_organ, self.results.record
            )
        return infers

    def init_trainers(self) -> dict[str, Any]:
        from .train import ClassificationTrainer, SegmentationTrainer

        trainers: dict[str, Any] = {}
        if "segmentation" in self.app_config.models:
            trainers["segmentation"] = SegmentationTrainer(self.app_config, self.store)
        if "classification" in self.app_config.models:
            trainers["classification"] = ClassificationTrainer(self.app_config, self.store)
        return trainers

    def init_strategies(self) -> dict[str, Any]:
        version = self._served_version
        missing = self._rescore_new_images
        return {
            "random": RandomStrategy(self.served),
            "first": FirstStrategy(self.served),
            "uncertainty": UncertaintyStrategy(self.served, self.scores, version, on_missing=missing),
            "diversity": DiversityStrategy(self.served, self.scores, version, on_missing=missing),
        }

    def _rescore_new_images(self) -> None:
        """One extra scoring pass per (model version, image count): unreadable images never loop."""
        scorer = self.scorer
        if scorer is None or not self.app_config.auto_scoring or scorer.status()["state"] != "idle":
            return
        key = (self.registry.model_version, len(self.datastore().list_images()))
        if key != self._rescored_for:
            self._rescored_for = key
            scorer.schedule("images without scores")

    def init_scoring_methods(self) -> dict[str, Any]:
        return {}

    def _served_version(self) -> str:
        return self.registry.model_version

    # -- server start ------------------------------------------------------------------------------

    def on_init_complete(self) -> None:
        """Load and warm up the model (server only); fail fast with the reason when it cannot."""
        if self.app_config.threads:
            import torch

            torch.set_num_threads(self.app_config.threads)
        try:
            self.registry.start()
        except (ModelLoadError, SonoInputError) as exc:
            logger.error("Cannot serve backbone %r: %s", self.app_config.backbone, exc)
            raise
        if self.app_config.warmup:
            self._warm_up()
        self._start_scoring()
        super().on_init_complete()

    def _warm_up(self) -> None:
        """Import and run everything a first request uses, so it is as fast as later ones."""
        seconds = self.registry.warm_up()
        datastore = self.datastore()
        images = datastore.list_images()
        if images:
            first = sorted(images)[0]
            try:
                for task in infer_tasks(self).values():
                    request = {"image": datastore.get_image_uri(first), "image_id": first, "warm_up": True}
                    mask_path, _ = task({**request, "logging": "WARNING"})
                    if mask_path:
                        os.unlink(mask_path)
            except Exception as exc:  # a bad study must not stop the server; it is a 4xx later
                logger.warning("Warm-up on %s failed: %s", first, exc)
        logger.info("Warm-up done (model %.2f s)", seconds)

    def _start_scoring(self) -> None:
        datastore = self.datastore()
        if not isinstance(datastore, LabelStore):
            return
        job = ScoringJob(
            model_version=self._served_version,
            images=lambda: [
                (i, bool(datastore.get_label_by_image_id(i, DefaultLabelTag.FINAL)))
                for i in sorted(datastore.list_images())
            ],
            score_image=self._score_image,
            score_batch=self._score_batch,
            batch_size=self.app_config.scoring_batch,
        )
        self.scorer = BackgroundScorer(self.scores, job, delay_s=self.app_config.scoring_delay_s)
        if self.app_config.auto_scoring:
            self.registry.on_change(lambda version: self.scorer.schedule(f"model {version} published"))
            if not self.scores.has(self.registry.model_version):
                self.scorer.schedule("no scores for the served model yet")

    def _score_image(self, image_id: str, labelled: bool):
        result = self._score_batch([(image_id, labelled)])[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def _score_batch(self, pairs: list[tuple[str, bool]]) -> list[Any]:
        """``(uncertainty or None, embedding)`` (or the exception) per ``(image_id, labelled)``.

        Images are decoded (not through the request image cache: a pass over the folder must not
        evict what the annotator is working on) and preprocessed before the model is taken; the
        one backbone forward of the batch lets waiting requests run between its blocks.
        """
        from ..io import load_image

        datastore = self.datastore()
        predictor = self.registry.predictor
        results: list[Any] = [None] * len(pairs)
        prepared: list[tuple[int, Any]] = []
        for index, (image_id, labelled) in enumerate(pairs):
            try:
                image = load_image(datastore.get_image_uri(image_id))
                organ = self._recorded_organ(image_id) or DEFAULT_ORGAN
                prepared.append((index, predictor.prepare_scoring([(image, organ, labelled)])[0]))
            except Exception as exc:  # this image only
                results[index] = exc
        if prepared:
            samples = self.app_config.uncertainty_samples
            scores = self.registry.score_batch([item for _, item in prepared], samples)
            for (index, _), score in zip(prepared, scores, strict=True):
                results[index] = (score.uncertainty, score.embedding)
        return results

    # -- requests ----------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        meta = super().info()
        meta["sonovlm"] = {
            **self.registry.info(),
            "published": [
                {
                    "version": m.version,
                    "published_at": m.published_at,
                    "source": m.source,
                    "current": m.current,
                }
                for m in self.store.history()[-5:]
            ],
            "scoring": self.scorer.status() if self.scorer else {"state": "off"},
            "image_cache": self.images.stats(),
            "propagations": self.propagations.statuses(),
        }
        return meta

    def infer(self, request: dict[str, Any], datastore=None) -> dict[str, Any]:
        """Resolve the image (datastore id -> path, 404 when unknown) and run the task."""
        tasks = infer_tasks(self)
        if request.get("model") not in tasks:
            raise not_found(f"no infer task {request.get('model')!r}; available: {', '.join(tasks)}")
        datastore = datastore or self.datastore()
        image = request.get("image")
        request = dict(request)
        if request["model"] == "propagate" and "job" in request:
            # A poll: no image is read. ``image`` is the job's image id, or ``job:JOB`` for a job
            # on an uploaded file (MONAI Label's route wants an image argument).
            if isinstance(image, str) and image and not image.startswith("job:"):
                request["image_id"] = image
            return self.propagations.poll(request)
        if isinstance(image, str) and image:
            if isinstance(datastore, LabelStore) and datastore.has_image(image):
                request["image_id"] = image
            elif not os.path.isfile(image):
                raise not_found(f"image {image!r} is not in the datastore")
        if request["model"] == "propagate" and "as_job" in request:
            return self._start_propagation_job(request, datastore)
        return super().infer(request, datastore)

    def _start_propagation_job(self, request: dict[str, Any], datastore) -> dict[str, Any]:
        """``"as_job": true`` on ``propagate``: run it as a job a client polls (:mod:`.jobs`)."""
        as_job = request.pop("as_job")
        if not isinstance(as_job, bool):
            raise bad_input("params.as_job", f"must be true or false, not {as_job!r}")
        if not as_job:
            return super().infer(request, datastore)
        status = self.propagations.start(request, lambda r: MONAILabelApp.infer(self, r, datastore))
        return {"label": None, "tag": None, "file": None, "params": status}

    def train(self, request: dict[str, Any]) -> dict[str, Any]:
        """Train (in MONAI Label's training subprocess). ``run_sync`` would train inside the server
        process and block every request until it ends: refused with 400."""
        if server_mode(self):
            raise bad_input(
                "run_sync",
                "training inside the server blocks every request; start it without run_sync "
                "(POST /train/MODEL runs in a subprocess)",
                status=400,
            )
        return super().train(request)

    def next_sample(self, request: dict[str, Any]) -> dict[str, Any]:
        strategy = request.get("strategy") or "random"
        task = strategies(self).get(strategy)
        if task is None:
            raise not_found(f"no strategy {strategy!r}; available: {', '.join(strategies(self))}")
        result = task(request, self.datastore())
        result["path"] = self.datastore().get_image_uri(result["id"])
        return result

    def on_save_label(self, image_id: str, label_id: str) -> dict[str, Any]:
        info = self.datastore().get_label_info(label_id, DefaultLabelTag.FINAL)
        keys = ("organ", "pathology", "frame", "annotated_frames", "saved_by", "saved_at")
        return {k: info[k] for k in keys if k in info}
