"""The assembled SonoVLM on the tiny preset: frozen backbone, identity start, training, text cache."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sonovlm.errors import SonoInputError
from sonovlm.model import AdapterConfig, ModelConfig, SonoVLM, classification_loss, segmentation_loss
from sonovlm.model.adapters import adapter_parameters
from sonovlm.model.backbone import build_preset
from sonovlm.model.sonovlm_model import ORGANS

ADAPTERS = ("lora", "mona", "hybrid")


def _model(adapter: str = "lora") -> SonoVLM:
    return SonoVLM(ModelConfig(backbone="tiny", adapter=AdapterConfig(kind=adapter)))


@pytest.fixture(scope="module")
def lora_model() -> SonoVLM:
    return _model("lora")


def _pixels(batch: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def test_forward_shapes_and_cached_text(lora_model):
    out = lora_model(_pixels(2), organ_ids=torch.tensor([0, 2]))
    assert out["seg_logits"].shape == (2, 2, 64, 64)
    assert out["cls_logits"].shape == (2, 2)
    assert out["image_embedding"].shape == (2, 32)
    torch.testing.assert_close(out["image_embedding"].norm(dim=-1), torch.ones(2))
    # The prompt bank's embeddings were computed once, at build, and are unit vectors.
    assert lora_model.organ_text.shape == (len(ORGANS), 32)
    assert lora_model.class_text.shape == (len(ORGANS), 2, 32)
    torch.testing.assert_close(lora_model.organ_text.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(lora_model.class_text.norm(dim=-1), torch.ones(3, 2))
    target = lora_model.prompt_bank.target("breast_lesion")
    torch.testing.assert_close(lora_model.encode_texts([target])[0], lora_model.organ_text[1])
    with pytest.raises(ValueError):
        lora_model(_pixels(1))


def test_backbone_is_frozen_and_only_adapter_and_heads_train(lora_model):
    lora_model.zero_grad(set_to_none=True)
    out = lora_model(_pixels(2), organ_ids=torch.tensor([0, 1]))
    (out["seg_logits"].mean() + out["cls_logits"].mean()).backward()
    trainable = {name for name, p in lora_model.named_parameters() if p.requires_grad}
    assert trainable and all(
        name.startswith(("seg_head.", "cls_head.")) or "lora_" in name for name in trainable
    )
    for name, parameter in lora_model.named_parameters():
        if name not in trainable:
            assert parameter.grad is None, f"gradient reached the frozen backbone: {name}"
    lora_grads = [p.grad for n, p in lora_model.named_parameters() if "lora_" in n]
    assert any(grad is not None and grad.abs().sum() > 0 for grad in lora_grads)
    assert len(lora_model.trainable_parameters()) == len(trainable)
    lora_model.zero_grad(set_to_none=True)


def test_frozen_text_tower_gets_no_gradient_through_prompts(lora_model):
    embedding = lora_model.encode_texts(["a thyroid nodule"])
    assert not embedding.requires_grad


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_adapters_start_as_the_identity_in_the_model(adapter):
    config = ModelConfig(backbone="tiny", adapter=AdapterConfig(kind="none"))
    bare = SonoVLM(config, backbone=build_preset("tiny"))
    adapted = _model(adapter)
    pixels = _pixels(2)
    with torch.no_grad():
        expected, actual = bare.encode_image(pixels), adapted.encode_image(pixels)
    for level_expected, level_actual in zip(expected.levels, actual.levels, strict=True):
        torch.testing.assert_close(level_actual, level_expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(actual.embedding, expected.embedding, rtol=0, atol=1e-6)


def test_a_few_steps_lower_both_losses():
    torch.manual_seed(0)
    model = _model("mona")
    model.train()
    pixels = _pixels(4, seed=1)
    organ_ids = torch.tensor([0, 1, 2, 0])
    masks = torch.zeros(4, 1, 64, 64)
    masks[0, :, 10:30, 10:40] = 1
    masks[1, :, 30:60, 20:50] = 1
    masks[2, :, 5:25, 30:60] = 1
    masks[3, :, 40:60, 5:25] = 1
    labels = torch.tensor([[0], [1], [1], [0]])
    seg_loss, cls_loss = segmentation_loss(), classification_loss()
    optimiser = torch.optim.AdamW(model.trainable_parameters(), lr=3e-3)

    def losses() -> tuple[torch.Tensor, torch.Tensor]:
        out = model(pixels, organ_ids=organ_ids)
        return seg_loss(out["seg_logits"], masks), cls_loss(out["cls_logits"], labels)

    model.eval()
    with torch.no_grad():
        seg_before, cls_before = losses()
    adapter_before = [p.detach().clone() for p in adapter_parameters(model.clip)]
    model.train()
    for _ in range(8):
        optimiser.zero_grad()
        seg, cls = losses()
        (seg + cls).backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        seg_after, cls_after = losses()
    assert seg_after < 0.8 * seg_before
    assert cls_after < 0.8 * cls_before
    # The adapter trains too, not only the heads.
    after = adapter_parameters(model.clip)
    assert any(not torch.equal(a, p) for a, p in zip(adapter_before, after, strict=True))


def test_free_text_prompts_are_encoded_once_and_checked(lora_model):
    first = lora_model.encode_prompt("a round   hypoechoic thyroid nodule")
    again = lora_model.encode_prompt("a round hypoechoic thyroid nodule")
    assert again is first  # from the cache
    torch.testing.assert_close(first.norm(), torch.tensor(1.0))
    with pytest.raises(SonoInputError, match="empty"):
        lora_model.encode_prompt("   ")
    with pytest.raises(SonoInputError, match="tokens"):
        lora_model.encode_prompt("nodule " * 100)


def test_free_text_condition_reaches_the_segmentation(lora_model):
    features = lora_model.encode_image(_pixels(1))
    with torch.no_grad():
        lora_model.seg_head.film.weight.normal_(std=0.5)
        try:
            a = lora_model.segment_logits(features, lora_model.encode_prompt("a lymph node"))
            b = lora_model.segment_logits(features, lora_model.organ_text[0])
            assert not torch.allclose(a, b)
        finally:
            lora_model.seg_head.film.weight.zero_()


def test_unknown_organ(lora_model):
    with pytest.raises(SonoInputError, match="unknown organ"):
        lora_model.organ_index("liver")
    assert lora_model.organ_ids(["thyroid_nodule", "lymph_node"]).tolist() == [2, 0]


def test_same_config_builds_the_same_untrained_model():
    first, second = _model("lora"), _model("lora")
    assert first.version == second.version and first.version.startswith("init-")
    assert first.backbone_info["untrained"] is True
    pixels = _pixels(1)
    with torch.no_grad():
        a = first(pixels, organ_ids=torch.tensor([1]))
        b = second(pixels, organ_ids=torch.tensor([1]))
    assert torch.equal(a["seg_logits"], b["seg_logits"]) and torch.equal(a["cls_logits"], b["cls_logits"])


def test_config_round_trip_and_describe(lora_model):
    config = ModelConfig.from_dict(lora_model.config.to_dict())
    assert config == lora_model.config
    assert config.preprocess.image_size == 64 and config.prompt_hash == lora_model.prompt_bank.content_hash
    info = lora_model.describe()
    assert info["untrained"] is True and info["adapter"] == "lora" and info["levels"] == [2, 3, 4]
    with pytest.raises(SonoInputError):
        ModelConfig.from_dict({**lora_model.config.to_dict(), "extra": 1})


def test_zero_shot_classification_before_training(lora_model):
    pixels = _pixels(1)
    with torch.no_grad():
        features = lora_model.encode_image(pixels)
        logits = lora_model.classify_logits(features, torch.tensor([2]))
        expected = lora_model.logit_scale() * features.embedding @ lora_model.class_text[2].T
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(F.softmax(logits, -1).sum(), torch.tensor(1.0))
