"""Server retraining augments like ``python -m training``: one augmentation pipeline for both."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from monai.transforms import Compose
from sonovlm.app.config import AppConfig
from sonovlm.app.datastore import SonoDatastore
from sonovlm.app.model_store import ModelStore
from sonovlm.app.train import ClassificationTrainer, SegmentationTrainer
from sonovlm.app.train_data import (
    DEFAULT_AUGMENT,
    FinaliseTrainingItem,
    LoadTrainingItem,
    _check_train_request,
)
from sonovlm.errors import SonoInputError
from sonovlm.io import load_image
from sonovlm.model import load_model
from sonovlm.model.augment import train_transforms
from sonovlm.sample_data import write_sample_studies


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-augment")
    write_sample_studies(root / "studies", count=3, seed=4, label_every_case=True)
    return SonoDatastore(str(root / "studies"))


@pytest.fixture(scope="module")
def model():
    return load_model(backbone="tiny", adapter="mona")


def trainer(cls, tmp_path, model):
    config = AppConfig.from_conf({"backbone": "tiny", "model_dir": str(tmp_path / "model")}, tmp_path)
    task = cls(config, ModelStore(config.model_dir))
    task._model = model
    return task


def test_default_is_offline_trainings_default_Compose(tmp_path, model):
    """The same transforms, in the same order, as ``python -m training --augment all``."""
    assert DEFAULT_AUGMENT == "all"
    for cls in (SegmentationTrainer, ClassificationTrainer):
        steps = trainer(cls, tmp_path, model).train_pre_transforms(SimpleNamespace(request={}))
        assert isinstance(steps[0], LoadTrainingItem) and isinstance(steps[-1], FinaliseTrainingItem)
        [augmentation] = steps[1:-1]
        offline = train_transforms("all")
        assert [type(t) for t in augmentation.transforms] == [type(t) for t in offline.transforms]
    none = trainer(SegmentationTrainer, tmp_path, model).train_pre_transforms(
        SimpleNamespace(request={"augment": "none"})
    )
    assert [type(t) for t in none] == [LoadTrainingItem, FinaliseTrainingItem]


def test_unaugmented_item_is_what_the_server_predicts_on(studies, model):
    """Load + finalise without augmentation equals ``preprocess_pair`` / ``preprocess_frame``."""
    config = model.preprocess_config
    [item, *_] = studies.segmentation_items()
    out = Compose([LoadTrainingItem(config, "segmentation"), FinaliseTrainingItem(config)])(item)
    image = load_image(item["image"])
    from sonovlm.app.labels import read_stored_label

    stored = read_stored_label(item["label"], image.n_frames)
    mask = stored if stored.ndim == 2 else stored[item["label_frame"]]
    pixels, target = model.preprocess_pair(image, mask, item.get("frame"))
    assert torch.equal(out["image"], pixels) and torch.equal(out["label"], target)
    assert set(out) == {"image", "label", "image_id", "organ_id"}

    [cls_item, *_] = studies.classification_items()
    out = Compose([LoadTrainingItem(config, "classification"), FinaliseTrainingItem(config)])(cls_item)
    pixels, _ = model.preprocess_frame(load_image(cls_item["image"]), cls_item.get("frame"))
    assert torch.equal(out["image"], pixels) and out["label"].shape == (1,)


def test_augmented_items_keep_shapes_and_a_binary_mask(tmp_path, studies, model):
    task = trainer(SegmentationTrainer, tmp_path, model)
    steps = Compose(task.train_pre_transforms(SimpleNamespace(request={})))
    steps.set_random_state(seed=3)
    side = model.preprocess_config.image_size
    plain = Compose(task.val_pre_transforms(SimpleNamespace(request={})))
    [item, *_] = studies.segmentation_items()
    reference = plain(item)
    changed = 0
    for _ in range(6):
        out = steps(item)
        assert out["image"].shape == (3, side, side) and out["label"].shape == (1, side, side)
        assert set(torch.unique(out["label"]).tolist()) <= {0.0, 1.0}
        assert out["label"].sum() > 0  # the lesion survives the geometry
        changed += not torch.equal(out["image"], reference["image"])
    assert changed >= 3


def test_unknown_augmentation_is_refused_by_name():
    request = {"max_epochs": 1, "train_batch_size": 1, "val_batch_size": 1, "learning_rate": 1e-3}
    request |= {"val_split": 0.2, "early_stop_patience": 0}
    _check_train_request({**request, "augment": "ultrasound"})
    with pytest.raises(SonoInputError, match="augment.*'elastic'.*known: none, geometric"):
        _check_train_request({**request, "augment": "elastic"})
