"""Every place the app reaches into a private member of MONAI Label 0.8.5 or dicomweb-client.

The framework classes are extended through their public hooks where they have one. Where they do
not, the override or the private call lives here, once, and forwards to a public method of ours
with a name from the domain; :data:`PRIVATE_MEMBERS` lists each private member the app overrides
or uses, with the parameters it expects, and ``tests/sonovlm/app/test_compat.py`` fails when an
upgrade of the framework renames one or changes its signature.

* :class:`InferTaskCompat`: ``BasicInferTask._get_network`` -> ``served_network`` (the registry
  of the one served model instead of a network loaded per task).
* :class:`TrainTaskCompat`: ``BasicTrainTask._device``, ``_create_evaluator``, ``_create_trainer``
  -> ``training_device``, ``build_evaluator``, ``build_trainer``; ``amp`` and
  ``checked_transforms`` read ``_amp`` and call ``_validate_transforms``.
* :class:`LocalDatastoreCompat`: ``LocalDatastore._init_from_datastore_file`` -> ``reload_index``;
  the local datastore also uses LocalDatastore's index attributes listed in
  :data:`LOCAL_DATASTORE_ATTRIBUTES`.
* :class:`DICOMwebClientCompat`: URLs, GET, STOW and multipart decoding of dicomweb-client, for
  retrieving and storing instances byte for byte.
* :func:`infer_tasks`, :func:`strategies`, :func:`server_mode`, :func:`stop_rescoring_on_next_sample`:
  the ``MONAILabelApp`` attributes the server reads or sets.
"""

from __future__ import annotations

from typing import Any

from dicomweb_client.api import DICOMwebClient
from dicomweb_client.web import _Transaction
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.tasks.train.basic_train import BasicTrainTask

#: ``(owner, member, parameters)``: each private framework member the app overrides or uses;
#: ``parameters`` is the callable's parameter names, ``None`` for an instance attribute.
PRIVATE_MEMBERS: tuple[tuple[type, str, tuple[str, ...] | None], ...] = (
    (BasicInferTask, "_get_network", ("self", "device", "data")),
    (BasicInferTask, "_config", None),
    (BasicTrainTask, "_device", ("self", "context")),
    (BasicTrainTask, "_create_evaluator", ("self", "context")),
    (BasicTrainTask, "_create_trainer", ("self", "context")),
    (BasicTrainTask, "_validate_transforms", ("transforms", "step", "name")),
    (BasicTrainTask, "_amp", None),
    (BasicTrainTask, "_config", None),
    (LocalDatastore, "_init_from_datastore_file", ("self", "throw_exception")),
    (LocalDatastore, "_update_datastore_file", ("self", "lock")),
    (LocalDatastore, "_reconcile_datastore", ("self",)),
    (LocalDatastore, "_filename", ("self", "id", "ext")),
    (LocalDatastore, "_to_id", ("self", "file")),
    (
        DICOMwebClient,
        "_get_instances_url",
        ("self", "transaction", "study_instance_uid", "series_instance_uid", "sop_instance_uid"),
    ),
    (DICOMwebClient, "_get_studies_url", ("self", "transaction", "study_instance_uid")),
    (DICOMwebClient, "_http_get", ("self", "url", "params", "headers", "stream")),
    (DICOMwebClient, "_http_post_multipart_application_dicom", ("self", "url", "data")),
    (DICOMwebClient, "_decode_multipart_message", ("self", "response", "stream")),
    (DICOMwebClient, "_session", None),
    (MONAILabelApp, "_infers", None),
    (MONAILabelApp, "_strategies", None),
    (MONAILabelApp, "_server_mode", None),
    (MONAILabelApp, "_auto_update_scoring", None),
)

#: LocalDatastore's index attributes that :class:`~sonovlm.app.datastore.SonoDatastore` reads and
#: writes under its own lock (the index model, its file, its time stamp, the event flag).
LOCAL_DATASTORE_ATTRIBUTES: tuple[str, ...] = (
    "_datastore",
    "_datastore_path",
    "_datastore_config_path",
    "_config_ts",
    "_ignore_event_config",
)

#: dicomweb-client's transaction kinds (RETRIEVE, STORE, ...), private in ``dicomweb_client.web``.
Transaction = _Transaction


class InferTaskCompat:
    """Mixin for ``BasicInferTask`` subclasses: the network is whatever :meth:`served_network` gives."""

    def _get_network(self, device: Any, data: Any) -> Any:
        return self.served_network(device, data)

    def served_network(self, device: Any, data: Any) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError


class TrainTaskCompat:
    """Mixin for ``BasicTrainTask`` subclasses: device and engines from public methods."""

    def _device(self, context: Any) -> Any:
        return self.training_device(context)

    def _create_evaluator(self, context: Any) -> Any:
        return self.build_evaluator(context)

    def _create_trainer(self, context: Any) -> Any:
        return self.build_trainer(context)

    @property
    def amp(self) -> bool:
        """Whether MONAI Label's task was built with automatic mixed precision."""
        return self._amp

    def checked_transforms(self, transforms: Any, step: str, name: str) -> Any:
        """MONAI Label's check of a transform list (``step``: Training/Validation, ``name``: pre/post)."""
        return self._validate_transforms(transforms, step, name)

    def training_device(self, context: Any) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def build_evaluator(self, context: Any) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def build_trainer(self, context: Any) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError


class LocalDatastoreCompat:
    """Mixin for ``LocalDatastore`` subclasses: reading and writing the index go to
    :meth:`reload_index` and :meth:`write_index`; reconciling it with the files runs MONAI Label's
    own under :meth:`index_lock`."""

    def _init_from_datastore_file(self, throw_exception: bool = False) -> None:
        self.reload_index(throw_exception)

    def _update_datastore_file(self, lock: bool = True) -> None:
        self.write_index(lock)

    def _reconcile_datastore(self) -> None:
        with self.index_lock():
            LocalDatastore._reconcile_datastore(self)

    def reload_index(self, throw_exception: bool = False) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def write_index(self, lock: bool = True) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def index_lock(self) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError


class DICOMwebClientCompat(DICOMwebClient):
    """dicomweb-client with the private calls needed to move instances byte for byte."""

    def instance_url(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        return self._get_instances_url(Transaction.RETRIEVE, study_uid, series_uid, sop_uid)

    def store_url(self) -> str:
        return self._get_studies_url(Transaction.STORE, None)

    def http_get(self, url: str, headers: dict[str, str]) -> Any:
        return self._http_get(url, headers=headers)

    def post_instances(self, url: str, data: list[bytes]) -> Any:
        return self._http_post_multipart_application_dicom(url, data)

    def multipart_parts(self, response: Any) -> list[bytes]:
        return [bytes(part) for part in self._decode_multipart_message(response, stream=False)]

    @property
    def session(self) -> Any:
        """The ``requests`` session every call of this client goes through."""
        return self._session


def infer_tasks(app: MONAILabelApp) -> dict[str, Any]:
    """The app's infer tasks by name."""
    return app._infers


def strategies(app: MONAILabelApp) -> dict[str, Any]:
    """The app's active-learning strategies by name."""
    return app._strategies


def server_mode(app: MONAILabelApp) -> bool:
    """MONAI Label's ``server_mode`` (next-sample without a client id)."""
    return bool(app._server_mode)


def stop_rescoring_on_next_sample(app: MONAILabelApp) -> None:
    """MONAI Label re-scores after every next-sample by rebuilding the whole app in a
    subprocess; the app schedules its own scoring instead (:mod:`sonovlm.app.scoring`)."""
    app._auto_update_scoring = False
