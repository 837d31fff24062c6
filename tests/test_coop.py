"""CoOp: prompt construction is exact, truncation is exact, only the context trains."""

import dataclasses
import math

import pytest
import torch

from bench.errors import BenchError
from bench.methods.base import FeatureSet, FewShotData
from bench.methods.coop import (
    Coop,
    CoopConfig,
    PromptClassifier,
    build_prompt_learner,
    init_context,
    text_tower,
)
from bench.methods.zero_shot import ZeroShot
from tests.toy import clip_scaled_backbone, toy_context

NAMES = ("red stripes", "blue_dots", "class 0", "a much longer class name here")
PHRASE_LAYOUTS = {"end": "a photo of a {}.", "front": "{} a photo of a.", "middle": "a photo {} of a."}


@pytest.fixture(scope="module")
def backbone():
    return clip_scaled_backbone()


def _learner(backbone, position="end", ctx_init="a photo of a", csc=False, names=NAMES, n_ctx=16):
    cfg = CoopConfig(ctx_init=ctx_init, class_token_position=position, csc=csc, n_ctx=n_ctx)
    vectors, text = init_context(backbone, cfg, len(names), torch.Generator().manual_seed(0))
    return build_prompt_learner(backbone, names, vectors, text, position)


def _context(backbone):
    return toy_context(backbone)


def _data(n_per_class, names=NAMES, views=2, dim=64):
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(len(names)).repeat_interleave(n_per_class)
    train = FeatureSet(torch.randn(views, len(labels), dim, generator=generator), labels)
    val = FeatureSet(torch.randn(1, len(names), dim, generator=generator), torch.arange(len(names)))
    return FewShotData("toy", n_per_class, names, {"coop": ("a photo of a {}.",)}, train, val)


@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_phrase_initialised_prompts_are_the_frozen_encoders_prompts(backbone, position):
    """Context from "a photo of a", no training: CoOp's prompt is exactly the hand-written one (with its period)."""
    learner = _learner(backbone, position)
    expected = backbone.encode_text(backbone.tokenize([PHRASE_LAYOUTS[position].format(n) for n in NAMES]))
    with torch.no_grad():
        untruncated = learner.text_features(text_tower(backbone.model), truncate=False)
    assert torch.equal(untruncated, expected)


@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_truncating_at_the_last_eot_changes_nothing_but_rounding(backbone, position):
    """Under the causal mask the EOT features do not depend on later positions. Kernels over 77 and over
    max(EOT)+1 positions sum in different orders, so the features agree to float32 rounding, not bit for bit."""
    learner = _learner(backbone, position, ctx_init="", n_ctx=8)
    tower = text_tower(backbone.model)
    with torch.no_grad():
        truncated, full = (
            learner.text_features(tower, truncate=True),
            learner.text_features(tower, truncate=False),
        )
    assert int(learner.eot.max()) + 1 < 77 / 2  # the saving is real
    torch.testing.assert_close(truncated, full, rtol=1e-5, atol=1e-5)
    features = torch.randn(200, truncated.shape[1], generator=torch.Generator().manual_seed(1))
    logits_truncated = PromptClassifier(truncated, 100.0)(features)
    logits_full = PromptClassifier(full, 100.0)(features)
    torch.testing.assert_close(logits_truncated, logits_full, rtol=1e-5, atol=1e-4)
    assert torch.equal(logits_truncated.argmax(1), logits_full.argmax(1))


def test_zero_epochs_from_the_phrase_is_zero_shot_clip(backbone):
    data = _data(2)
    cfg = dataclasses.replace(Coop().default_config("toy", 2), ctx_init="a photo of a", epochs=0)
    classifier = Coop().fit(data, cfg, _context(backbone))
    expected = torch.nn.functional.normalize(
        backbone.encode_text(backbone.tokenize([f"a photo of a {n}." for n in NAMES])), dim=-1
    )
    assert torch.equal(classifier.weights, expected)
    features = torch.randn(30, 64, generator=torch.Generator().manual_seed(0))
    zero_shot = ZeroShot().fit(
        data, ZeroShot.Config(), _context(backbone)
    )  # data.prompts: "a photo of a {}."
    with torch.no_grad():  # zero_shot normalises twice (ensemble mean of normalised features): rounding apart
        torch.testing.assert_close(classifier(features), zero_shot(features))
        assert torch.equal(classifier(features).argmax(1), zero_shot(features).argmax(1))


def test_context_length_comes_from_the_phrase_and_random_init_is_small(backbone):
    assert _learner(backbone, ctx_init="a photo of a").n_ctx == 4
    # "itap" is two BPE tokens: M counts tokens (CoOp counts words, 3, and would drop the final "a")
    itap = _learner(backbone, ctx_init="itap of a")
    assert itap.n_ctx == 4
    expected = backbone.encode_text(backbone.tokenize([f"itap of a {n}." for n in NAMES]))
    with torch.no_grad():
        assert torch.equal(itap.text_features(text_tower(backbone.model), truncate=False), expected)
    unified = _learner(backbone, ctx_init="", n_ctx=16)
    assert unified.ctx.shape == (16, 64) and 0.015 < float(unified.ctx.detach().std()) < 0.025  # N(0, 0.02²)
    assert _learner(backbone, ctx_init="", n_ctx=4, csc=True).ctx.shape == (len(NAMES), 4, 64)
    assert _learner(backbone, ctx_init="a photo of a", csc=True).ctx.shape == (len(NAMES), 4, 64)


def test_only_the_context_trains_even_on_a_support_set_smaller_than_a_batch(backbone):
    """EuroSAT 1-shot: 10 images < batch 32 must still give one step per epoch (CoOp's old bug trained nothing)."""
    names = tuple(f"class {i}" for i in range(10))
    data = _data(1, names=names)
    cfg = dataclasses.replace(Coop().default_config("eurosat", 1), n_ctx=4, epochs=3)
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    initial = init_context(backbone, cfg, len(names), torch.Generator().manual_seed(0))[0]
    records = {}
    ctx = dataclasses.replace(_context(backbone), record=records.__setitem__)
    classifier = Coop().fit(data, cfg, ctx)
    assert all(torch.equal(before[k], v) for k, v in backbone.model.state_dict().items())  # frozen encoder
    assert not torch.equal(classifier.ctx, initial)  # ... and the context moved
    first, last = records["train_loss_first_last"]
    assert math.isfinite(first) and math.isfinite(last)


def test_class_specific_context_does_not_transfer(backbone):
    data = _data(2)
    unified = Coop().fit(
        data, dataclasses.replace(Coop().default_config("toy", 2), n_ctx=4, epochs=1), _context(backbone)
    )
    specific = Coop().fit(
        data,
        dataclasses.replace(Coop().default_config("toy", 2), n_ctx=4, epochs=1, csc=True),
        _context(backbone),
    )
    assert hasattr(unified, "for_classes") and not hasattr(specific, "for_classes")
    new = unified.for_classes(("zebra", "yak"), _context(backbone))
    assert new.weights.shape == (2, 64) and torch.equal(new.ctx, unified.ctx)


def test_bad_settings_are_user_errors(backbone):
    with pytest.raises(BenchError, match="class-token position"):
        _learner(backbone, position="left")
    with pytest.raises(BenchError, match="context length"):
        _learner(backbone, ctx_init="", n_ctx=70, names=("a rather long class name",))
