"""Tip-Adapter(-F): the cache model, the (β, α) search, val-based epoch selection, paper defaults."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from bench.methods.tip_adapter import (
    TIP_AUGMENT_SCALE,
    TipAdapter,
    TipAdapterConfig,
    TipAdapterF,
    search_ratios,
)
from bench.methods.training import cpu_threads_for
from bench.methods.zero_shot import ZeroShot
from tests.toy import clip_scaled_backbone, clustered_data, toy_context

NAMES = tuple(f"class {i}" for i in range(5))


@pytest.fixture(scope="module")
def ctx():
    return toy_context(clip_scaled_backbone())


@pytest.fixture(scope="module")
def data():
    return clustered_data(NAMES, 8, 10)


def test_defaults_are_the_official_per_dataset_configs():
    tip, tip_f = TipAdapter(), TipAdapterF()
    imagenet = tip.default_config("imagenet", 16)
    assert (imagenet.beta, imagenet.alpha, imagenet.scale_beta, imagenet.scale_alpha) == (1.0, 1.17, 7.0, 3.0)
    assert imagenet.prompts == "coop_ensemble" and tip.default_config("dtd", 1).prompts == "coop"
    flowers = tip_f.default_config("oxford_flowers", 4)
    assert (flowers.alpha, flowers.scale_beta, flowers.epochs) == (10.0, 50.0, 20)
    assert tip_f.default_config("eurosat", 16).epochs == 100
    assert (tip_f.default_config("dtd", 16).lr, tip_f.default_config("dtd", 16).batch_size) == (0.001, 256)
    assert tip.needs(imagenet).train_views == 10 and tip.needs(imagenet).augment_scale == TIP_AUGMENT_SCALE


def test_logits_are_zero_shot_plus_the_cache_term(data, ctx):
    cfg = dataclasses.replace(TipAdapter().default_config("toy", 8), search_hp=False, alpha=2.0, beta=5.0)
    model = TipAdapter().fit(data, cfg, ctx)
    keys = F.normalize(data.train.features.mean(0), dim=-1)  # mean of the views, then normalised
    torch.testing.assert_close(model.keys, keys)
    features = torch.randn(7, 64, generator=torch.Generator().manual_seed(3))
    normed = F.normalize(features, dim=-1)
    zero_shot = ZeroShot().fit(data, ZeroShot.Config(), ctx)
    expected = (
        zero_shot(features)
        + 2.0 * torch.exp(-5.0 * (1 - normed @ keys.t())) @ F.one_hot(data.train.labels).float()
    )
    with torch.no_grad():
        torch.testing.assert_close(model(features), expected)
        no_cache = TipAdapter().fit(data, dataclasses.replace(cfg, alpha=0.0), ctx)
        assert torch.equal(no_cache(features), zero_shot(features))  # α = 0 is zero-shot CLIP exactly


def test_ratio_search_matches_the_reference_loop(data):
    """Vectorised grid == Tip's nested loop (β outer, α inner, strictly better replaces)."""
    generator = torch.Generator().manual_seed(4)
    val, keys, weights = (F.normalize(torch.randn(n, 16, generator=generator), dim=-1) for n in (30, 40, 5))
    values, labels = F.one_hot(torch.arange(40) % 5).float(), torch.arange(30) % 5
    cfg = TipAdapterConfig(scale_beta=6.0, scale_alpha=4.0, search_steps_beta=25, search_steps_alpha=7)
    with cpu_threads_for(torch.device("cpu"), 0):
        best = _reference_search(val, labels, weights, keys, values, cfg)
    found = search_ratios(val, labels, weights, keys, values, cfg, 100.0)
    assert found == best


def _reference_search(val, labels, weights, keys, values, cfg):
    best = (0.0, 0.0, 0.0)
    for i in range(cfg.search_steps_beta):
        beta = i * (cfg.scale_beta - 0.1) / cfg.search_steps_beta + 0.1
        for j in range(cfg.search_steps_alpha):
            alpha = j * (cfg.scale_alpha - 0.1) / cfg.search_steps_alpha + 0.1
            logits = 100 * val @ weights.t() + alpha * torch.exp(-beta * (1 - val @ keys.t())) @ values
            score = float((logits.argmax(1) == labels).double().mean())
            if score > best[2]:
                best = (beta, alpha, score)
    return best


def test_search_is_on_val_and_recorded(data, ctx):
    records = {}
    TipAdapter().fit(
        data, TipAdapter().default_config("toy", 8), dataclasses.replace(ctx, record=records.__setitem__)
    )
    assert (
        0.1 <= records["alpha"] < 10 and 0.1 <= records["beta"] < 10 and 0 <= records["search_val_top1"] <= 1
    )


def test_finetuning_keeps_the_best_val_epoch(data, ctx):
    records, reported = {}, []
    cfg = dataclasses.replace(TipAdapterF().default_config("toy", 8), epochs=12, lr=0.01, batch_size=16)
    ctx = dataclasses.replace(
        ctx, record=records.__setitem__, report=lambda step, score: reported.append((step, score))
    )
    model = TipAdapterF().fit(data, cfg, ctx)
    history = records["val_top1_by_epoch"]
    assert len(history) == 12 and records["best_epoch"] == history.index(max(history)) + 1
    assert reported == list(enumerate(history, start=1))  # every epoch's val score goes to the pruner
    initial = F.normalize(data.train.features.mean(0), dim=-1)
    assert not torch.equal(model.keys, initial)  # the keys were trained


def test_the_runner_caches_tips_crop_scale_and_records_it(run_options):
    from bench.results import load_results
    from bench.runner import run_cells
    from bench.spec import expand_grid

    from .conftest import TINY

    specs = expand_grid(
        ["tip_adapter", "clip_adapter"],
        ["synthetic"],
        [1],
        [1],
        [TINY],
        overrides={"clip_adapter": (("epochs", 1),)},
    )
    assert not run_cells(specs, run_options).failed
    views = {r.spec.method: r.data.train_view for r in load_results(run_options.results_root)}
    assert views["tip_adapter"]["scale"] == [0.5, 1.0] and views["tip_adapter"]["n_views"] == 10
    assert views["clip_adapter"]["scale"] == [0.08, 1.0]  # Dassl's default, unchanged
    folders = {p.name.split("-")[1] for p in (run_options.cache_root / "features").rglob("train-aug10-*")}
    assert len(list((run_options.cache_root / "features").rglob("train-aug10-*"))) == 2 and folders == {
        "aug10"
    }
