"""The segmentation trainer's simulated interactions: a share of the batches is interactive, through
MONAI's SupervisedTrainer; validation and eval stay automatic."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from monai.engines import SupervisedTrainer
from monai.inferers import SimpleInferer
from sonovlm.app.config import AppConfig
from sonovlm.app.model_store import ModelStore
from sonovlm.app.train import SegmentationTrainer
from sonovlm.app.train_data import (
    DEFAULT_INTERACTIVE_FRACTION,
    _check_train_request,
    prepare_organ_batch,
)
from sonovlm.errors import SonoInputError
from sonovlm.model import load_model, segmentation_loss


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-interactive")
    config = AppConfig.from_conf({"backbone": "tiny", "model_dir": str(root / "model")}, root)
    return SegmentationTrainer(config, ModelStore(config.model_dir))


def fresh_model():
    model = load_model(backbone="tiny", adapter="mona")
    model.cls_head.requires_grad_(False)
    model.train()
    return model


def batches(model, count: int = 4, size: int = 2) -> list[dict]:
    side = model.preprocess_config.image_size
    generator = torch.Generator().manual_seed(1)
    out = []
    for index in range(count):
        label = torch.zeros(size, 1, side, side)
        label[:, :, side // 4 : side // 2, side // 4 + index : side // 2 + index] = 1
        image = torch.rand(size, 3, side, side, generator=generator) - 2 * label
        out.append({"image": image, "label": label, "organ_id": torch.tensor([index % 3] * size)})
    return out


def run_engine(trainer, fraction: float, epochs: int = 2):
    """Train a fresh model with MONAI's SupervisedTrainer the way the app wires it."""
    model = fresh_model()
    network = trainer.task_output(model, SimpleNamespace(request={"interactive_fraction": fraction}))
    optimiser = torch.optim.AdamW([p for p in network.parameters() if p.requires_grad], lr=1e-2)
    engine = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=batches(model),
        network=network,
        optimizer=optimiser,
        loss_function=segmentation_loss(),
        inferer=SimpleInferer(),
        prepare_batch=trainer.train_prepare_batch,
    )
    engine.run()
    return model, network


def test_config_advertises_the_interactive_fraction(trainer):
    assert trainer.config()["interactive_fraction"] == DEFAULT_INTERACTIVE_FRACTION == 0.5
    request = {
        "max_epochs": 1,
        "train_batch_size": 1,
        "val_batch_size": 1,
        "learning_rate": 1e-4,
        "val_split": 0.2,
        "early_stop_patience": 0,
    }
    _check_train_request({**request, "interactive_fraction": "0.25"})
    with pytest.raises(SonoInputError, match="interactive_fraction"):
        _check_train_request({**request, "interactive_fraction": 1.5})


def test_interactive_batches_train_the_interaction_encoder(trainer):
    model, network = run_engine(trainer, fraction=1.0)
    assert network.interactive_batches == 8  # 2 epochs x 4 batches
    assert model.seg_head.interaction.is_trained


def test_automatic_only_leaves_the_interaction_encoder_untouched(trainer):
    before = {k: v.clone() for k, v in fresh_model().seg_head.state_dict().items()}
    model, network = run_engine(trainer, fraction=0.0)
    assert network.interactive_batches == 0
    assert not model.seg_head.interaction.is_trained
    after = model.seg_head.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the rest of the head trained


def test_half_of_the_batches_are_interactive_by_default(trainer):
    model = fresh_model()
    network = trainer.task_output(model, SimpleNamespace(request={}))
    batch = batches(model, count=1)[0]
    with torch.no_grad():
        for _ in range(40):
            network(batch["image"], batch["organ_id"], targets=batch["label"])
    assert 10 <= network.interactive_batches <= 30


def test_eval_and_validation_are_automatic(trainer):
    model = fresh_model()
    encoder = model.seg_head.interaction
    with torch.no_grad():
        for layer in (encoder.fine_out, encoder.coarse_out):
            layer.weight.normal_(0, 0.5)  # prompts would change the logits
    model.eval()
    network = trainer.task_output(model, SimpleNamespace(request={"interactive_fraction": 1.0}))
    batch = batches(model, count=1)[0]
    image, label, args, kwargs = trainer.train_prepare_batch(batch)
    assert torch.equal(kwargs["targets"], label)
    assert prepare_organ_batch(batch)[3] == {}  # validation's batches carry no targets
    network.eval()
    with torch.no_grad():
        expected = model(image, organ_ids=args[0])["seg_logits"]
        torch.testing.assert_close(network(image, *args, **kwargs), expected)  # eval: no prompts
        assert network.interactive_batches == 0
        network.train()
        network(image, *args)  # no targets (validation's batches): no prompts
        assert network.interactive_batches == 0
        network(image, *args, **kwargs)
    assert network.interactive_batches == 1
