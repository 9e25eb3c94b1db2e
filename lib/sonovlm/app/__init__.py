"""SonoVLM as MONAI Label 0.8.5 tasks: the server app behind ``monailabel_app/main.py``.

Modules (import what you need; nothing heavy is imported here):

* :mod:`.server`: :class:`~.server.SonoVLMServer`, the ``MONAILabelApp`` wiring everything;
* :mod:`.config`: ``--conf`` parsing (:class:`~.config.AppConfig`);
* :mod:`.registry` and :mod:`.model_access`: the one served model shared by every task, its
  version, reloads after publish/rollback (failures keep the previous model), warm-up;
* :mod:`.model_store`: published checkpoints in ``model_dir`` (history, rollback, kill-safe);
* :mod:`.infer`: the ``segmentation`` and ``classification`` infer tasks;
* :mod:`.train`: the trainers (MONAI Label subprocess, own publishing);
* :mod:`.datastore`, :mod:`.labels`, :mod:`.cases`: the studies folder, labels checked before
  they are stored, ``cases.csv``;
* :mod:`.strategies`, :mod:`.scoring`: active learning and its per-version scores;
* :mod:`.frames`, :mod:`.results`, :mod:`.atomic`, :mod:`.http`: decoded-image cache, latest
  results per image, atomic writes, HTTP errors.
"""
