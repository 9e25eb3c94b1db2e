"""The demo model: what ``make demo`` serves, trained on simulated phantoms only.

It ships in the package (``resources/demo_model/``, see :data:`DEMO_CHECKPOINT_BYTES_MAX`), and
``--conf weights demo`` serves it. ``python -m training demo-model FILE`` is the recipe that made
it (the same pipeline as any other model, on phantoms from the ``sonovlm sample-data`` simulator
with seed :data:`TRAIN_SEED`, so ``make demo``'s studies, seed 0, and the evaluation studies, seed
:data:`EVAL_SEED`, are held out).

Its checkpoint carries :data:`DEMO_CARD` as ``model_card`` metadata, and the server puts that card
in ``/info`` and in every infer reply, so nobody can take it for a clinical model. It is never
called by a real model's name: its backbone is the untrained ``small`` preset.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .errors import SonoInputError

#: Name the demo model goes by (checkpoint file stem and model card name).
DEMO_NAME = "sonovlm-phantom-demo"
#: ``--conf weights`` value that selects the packaged demo checkpoint.
DEMO_WEIGHTS_ALIAS = "demo"
#: Seeds of the simulator: training phantoms, and the held-out studies Dice is reported on.
TRAIN_SEED = 1
EVAL_SEED = 2
#: The packaged checkpoint must stay small (the repository stays lean).
DEMO_CHECKPOINT_BYTES_MAX = 4 * 1024 * 1024

DEMO_CARD: dict[str, object] = {
    "name": DEMO_NAME,
    "trained_on": "simulated B-mode phantoms (sonovlm sample-data simulator), not patient images",
    "clinical_use": False,
    "notice": "Demonstration model trained on simulated phantoms, not patients. Not for clinical use.",
    "backbone": "small preset: random frozen weights, not CLIP",
}


def demo_checkpoint() -> Path:
    """Path of the packaged demo checkpoint.

    Raises:
        SonoInputError: the package was installed without it (rebuild it with
            ``python -m training demo-model``).
    """
    path = Path(str(resources.files("sonovlm") / "resources" / "demo_model" / f"{DEMO_NAME}.safetensors"))
    if not path.is_file():
        raise SonoInputError(
            path, "the demo checkpoint is missing; recreate it with `python -m training demo-model FILE`"
        )
    return path
