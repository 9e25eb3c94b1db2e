"""SonoVLM as a MONAI Label app: ``python -m monailabel.main start_server --app monailabel_app ...``.

Configuration (``--conf KEY VALUE``; all optional):

==================  ==========================================================================
backbone            hub id (default ``openai/clip-vit-base-patch16``), local directory,
                    or untrained preset ``tiny`` / ``vit-b16``
adapter             ``mona`` (default), ``lora``, ``hybrid`` or ``none``
weights             checkpoint served while nothing has been published yet (on its
                    recorded backbone unless ``backbone`` is given)
device              ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:N``
models              ``all`` (default) or a comma list of ``segmentation``, ``classification``
model_dir           published models and their history (default ``monailabel_app/model/``)
threads             torch threads for inference (default: torch's choice)
train_threads       torch threads of a training run (default: all cores but one)
auto_scoring        recompute active-learning scores after each publish (default true)
scoring_delay_s     debounce of that recomputation in seconds (default 5)
==================  ==========================================================================

The tasks live in :mod:`sonovlm.app`; this file only names the app class MONAI Label looks for.
"""

from monailabel.interfaces.app import MONAILabelApp
from sonovlm.app import server
from sonovlm.app.annotator import install_annotator_record
from sonovlm.app.auth import install_auth_fix

# MONAI Label 0.8.5 rejects every token under PyJWT 2 (no algorithm named); fix before serving.
install_auth_fix()
# ... and drops the signed-in user when a label is saved: record it as the annotator.
install_annotator_record()


# MONAI Label instantiates the class in this file whose *direct* bases name MONAILabelApp.
class SonoVLMApp(server.SonoVLMServer, MONAILabelApp):
    """The SonoVLM server app (see :class:`sonovlm.app.server.SonoVLMServer`)."""
