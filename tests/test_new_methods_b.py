"""CoCoOp, GDA and cross-modal linear probing (issue 18): the identities that pin each to its official code."""

import dataclasses
import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from bench.methods import method_registry
from bench.methods.cocoop import (
    Cocoop,
    CocoopClassifier,
    conditioned_text_features,
    make_meta_net,
    rows_per_chunk,
)
from bench.methods.coop import (
    CoopConfig,
    PromptClassifier,
    build_prompt_learner,
    encode_prompt_embeddings,
    final_text_features,
    init_context,
    text_tower,
)
from bench.methods.cross_modal_lp import CrossModalLp, loader_batches, lr_factor, valid_batch_sizes
from bench.methods.gda import ALPHA_GRID, Gda
from tests.toy import clip_scaled_backbone, clustered_data, toy_context

NAMES = ("red stripes", "blue dots", "class 0", "a much longer class name here", "zebra")


@pytest.fixture(scope="module")
def backbone():
    return clip_scaled_backbone()


def _learner(backbone, names=NAMES, seed=0):
    """A CoCoOp/CoOp learner whose context is "a photo of a" moved off the phrase (a trained-looking context)."""
    vectors, text = init_context(backbone, CoopConfig(ctx_init="a photo of a"), len(names), torch.Generator())
    vectors = vectors + 0.05 * torch.randn(vectors.shape, generator=torch.Generator().manual_seed(seed))
    return build_prompt_learner(backbone, names, vectors, text, "end").requires_grad_(False), text


# --- CoCoOp ---------------------------------------------------------------------------------------------


