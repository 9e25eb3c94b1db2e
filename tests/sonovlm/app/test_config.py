"""``--conf`` parsing: defaults, and clear messages for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest
from sonovlm.app.config import MODEL_NAMES, AppConfig
from sonovlm.errors import SonoInputError


def test_defaults(tmp_path):
    config = AppConfig.from_conf({}, tmp_path / "app")
    assert config.backbone == "openai/clip-vit-base-patch16"
    assert config.adapter is None and config.weights is None
    assert config.models == MODEL_NAMES and config.model_dir == (tmp_path / "app" / "model").resolve()
    assert config.train_threads >= 1 and config.auto_scoring
    assert config.scoring_batch == 8


def test_values(tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    config = AppConfig.from_conf(
        {
            "backbone": "tiny",
            "adapter": "lora",
            "weights": str(weights),
            "models": "segmentation",
            "model_dir": str(tmp_path / "m"),
            "threads": "2",
            "auto_scoring": "false",
            "scoring_batch": "3",
            "server_mode": "x",
        },
        tmp_path,
    )
    assert (config.backbone, config.adapter, config.models) == ("tiny", "lora", ("segmentation",))
    assert config.weights == str(weights) and config.model_dir == Path(tmp_path / "m").resolve()
    assert config.threads == 2 and not config.auto_scoring and config.extra == {"server_mode": "x"}
    assert config.scoring_batch == 3


@pytest.mark.parametrize(
    "conf, message",
    [
        ({"models": "segmentation,detection"}, "unknown model"),
        ({"adapter": "prefix"}, "unknown adapter"),
        ({"weights": "/no/such/file.safetensors"}, "does not exist"),
        ({"device": "tpu"}, "expected auto"),
        ({"threads": "many"}, "expected an integer"),
        ({"auto_scoring": "perhaps"}, "true or false"),
        ({"scoring_batch": "0"}, "scoring_batch: must be at least 1"),
        ({"scoring_batch": "eight"}, "scoring_batch: expected an integer"),
        ({"backbone": " "}, "must not be empty"),
    ],
)
def test_bad_values(tmp_path, conf, message):
    with pytest.raises(SonoInputError, match=message):
        AppConfig.from_conf(conf, tmp_path)


def test_weights_bring_their_own_backbone(tmp_path):
    from sonovlm.model import load_model, save_checkpoint

    checkpoint = tmp_path / "trained.safetensors"
    save_checkpoint(load_model(backbone="tiny", adapter="lora"), checkpoint)
    config = AppConfig.from_conf({"weights": str(checkpoint)}, tmp_path / "app")
    assert config.backbone == "tiny"
    explicit = AppConfig.from_conf({"weights": str(checkpoint), "backbone": "vit-b16"}, tmp_path / "app")
    assert explicit.backbone == "vit-b16"
