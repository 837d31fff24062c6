"""LP++ and CLAP / ZS-LP: initialisations, step sizes, constraint weights, selection."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from bench.methods.base import embed_classes
from bench.methods.clap import Clap, ZeroShotLinearProbe, class_multipliers
from bench.methods.lp_pp import LpPlusPlus, initial_alpha, step_sizes, train_lp_pp
from bench.methods.zero_shot import ZeroShot
from tests.toy import clip_scaled_backbone, clustered_data, toy_context

NAMES = tuple(f"class {i}" for i in range(5))


@pytest.fixture(scope="module")
def ctx():
    return toy_context(clip_scaled_backbone())


def _data(views, per_class=8, seed=0):
    return clustered_data(NAMES, per_class, views, seed=seed)


def test_lp_pp_data_driven_start_and_step_sizes():
    generator = torch.Generator().manual_seed(0)
    normed = F.normalize(torch.randn(12, 8, generator=generator), dim=-1)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    text_logits = normed @ F.normalize(torch.randn(3, 8, generator=generator), dim=-1).t()
    own = [float(text_logits[labels == k, k].mean()) for k in range(3)]
    assert initial_alpha(text_logits, labels, 3, 250.0) == pytest.approx(250 * sum(own) / 3)
    lr_w, lr_alpha = step_sizes(normed, text_logits)
    top_eigenvalue = float(torch.linalg.svdvals(normed.double())[0] ** 2)
    assert lr_w == pytest.approx(4 * 12 / top_eigenvalue)
    assert lr_alpha == pytest.approx(12 / (4 * float(text_logits.double().pow(2).sum(0).max())))


def test_lp_pp_zero_epochs_is_the_initialisation(ctx):
    data = _data(1)
    records = {}
    cfg = dataclasses.replace(LpPlusPlus().default_config("toy", 8), epochs=0)
    model = LpPlusPlus().fit(data, cfg, dataclasses.replace(ctx, record=records.__setitem__))
    normed = F.normalize(data.train.features[0], dim=-1)
    sums = torch.stack([normed[data.train.labels == k].sum(0) for k in range(5)])
    torch.testing.assert_close(model.weight, sums)  # class sums, as the reference code
    assert torch.all(model.alpha == records["alpha_init"])


def test_lp_pp_steps_alpha_every_tenth_epoch_and_prefers_later_ties(ctx):
    data = _data(1)
    normed = F.normalize(data.train.features[0], dim=-1)
    text = embed_classes(ctx, NAMES, ("a photo of a {}.",))
    flat_val = (torch.zeros(20, 64), data.val.labels)  # every epoch scores the same: ties everywhere
    cfg = LpPlusPlus().default_config("toy", 8)
    nine, info = train_lp_pp(
        normed, data.train.labels, text, dataclasses.replace(cfg, epochs=9), flat_val, ctx
    )
    assert (
        torch.all(nine.alpha == info["alpha_init"]) and info["best_epoch"] == 9
    )  # no α step yet; last tie wins
    ten, info = train_lp_pp(
        normed, data.train.labels, text, dataclasses.replace(cfg, epochs=10), flat_val, ctx
    )
    assert not torch.all(ten.alpha == info["alpha_init"]) and info["best_epoch"] == 10


def test_lp_pp_keeps_the_best_val_epoch(ctx):
    data = _data(1)
    records = {}
    model = LpPlusPlus().fit(
        data, LpPlusPlus().default_config("toy", 8), dataclasses.replace(ctx, record=records.__setitem__)
    )
    with torch.no_grad():
        val_accuracy = float((model(data.val.center).argmax(1) == data.val.labels).double().mean())
    assert val_accuracy == records["best_val_top1"] and 1 <= records["best_epoch"] <= 300


def test_clap_multipliers_are_zero_shot_class_performance(ctx):
    data = _data(3)
    zero_shot = ZeroShot().fit(data, ZeroShot.Config(), ctx)
    records = {}
    cfg = dataclasses.replace(Clap().default_config("toy", 8), epochs=0)
    model = Clap().fit(data, cfg, dataclasses.replace(ctx, record=records.__setitem__))
    features = data.train.features.flatten(0, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(features), zero_shot(features), rtol=1e-5, atol=1e-4)  # one template
        probs = zero_shot(features).softmax(-1)
        labels = data.train.labels.repeat(3)
        expected = torch.stack([probs[labels == k, k].mean() for k in range(5)])
        torch.testing.assert_close(
            class_multipliers(model, data.train.features, data.train.labels, 5),
            expected,
            rtol=1e-4,
            atol=1e-6,
        )
    assert records["lambda"]["min"] == pytest.approx(float(expected.min()), rel=1e-4)


def test_clap_constraint_keeps_prototypes_near_zero_shot(ctx):
    """Same data, same batches: the penalised prototypes end closer to the text prototypes than ZS-LP's."""
    data = _data(20, per_class=16)
    text = embed_classes(ctx, NAMES, ("a photo of a {}.",))
    clap = Clap().fit(data, dataclasses.replace(Clap().default_config("toy", 16), epochs=30), ctx)
    zs_lp = ZeroShotLinearProbe().fit(
        data, dataclasses.replace(ZeroShotLinearProbe().default_config("toy", 16), epochs=30), ctx
    )

    def drift(model):
        return float((F.normalize(model.prototypes, dim=-1) - text).norm(dim=-1).mean())

    assert drift(clap) < drift(zs_lp)
    assert drift(zs_lp) > 0.05  # the unconstrained probe did move