def test_cocoop_with_a_zeroed_meta_net_is_coop_with_the_same_context(backbone):
    learner, text = _learner(backbone)
    meta_net = make_meta_net(64, 64, 16, seed=3)
    with torch.no_grad():
        meta_net[2].weight.zero_()
        meta_net[2].bias.zero_()
    cocoop = CocoopClassifier(learner, meta_net, 100.0, backbone, text, memory_mb=1024)
    coop = PromptClassifier(learner.text_features(text_tower(backbone.model), truncate=True), 100.0)
    features = torch.randn(40, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = cocoop(features), coop(features)
        untruncated = PromptClassifier(final_text_features(learner, toy_context(backbone)), 100.0)(features)
    torch.testing.assert_close(ours, theirs)  # the same prompts: float rounding of the product order only
    torch.testing.assert_close(
        ours, untruncated, rtol=1e-5, atol=1e-4
    )  # CoOp's returned classifier (77 positions)
    assert torch.equal(ours.argmax(1), theirs.argmax(1))
    with torch.no_grad():  # and a live meta-net really conditions the prompts
        meta_net[2].bias.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
        assert not torch.allclose(cocoop(features), theirs, atol=1e-2)


def _per_image_loop(tower, learner, bias):
    """The official ``PromptLearner.forward`` + ``TextEncoder`` loop: one pass of C prompts per image."""
    out = []
    for b in bias:
        ctx = (learner.ctx + b).expand(len(learner.prefix), -1, -1)
        length = int(learner.eot.max()) + 1
        prompts = torch.cat([learner.prefix, ctx, learner.suffix[:, : length - 1 - learner.n_ctx]], dim=1)
        out.append(encode_prompt_embeddings(tower, prompts, learner.eot))
    return torch.stack(out)


@pytest.mark.parametrize("rows", [1, 7, 15, 1000])
def test_batched_chunked_text_pass_equals_the_per_image_loop(backbone, rows):
    learner, _ = _learner(backbone)
    tower = text_tower(backbone.model)
    bias = 0.1 * torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        batched = conditioned_text_features(tower, learner, bias, rows).view(3, len(NAMES), -1)
        torch.testing.assert_close(batched, _per_image_loop(tower, learner, bias))


def test_checkpointed_chunks_give_the_unchunked_gradient(backbone):
    learner, _ = _learner(backbone)
    learner.ctx.requires_grad_(True)
    tower = text_tower(backbone.model)
    bias = (0.1 * torch.randn(3, 64, generator=torch.Generator().manual_seed(0))).requires_grad_(True)
    grads = []
    for rows, use_checkpoint in ((1000, False), (4, True)):
        learner.ctx.grad, bias.grad = None, None
        conditioned_text_features(tower, learner, bias, rows, use_checkpoint=use_checkpoint).pow(
            2
        ).sum().backward()
        grads.append((learner.ctx.grad.clone(), bias.grad.clone()))
    for full, chunked in zip(
        *grads, strict=True
    ):  # chunks sum their gradients in another order: rounding only
        torch.testing.assert_close(chunked, full, rtol=1e-4, atol=1e-5 * float(full.abs().max()))


def test_chunk_size_follows_the_memory_budget(backbone):
    tower = text_tower(backbone.model)
    assert rows_per_chunk(tower, 20, 1) < rows_per_chunk(tower, 20, 64) < rows_per_chunk(tower, 10, 64)
    assert rows_per_chunk(tower, 77, 1) >= 1
    learner, text = _learner(backbone)
    meta_net = make_meta_net(64, 64, 16, seed=3)
    features = torch.randn(30, 64, generator=torch.Generator().manual_seed(1))
    small, large = (
        CocoopClassifier(learner, meta_net, 100.0, backbone, text, memory_mb=m) for m in (1, 4096)
    )
    assert rows_per_chunk(tower, int(learner.eot.max()) + 1, 1) < 30 * len(
        NAMES
    )  # the small budget really chunks
    with torch.no_grad():
        torch.testing.assert_close(small(features), large(features))


def test_cocoop_defaults_are_the_official_c4_ctxv1_config():
    cfg = Cocoop().default_config("imagenet", 16)
    assert (
        cfg.n_ctx,
        cfg.ctx_init,
        cfg.epochs,
        cfg.batch_size,
        cfg.lr,
        cfg.weight_decay,
        cfg.meta_reduction,
    ) == (4, "a photo of a", 10, 1, 0.002, 5e-4, 16)


def test_cocoop_trains_context_and_meta_net_only(backbone):
    data = clustered_data(NAMES, 2, 2)
    cfg = dataclasses.replace(Cocoop().default_config("toy", 2), epochs=2)
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    classifier = Cocoop().fit(data, cfg, toy_context(backbone))
    assert all(torch.equal(before[k], v) for k, v in backbone.model.state_dict().items())
    initial = make_meta_net(64, 64, 16, seed=0)  # any init: the trained one moved away from its own
    assert classifier.meta_net[2].weight.shape == initial[2].weight.shape == (64, 4)
    phrase, _ = init_context(backbone, CoopConfig(ctx_init="a photo of a"), len(NAMES), torch.Generator())
    assert not torch.equal(classifier.learner.ctx, phrase)


# --- GDA ------------------------------------------------------------------------------------------------


def _numpy_gda(data, text, alpha, covariance="shrinkage"):
    """The discriminant of mrflogs/ICLR24 main_few_shots.py (main_base2new.py for "empirical"), in numpy/scipy."""
    views = data.train.features.numpy().astype(np.float64)
    x = views.reshape(-1, views.shape[-1])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.tile(data.train.labels.numpy(), views.shape[0])
    n_classes, dim = len(data.classnames), x.shape[1]
    mus = np.stack([x[y == c].mean(0) for c in range(n_classes)])
    if covariance == "shrinkage":
        centred = x - mus[y]
        cov = np.cov(centred, rowvar=False)
        precision = dim * scipy.linalg.pinv((len(x) - 1) * cov + np.trace(cov) * np.eye(dim))
    else:
        precision = scipy.linalg.pinv(
            np.mean([np.cov(x[y == c], rowvar=False) for c in range(n_classes)], axis=0)
        )
    weight = mus @ precision
    bias = np.log(1.0 / n_classes) - 0.5 * np.einsum("nd,dc,nc->n", mus, precision, mus)
    t = text.numpy().astype(np.float64)
    t /= np.linalg.norm(t, axis=-1, keepdims=True)
    zero_shot = t.mean(0)
    zero_shot /= np.linalg.norm(zero_shot, axis=1, keepdims=True)

    def logits(features):
        f = features.numpy().astype(np.float64)
        f /= np.linalg.norm(f, axis=1, keepdims=True)
        return 100.0 * f @ zero_shot.T + alpha * (f @ weight.T + bias)

    return logits


@pytest.mark.parametrize("covariance", ["shrinkage", "empirical"])
def test_gda_equals_a_direct_numpy_scipy_computation(backbone, covariance):
    data = clustered_data(NAMES, 4, 3, noise=0.8)
    ctx = toy_context(backbone)
    cfg = dataclasses.replace(Gda().default_config("toy", 4), alpha=0.5, covariance=covariance)
    classifier = Gda().fit(data, cfg, ctx)
    features = torch.randn(50, 64, generator=torch.Generator().manual_seed(3))
    expected = _numpy_gda(data, ctx.text_features(data.prompts["coop"], NAMES), 0.5, covariance)(features)
    with torch.no_grad():
        np.testing.assert_allclose(classifier(features).numpy(), expected, rtol=1e-4, atol=1e-3)


def test_gda_alpha_is_the_first_best_of_the_official_grid_on_val(backbone):
    data = clustered_data(NAMES, 4, 3, noise=1.5)
    ctx_records = {}
    ctx = dataclasses.replace(toy_context(backbone), record=ctx_records.__setitem__)
    classifier = Gda().fit(data, Gda().default_config("toy", 4), ctx)
    text = ctx.text_features(data.prompts["coop"], NAMES)
    scores = [
        float((np.argmax(_numpy_gda(data, text, a)(data.val.center), 1) == data.val.labels.numpy()).mean())
        for a in ALPHA_GRID
    ]
    assert classifier.alpha == ALPHA_GRID[int(np.argmax(scores))] == ctx_records["alpha"]
    np.testing.assert_allclose(list(ctx_records["alpha_val_accuracy"].values()), scores)


def test_gda_new_classes_come_from_text_and_the_nearest_support_samples(backbone):
    data = clustered_data(NAMES, 4, 3)
    ctx = toy_context(backbone)
    classifier = Gda().fit(data, dataclasses.replace(Gda().default_config("toy", 4), alpha=1.0), ctx)
    new = classifier.for_classes(("cat", "dog"), ctx)
    samples = classifier.samples.double().numpy()
    text = F.normalize(ctx.text_features(data.prompts["coop"], ("cat", "dog"))[0].double(), dim=-1).numpy()
    k, dim = min(64, len(samples)), samples.shape[1]
    mus, precisions = [], []
    for t in text:  # main_base2new.py, restated
        nb = samples[np.argsort(-(samples @ t), kind="stable")[:k]]
        mus.append(np.concatenate([nb, np.repeat(t[None], 16, 0)]).mean(0))
        cov = (nb - t).T @ (nb - t) / (k - 1)
        precisions.append(dim * scipy.linalg.pinv((k - 1) * cov + np.trace(cov) * np.eye(dim)))
    mus, precision = np.stack(mus), np.mean(precisions, 0)
    np.testing.assert_allclose(new.weight.numpy(), mus @ precision, rtol=1e-4, atol=1e-4)
    assert new.for_classes(NAMES, ctx) is classifier


# --- cross-modal linear probing ------------------------------------------------------------------------


def test_cross_modal_probe_without_text_samples_is_the_plain_probe(backbone):
    """text_samples=False at fixed settings ≡ an nn.Linear probe on normalised image features trained with
    torch.optim.AdamW under the official warm-up + cosine schedule, keeping the best val iteration."""
    data = clustered_data(NAMES, 6, 1, noise=1.2)
    ctx = toy_context(backbone)
    cfg = dataclasses.replace(
        CrossModalLp().default_config("toy", 6),
        text_samples=False,
        lr=1e-3,
        weight_decay=1e-2,
        batch_size=8,
        iters=240,
        warmup_iters=20,
        eval_every=30,
    )
    classifier = CrossModalLp().fit(data, cfg, ctx)

    from bench.seeding import derive_seed, torch_generator

    text = ctx.text_features(data.prompts["coop"], NAMES)
    head = torch.nn.Linear(64, len(NAMES), bias=False)
    head.weight.data = F.normalize(text.mean(0), dim=-1).clone()
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-2, betas=(0.9, 0.999))
    x, y = F.normalize(data.train.center, dim=-1), data.train.labels
    xv, yv = F.normalize(data.val.center, dim=-1), data.val.labels
    batches = loader_batches(
        len(x), 8, cfg.iters, torch_generator(derive_seed(1, "cross_modal_lp", "batches", 1e-3, 1e-2, 8))
    )
    best = (-1.0, None)
    for step, index in enumerate(batches):
        factor = lr_factor(step, cfg)
        optimizer.param_groups[0]["lr"] = cfg.warmup_lr if factor is None else 1e-3 * factor
        loss = F.cross_entropy(100.0 * head(x[index]), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % cfg.eval_every == 0:
            acc = float((head(xv).argmax(1) == yv).double().mean())
            if acc > best[0]:
                best = (acc, head.weight.detach().clone())
    torch.testing.assert_close(classifier.weight, best[1], rtol=1e-4, atol=1e-5)
    with_text = CrossModalLp().fit(data, dataclasses.replace(cfg, text_samples=True), ctx)
    assert not torch.allclose(with_text.weight, classifier.weight)  # the text samples really enter


def test_cross_modal_schedule_and_batch_rules_are_the_official_ones():
    cfg = CrossModalLp().default_config("dtd", 16)
    assert (cfg.iters, cfg.warmup_iters, cfg.eval_every, cfg.init, cfg.text_samples) == (
        12800,
        50,
        100,
        "zeroshot",
        True,
    )
    assert lr_factor(0, cfg) is None and lr_factor(25, cfg) == 0.5 and lr_factor(50, cfg) == 1.0
    assert math.isclose(lr_factor(50 + 6400, cfg), 0.5)
    # train.py get_valid_batch_sizes: each half strictly smaller than its dataset
    assert valid_batch_sizes((8, 32), n_images=10, n_texts=5, text_samples=True) == [8]
    assert valid_batch_sizes((8, 32), n_images=10, n_texts=50, text_samples=True) == [8]
    assert valid_batch_sizes((8, 32), n_images=40, n_texts=50, text_samples=True) == [8, 32]
    assert valid_batch_sizes((8, 32), n_images=10, n_texts=0, text_samples=False) == [8]
    assert CrossModalLp().default_config("imagenet", 16).prompts == "coop_ensemble"


def test_cross_modal_grid_search_records_every_setting(backbone):
    data = clustered_data(NAMES, 6, 1)
    records = {}
    ctx = dataclasses.replace(toy_context(backbone), record=records.__setitem__)
    cfg = dataclasses.replace(CrossModalLp().default_config("toy", 6), iters=120)
    CrossModalLp().fit(data, cfg, ctx)
    settings = [(s["lr"], s["weight_decay"], s["batch_size"]) for s in records["search"]]
    assert settings == [
        (lr, wd, 8) for lr in (1e-3, 1e-4) for wd in (0.0, 1e-2, 1e-4)
    ]  # 5 text samples: no 32
    best = max(records["search"], key=lambda s: s["val_top1"])
    assert records["chosen"]["val_top1"] == best["val_top1"] and records["chosen"]["lr"] == best["lr"]


# --- through the runner ---------------------------------------------------------------------------------

NEW = ("cocoop", "gda", "cross_modal_lp")
SHORT = {"cocoop": (("epochs", 1),), "gda": (), "cross_modal_lp": (("iters", 60),)}


def test_new_methods_run_base_to_new_tune_on_val_and_report(run_options, capsys):
    """Through the runner: base2new (CoCoOp and GDA transfer to the new classes, the probe reports none),
    --tune val with two trials, then the report with --compare paper."""
    from bench.cli import main
    from bench.runner import Session, run_cells
    from bench.spec import expand_grid

    from .conftest import TINY

    session = Session(run_options)
    overrides = {name: SHORT[name] for name in NEW if SHORT[name]}
    grid = expand_grid(list(NEW), ["synthetic"], [2], [1], [TINY], overrides=overrides, protocol="base2new")
    grid += expand_grid(list(NEW), ["synthetic"], [2], [1], [TINY], overrides=overrides, tune="val", trials=2)
    summary = run_cells(grid, run_options, session)
    assert not summary.failed, summary.failed
    records = [json.loads(path.read_text()) for path in run_options.results_root.rglob("*.json")]
    records = [r for r in records if "spec" in r]
    assert sorted((r["spec"]["method"], r["spec"]["protocol"], r["spec"]["tune"]) for r in records) == sorted(
        [(m, "base2new", "none") for m in NEW] + [(m, "fewshot", "val") for m in NEW]
    )
    for record in records:
        assert record["status"] == "ok" and math.isfinite(record["metrics"]["top1"])
        if record["spec"]["protocol"] == "base2new":
            transferred = record["metrics"]["new_top1"] is not None
            assert transferred == (record["spec"]["method"] != "cross_modal_lp"), record["metrics"]
        else:
            assert record["tuning"]["trials"] == 2
            assert set(record["tuning"]["best_params"]) <= {
                "lr",
                "n_ctx",
                "alpha",
                "weight_decay",
                "batch_size",
            }
    capsys.readouterr()
    assert (
        main(
            [
                "report",
                "--results",
                str(run_options.results_root),
                "--format",
                "markdown",
                "--compare",
                "paper",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert all(name in out for name in NEW)


def test_new_methods_are_registered():
    assert set(NEW) <= set(method_registry().names())


def test_perf_times_cocoops_per_image_text_pass(backbone):
    from bench.tools.perf import COCOOP_TIMED_STEPS, cocoop_rows

    data = clustered_data(NAMES, 2, 1)
    rows = cocoop_rows(data, toy_context(backbone))
    assert [r.what for r in rows] == [
        f"cocoop: one training step (1 image x {len(NAMES)} prompts, forward + backward)",
        f"cocoop: scoring one test image ({len(NAMES)} prompts)",
    ]
    assert all(r.value > 0 and r.unit == "ms" for r in rows)
    assert f"{COCOOP_TIMED_STEPS} timed" in rows[0].note and "10 epochs x 10 steps" in rows[0].note
