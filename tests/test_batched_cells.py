"""Batched cells (issue 22): the seeds of a CLIP-Adapter or CoOp cell trained as one stacked model give each
cell's one-at-a-time result, to float rounding (parameters within 1e-6), with the same predictions."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bench.methods.clip_adapter import ClipAdapter, fit_many
from tests.toy import clip_scaled_backbone, clustered_data, toy_context

NAMES = tuple(f"class {i}" for i in range(5))


@pytest.fixture(scope="module")
def backbone():
    return clip_scaled_backbone()


@pytest.mark.parametrize("branch", ["visual", "both"])
def test_stacked_seeds_equal_sequential_cells(backbone, branch):
    seeds = (1, 2, 3)
    data = [clustered_data(NAMES, 8, 4, noise=0.8, seed=s) for s in seeds]  # each seed its own support draw
    cfg = dataclasses.replace(ClipAdapter().default_config("toy", 8), epochs=12, branch=branch)
    records = [{} for _ in seeds]
    sequential = []
    for d, s, r in zip(data, seeds, records, strict=True):
        ctx = dataclasses.replace(toy_context(backbone, seed=s), record=r.__setitem__)
        sequential.append(ClipAdapter().fit(d, cfg, ctx))
    batched_records = [{} for _ in seeds]
    ctxs = [
        dataclasses.replace(toy_context(backbone, seed=s), record=r.__setitem__)
        for s, r in zip(seeds, batched_records, strict=True)
    ]
    batched = fit_many(data, cfg, ctxs)
    test = torch.randn(300, data[0].train.features.shape[-1], generator=torch.Generator().manual_seed(0)) * 2
    for ours, ref, r, rb in zip(batched, sequential, records, batched_records, strict=True):
        for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        logits, ref_logits = ours(test), ref(test)
        torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-5)
        assert torch.equal(logits.argmax(1), ref_logits.argmax(1))
        assert rb["train_loss_first_last"] == pytest.approx(r["train_loss_first_last"], abs=1e-6)
    assert not torch.equal(
        batched[0].visual.fc[0].weight, batched[1].visual.fc[0].weight
    )  # cells stay separate


def test_cells_that_cannot_share_steps_fall_back_to_one_fit_each(backbone):
    data = [clustered_data(NAMES, 8, 4, seed=1), clustered_data(NAMES, 4, 4, seed=2)]  # other support sizes
    cfg = dataclasses.replace(ClipAdapter().default_config("toy", 8), epochs=2)
    recorded = [{}, {}]
    ctxs = [
        dataclasses.replace(toy_context(backbone, seed=s), record=recorded[s - 1].__setitem__) for s in (1, 2)
    ]
    out = fit_many(data, cfg, ctxs)
    ref = ClipAdapter().fit(data[1], cfg, ctxs[1])
    assert torch.equal(out[1].visual.fc[0].weight, ref.visual.fc[0].weight)
    assert [r.get("stacked_fit") for r in recorded] == [False, False]  # each record says it was not stacked


@pytest.mark.parametrize("position", ["end", "middle"])
def test_stacked_coop_seeds_equal_sequential_cells(backbone, position):
    from bench.methods.coop import Coop
    from bench.methods.coop import fit_many as coop_fit_many

    seeds = (1, 2, 3)
    data = [clustered_data(NAMES, 8, 4, noise=0.8, seed=s) for s in seeds]
    cfg = dataclasses.replace(
        Coop().default_config("toy", 8), epochs=3, n_ctx=4, class_token_position=position
    )
    records, batched_records = [{} for _ in seeds], [{} for _ in seeds]
    sequential = [
        Coop().fit(d, cfg, dataclasses.replace(toy_context(backbone, seed=s), record=r.__setitem__))
        for d, s, r in zip(data, seeds, records, strict=True)
    ]
    batched = coop_fit_many(
        data,
        cfg,
        [
            dataclasses.replace(toy_context(backbone, seed=s), record=r.__setitem__)
            for s, r in zip(seeds, batched_records, strict=True)
        ],
    )
    test = torch.randn(300, data[0].train.features.shape[-1], generator=torch.Generator().manual_seed(0)) * 2
    for ours, ref, r, rb in zip(batched, sequential, records, batched_records, strict=True):
        torch.testing.assert_close(ours.ctx, ref.ctx, rtol=0, atol=1e-6)
        torch.testing.assert_close(ours.weights, ref.weights, rtol=0, atol=1e-6)
        assert torch.equal(ours(test).argmax(1), ref(test).argmax(1))
        assert rb["train_loss_first_last"] == pytest.approx(
            r["train_loss_first_last"], rel=1e-5
        )  # float32 epoch means
        assert rb["prompt"] == r["prompt"] and rb["n_ctx"] == r["n_ctx"]
