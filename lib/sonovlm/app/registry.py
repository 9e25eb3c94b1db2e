"""The one model the server holds, shared by every task, and how it changes version.

What is served, in order: the current published model of ``model_dir`` (see
:mod:`sonovlm.app.model_store`), else the ``weights`` checkpoint given at start, else the backbone
with freshly initialised adapter and heads (marked untrained).

The registry notices a publish or rollback (``published.json`` replaced) on the next request and
from a watcher thread, and loads the new checkpoint beside the served model before swapping them.
When that load fails the previous model keeps serving, the reason is logged and shown in ``/info``
(``model_load_error``), and the same file is not retried until it changes again. MONAI Label's own
loader would retry (and fail) on every request instead.

Requests run one forward at a time (:meth:`ModelRegistry.inference`), as MONAI Label's endpoints
do anyway; the background scorer takes the same lock per batch (:meth:`ModelRegistry.score_batch`)
and gives it to waiting requests between the backbone's blocks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError, SonoInputError
from . import model_access
from .config import AppConfig
from .frames import ImageCache
from .model_store import ModelStore

logger = logging.getLogger(__name__)


class ModelRegistry:
    """Holds the served predictor; thread-safe.

    Args:
        config: the app configuration (backbone, adapter, weights, device).
        store: the published models.
        images: the decoded-image cache every task reads through.
        watch_interval_s: how often the watcher thread checks for a new published model (0 = no
            thread; requests still check).
    """

    def __init__(
        self, config: AppConfig, store: ModelStore, images: ImageCache, watch_interval_s: float = 2.0
    ) -> None:
        self.config = config
        self.store = store
        self.images = images
        self.watch_interval_s = watch_interval_s
        self.device = config.resolved_device()
        self.precision = config.resolved_precision(self.device)  # a bad --conf precision stops here
        self._lock = threading.RLock()
        self._predictor: Any = None
        self._source = "none"
        self._signature: Any = object()
        self._failed_signature: Any = None
        self.load_error: str | None = None
        self._listeners: list[Callable[[str], None]] = []
        self._watcher: threading.Thread | None = None
        self._reload_lock = threading.Lock()
        self._waiting_lock = threading.Lock()
        self._requests_waiting = 0
        self._described: tuple[Any, dict[str, Any]] | None = None

    # -- starting ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Load the model to serve. Raises :class:`ModelLoadError` when nothing can be served."""
        self.store.remove_stale_incoming()
        with self._lock:
            self._signature = self.store.signature()
            current = self.store.current()
            if current is not None:
                try:
                    self._predictor = model_access.load_predictor(current.path, self.config, self.device)
                    self._source = f"published {current.version}"
                except (ModelLoadError, SonoInputError) as exc:
                    # Serve the start-up model (under its own, honest version) and say why.
                    self.load_error = f"published model {current.version} could not be loaded: {exc}"
                    logger.error("%s; serving the start-up model instead", self.load_error)
                    self._failed_signature = self._signature
            if self._predictor is None:
                self._predictor, self._source = self._initial_predictor()
        logger.info("Serving model %s (%s) on %s", self.model_version, self._source, self.device)
        if self.watch_interval_s > 0 and self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="sonovlm-model-watch", daemon=True)
            self._watcher.start()

    def _initial_predictor(self) -> tuple[Any, str]:
        if self.config.weights:
            return (
                model_access.load_predictor(Path(self.config.weights), self.config, self.device),
                f"weights {self.config.weights}",
            )
        return model_access.new_predictor(self.config, self.device), "backbone"

    def warm_up(self) -> float:
        """One forward of each kind on a small synthetic image; returns the seconds it took."""
        start = time.perf_counter()
        with self.inference() as predictor:
            model_access.warm_up(predictor)
        return time.perf_counter() - start

    # -- serving -----------------------------------------------------------------------------------

    @property
    def predictor(self) -> Any:
        if self._predictor is None:
            raise ModelLoadError("the model is not loaded yet (the server is still starting)")
        return self._predictor

    @property
    def model_version(self) -> str:
        return str(self.predictor.model_version)

    @contextmanager
    def inference(self, background: bool = False) -> Iterator[Any]:
        """Exclusive use of the served predictor (after picking up a newly published model).

        ``background`` work (scoring) waits while any request waits, so a request never queues
        behind more than one background step.
        """
        self.refresh(wait=False)
        if background:
            while self._requests_waiting:
                time.sleep(0.01)
            with self._lock:
                yield self.predictor
            return
        with self._waiting_lock:
            self._requests_waiting += 1
        try:
            self._lock.acquire()
        finally:
            with self._waiting_lock:
                self._requests_waiting -= 1
        try:
            yield self.predictor
        finally:
            self._lock.release()

    def yield_to_requests(self, predictor: Any) -> None:
        """Inside :meth:`inference` on a background thread: let requests waiting for the predictor
        run now, then go on. Long work (a background propagation) calls it between steps so that
        it does not hold every request (and the server's event loop) back until it ends.

        Raises:
            ModelLoadError: another model was served meanwhile (a result must come from one model).
        """
        if not self._requests_waiting:
            return
        version = predictor.model_version
        self._lock.release()
        try:
            deadline = time.monotonic() + 1.0
            while self._requests_waiting and time.monotonic() < deadline:
                time.sleep(0.002)  # the waiting request takes the lock, then stops waiting
        finally:
            self._lock.acquire()
        if self._predictor is not predictor or predictor.model_version != version:
            raise ModelLoadError(
                f"model {self.model_version} was published while the work ran on {version}; run it again"
            )

    def score_batch(self, items: list[Any], samples: int) -> list[Any]:
        """Active-learning scores of ``items`` (``Predictor.score_batch`` items) by the served model,
        as background work: it starts once no request waits and lets requests that come meanwhile
        run at each pause point of the batch (between backbone blocks, before each image's head
        passes), so a click waits for one block, not for the batch.

        Returns:
            One ``ImageScore`` per item, in order.

        Raises:
            ModelLoadError: another model was served meanwhile (score the batch again).
        """
        with self.inference(background=True) as predictor:
            return predictor.score_batch(
                items, samples=samples, between_steps=lambda: self.yield_to_requests(predictor)
            )

    def on_change(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(new_version)`` after a different model starts serving."""
        self._listeners.append(callback)

    def refresh(self, wait: bool = True) -> bool:
        """Serve the current published model if it changed; True when the served model changed.

        With ``wait=False`` (requests) nothing happens while another thread is already loading.
        """
        if self.store.signature() in (self._signature, self._failed_signature):
            return False
        if not self._reload_lock.acquire(blocking=wait):
            return False
        try:
            return self._reload()
        finally:
            self._reload_lock.release()

    def _reload(self) -> bool:
        signature = self.store.signature()
        if signature == self._signature or signature == self._failed_signature:
            return False
        current = self.store.current()
        if current is None:  # history emptied by hand: keep what is served
            self._signature = signature
            return False
        if self._predictor is not None and current.version == self.model_version:
            self._signature = signature
            return False
        try:
            prepared = model_access.prepare(current.path, self.config, self.device, served=self._predictor)
            with self._lock:
                previous = self._predictor
                self._predictor = prepared.activate()
                self._source = f"published {current.version}"
                self._signature = signature
                self.load_error = None
        except Exception as exc:  # any failure: keep serving the previous model
            self._failed_signature = signature
            self.load_error = f"model {current.version} from {current.path} could not be loaded: {exc}"
            logger.error("%s; still serving %s", self.load_error, self.model_version)
            return False
        if previous is not None and previous.model is not self._predictor.model:
            previous.clear_cache()
        del previous
        logger.info(
            "Now serving model %s (%s)", self.model_version, "in place" if prepared.in_place else "new"
        )
        for callback in list(self._listeners):
            try:
                callback(self.model_version)
            except Exception:
                logger.exception("Model-change listener failed")
        return True

    def _watch(self) -> None:
        while True:
            time.sleep(self.watch_interval_s)
            try:
                self.refresh()
            except Exception:
                logger.exception("Model watcher failed")

    def info(self) -> dict[str, Any]:
        """What ``/info`` shows for each task: backbone, adapter, served version, any load error."""
        if self._predictor is None:
            return {
                "backbone": self.config.backbone,
                "adapter": self.config.adapter,
                "model_version": None,
                "precision": self.precision.to_dict(),
            }
        predictor = self._predictor
        key = (id(predictor), predictor.model_version)
        if self._described is None or self._described[0] != key:
            # describe() hashes the weights of a never-saved model: once per served version.
            self._described = (key, model_access.describe(predictor))
        details = dict(self._described[1])
        details.update(
            {
                "model_version": self.model_version,
                "model_source": self._source,
                "device": self.device,
                "precision": predictor.precision_info(),
            }
        )
        if self.load_error:
            details["model_load_error"] = self.load_error
        return details
