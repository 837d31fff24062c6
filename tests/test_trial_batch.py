"""``bench run --trial-batch N``: the trials of a tuned cell asked for N at a time and trained as one stacked
model give each trial the score its own fit gives (within 1e-6, the same predictions); N = 1 is today's study;
the record and the run id say N; a method without ``fit_trials`` runs one trial at a time."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import optuna
import pytest
import torch

from bench.methods.base import FitContext
from bench.methods.clip_adapter import ClipAdapter
from bench.methods.coop import Coop
from bench.registry import Registry
from bench.results import load_results
from bench.runner import Session, plan_cells, run_cells
from bench.spec import expand_grid
from bench.tuning import (
    TUNING_PROTOCOL,
    Objective,
    StudyRef,
    open_storage,
    trial_batch_for,
    tune,
    tuning_protocol,
)
from tests.toy import clip_scaled_backbone, clustered_data, toy_context

from .conftest import TINY
from .test_tuning import _toy_data
from .tuning_helpers import SpyAdapter, ToyClassifier, ToyMethod

NAMES = tuple(f"class {i}" for i in range(5))
PARAMS = [{"alpha": a} for a in (0.2, 0.9, 0.05, 0.6, 0.35)]  # 5 trials: the pruner never starts (5 complete)


@pytest.fixture(scope="module")
def task():
    backbone = clip_scaled_backbone()
    data = clustered_data(NAMES, 8, 4, noise=0.8, seed=3)
    return data, toy_context(backbone, seed=1)


class CountingAdapter(ClipAdapter):
    """CLIP-Adapter that counts its stacked trial fits (fit itself is not overridden: the hook stays on)."""

    def __init__(self):
        self.stacked: list[int] = []

    def fit_trials(self, data, cfgs, ctxs):
        self.stacked.append(len(cfgs))
        return super().fit_trials(data, cfgs, ctxs)


def _val_score(data):
    def score(classifier) -> float:
        with torch.no_grad():
            return float((classifier(data.val.center).argmax(1) == data.val.labels).double().mean())

    return score


@pytest.mark.parametrize("branch", ["visual", "both"])
def test_stacked_trials_equal_their_own_fits(task, branch):
    data, ctx = task
    base = dataclasses.replace(ClipAdapter().default_config("toy", 8), epochs=12, branch=branch)
    cfgs = [  # every scalar a member may have of its own: α, β, lr, weight decay
        dataclasses.replace(base, alpha=0.2),
        dataclasses.replace(base, alpha=0.8, beta=0.5, lr=0.01),
        dataclasses.replace(base, alpha=0.5, beta=0.1, weight_decay=0.0),
    ]
    records, batched_records = [{} for _ in cfgs], [{} for _ in cfgs]
    reports, batched_reports = [[] for _ in cfgs], [[] for _ in cfgs]

    def member_ctx(record, reported):
        return dataclasses.replace(
            ctx, record=record.__setitem__, report=lambda step, value: reported.append((step, value))
        )

    sequential = [
        ClipAdapter().fit(data, c, member_ctx(r, rep))
        for c, r, rep in zip(cfgs, records, reports, strict=True)
    ]
    batched = ClipAdapter().fit_trials(
        data, cfgs, [member_ctx(r, rep) for r, rep in zip(batched_records, batched_reports, strict=True)]
    )
    test = torch.randn(300, data.train.features.shape[-1], generator=torch.Generator().manual_seed(0)) * 2
    for ours, ref, r, rb, rep, repb in zip(
        batched, sequential, records, batched_records, reports, batched_reports, strict=True
    ):
        assert (ours.alpha, ours.beta) == (ref.alpha, ref.beta)
        for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        assert torch.equal(ours(test).argmax(1), ref(test).argmax(1))
        assert rb["train_loss_first_last"] == pytest.approx(r["train_loss_first_last"], abs=1e-6)
        assert [s for s, _ in repb] == [s for s, _ in rep] == [10, 12]  # the pruner's steps, as fit's
        assert [v for _, v in repb] == pytest.approx([v for _, v in rep], abs=1e-6)


def test_configs_that_change_more_than_scalars_are_not_stacked(task):
    data, ctx = task
    base = dataclasses.replace(ClipAdapter().default_config("toy", 8), epochs=2)
    assert ClipAdapter().fit_trials(data, [base, dataclasses.replace(base, epochs=3)], [ctx, ctx]) is None
    assert ClipAdapter().fit_trials(data, [base, dataclasses.replace(base, reduction=2)], [ctx, ctx]) is None
    live = dataclasses.replace(base, augment="live")
    assert ClipAdapter().fit_trials(data, [live, live], [ctx, ctx]) is None
    assert SpyAdapter().fit_trials(data, [base, base], [ctx, ctx]) is None  # fit overridden


def _tune_fixed(method, data, ctx, tmp_path, trial_batch: int, name: str):
    """Tune over the enqueued PARAMS (the same trials whatever the batch), scored on val."""
    storage = f"sqlite:///{tmp_path / 'studies.sqlite3'}"
    study = optuna.create_study(study_name=name, storage=open_storage(storage), direction="maximize")
    for params in PARAMS:
        study.enqueue_trial(params)
    ref = StudyRef(
        name=name, storage=storage, mode="val", trials=len(PARAMS), seed=7, trial_batch=trial_batch
    )
    config = dataclasses.replace(method.default_config("toy", 8), epochs=12, lr=0.05)
    best, record = tune(method, data, config, ctx, ref, Objective("val", _val_score(data)))
    trials = optuna.load_study(study_name=name, storage=open_storage(storage)).get_trials()
    return best, record, trials


def test_batched_trials_score_as_the_sequential_study(task, tmp_path):
    data, ctx = task
    one, four = CountingAdapter(), CountingAdapter()
    best1, record1, trials1 = _tune_fixed(one, data, ctx, tmp_path, 1, "batch-1")
    best4, record4, trials4 = _tune_fixed(four, data, ctx, tmp_path, 4, "batch-4")
    assert one.stacked == [] and four.stacked == [4]  # 5 trials: a stacked batch of 4, then one alone
    assert [t.params for t in trials4] == [t.params for t in trials1] == PARAMS
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials1 + trials4)
    for a, b in zip(trials4, trials1, strict=True):
        assert a.value == pytest.approx(b.value, abs=1e-6)
        assert a.intermediate_values.keys() == b.intermediate_values.keys() == {10, 12}
    assert best4 == best1
    assert record1["sampler"]["trial_batch"] == 1 and record4["sampler"]["trial_batch"] == 4
    assert record1["protocol"] == TUNING_PROTOCOL
    assert record4["protocol"] == tuning_protocol("val", 4) != TUNING_PROTOCOL
    assert {k: v for k, v in record4.items() if k not in ("sampler", "protocol", "study")} == {
        k: pytest.approx(v, abs=1e-6) if isinstance(v, float) else v
        for k, v in record1.items()
        if k not in ("sampler", "protocol", "study")
    }


class BatchedToy(ToyMethod):
    """ToyMethod with a stacked-trials hook (x is its only scalar); reports every epoch as fit does."""

    trial_scalars = ("x",)

    def __init__(self):
        super().__init__()
        self.batches: list[list[float]] = []

    def fit_trials(self, data, cfgs, ctxs):
        self.batches.append([c.x for c in cfgs])
        for epoch in range(cfgs[0].epochs):
            for c, ctx in zip(cfgs, ctxs, strict=True):
                ctx.report(epoch, c.x)
        return [ToyClassifier(c.x) for c in cfgs]


def _toy_study(method, tmp_path, trials, trial_batch, name):
    ctx = FitContext(backbone=None, device=torch.device("cpu"), seed=1, text_features=lambda t, c: None)
    storage = f"journal:{tmp_path / 'toy.journal'}"
    ref = StudyRef(name=name, storage=storage, mode="val", trials=trials, seed=7, trial_batch=trial_batch)
    best, record = tune(
        method, _toy_data(), method.default_config("toy", 4), ctx, ref, Objective("val", lambda c: c.x)
    )
    return record, optuna.load_study(study_name=name, storage=open_storage(storage)).get_trials()


def test_trial_batch_1_is_todays_study_and_a_method_without_the_hook_runs_one_at_a_time(tmp_path):
    today, hooked, plain = ToyMethod(), BatchedToy(), ToyMethod()
    _, reference = _toy_study(today, tmp_path, 12, 1, "today")
    _, with_hook = _toy_study(hooked, tmp_path, 12, 1, "hook-batch-1")
    assert hooked.batches == []  # batch 1: every trial its own fit
    assert [(t.params, t.state, t.value) for t in with_hook] == [
        (t.params, t.state, t.value) for t in reference
    ]
    assert trial_batch_for(plain, 8, None) == 1 and trial_batch_for(hooked, 8, None) == 8
    assert trial_batch_for(hooked, 1, None) == 1
    # a config whose trials can never stack (live augmentation, as --as-published sets) keeps batch 1: the
    # same run id and study as without the option, not a batch-N search that stacks nothing
    adapter = ClipAdapter()
    cached = adapter.default_config("dtd", 4)
    live = dataclasses.replace(cached, augment="live")
    assert trial_batch_for(adapter, 4, cached) == 4 and trial_batch_for(adapter, 4, live) == 1
    coop = Coop().default_config("dtd", 4)
    assert trial_batch_for(Coop(), 4, coop) == 4
    assert trial_batch_for(Coop(), 4, dataclasses.replace(coop, csc=True)) == 1
    record, without = _toy_study(plain, tmp_path, 12, 8, "no-hook")  # a ref that asks for 8 anyway
    assert len(plain.fitted) == 12 and [t.params for t in without] == [t.params for t in reference]


def test_batched_toy_study_fills_its_target_with_pruning(tmp_path):
    method = BatchedToy()
    record, trials = _toy_study(method, tmp_path, 12, 4, "batched")
    assert [len(b) for b in method.batches] == [4, 4, 4] and method.fitted == []
    assert record["trials"] == 12 == len(trials) and record["sampler"]["trial_batch"] == 4
    assert record["pruned"] + record["complete"] == 12 and record["pruned"] > 0  # the pruner still works
    assert record["default_params"] == {"x": 0.5} and trials[0].params == {"x": 0.5}


def _grid(**kw):
    return expand_grid(
        ["clip_adapter", "zero_shot"],
        ["synthetic"],
        [2],
        [1],
        [TINY],
        tune="val",
        trials=5,
        overrides={"clip_adapter": (("epochs", 4),)},
        **kw,
    )


def test_runner_records_the_trial_batch_and_keeps_batches_apart(run_options):
    methods = Registry(
        "method",
        {
            "clip_adapter": "bench.methods.clip_adapter:ClipAdapter",
            "zero_shot": "bench.methods.zero_shot:ZeroShot",
        },
        plugins=[],
    )
    batched = dataclasses.replace(run_options, trial_batch=4)
    one, four = Session(run_options, methods=methods), Session(batched, methods=methods)
    plan1, plan4 = plan_cells(_grid(), one), plan_cells(_grid(), four)
    assert plan1[0].run_id != plan4[0].run_id and plan1[0].study != plan4[0].study  # never resumed across
    assert plan1[1].run_id == plan4[1].run_id  # zero-shot searches nothing: unchanged
    assert run_cells(_grid(), run_options, one).ran  # batch 1 first ...
    summary = run_cells(_grid(), batched, four)  # ... then batch 4 runs its own cell and study
    assert summary.ran == ["clip_adapter/synthetic/k2/s1"] and summary.skipped == [
        "zero_shot/synthetic/k2/s1"
    ]
    records = {
        (r.spec.method, r.tuning["sampler"]["trial_batch"])
        for r in load_results(run_options.results_root)
        if r.spec.method == "clip_adapter"
    }
    assert records == {("clip_adapter", 1), ("clip_adapter", 4)}
    for r in load_results(run_options.results_root):
        if r.spec.method == "clip_adapter" and r.tuning["sampler"]["trial_batch"] == 4:
            assert r.tuning["trials"] == 5 and "ask-4" in r.tuning["protocol"]
            study = optuna.load_study(study_name=r.tuning["study"], storage=open_storage(r.tuning["storage"]))
            assert len(study.trials) == 5


def test_stacked_coop_trials_equal_their_own_fits(task):
    from bench.methods.coop import Coop

    data, ctx = task
    base = dataclasses.replace(Coop().default_config("toy", 8), epochs=10, n_ctx=4)
    cfgs = [dataclasses.replace(base, lr=lr) for lr in (0.002, 0.02, 0.0005)]  # the searched scalar
    reports, batched_reports = [[] for _ in cfgs], [[] for _ in cfgs]

    def member_ctx(reported):
        return dataclasses.replace(ctx, report=lambda step, value: reported.append((step, value)))

    sequential = [Coop().fit(data, c, member_ctx(rep)) for c, rep in zip(cfgs, reports, strict=True)]
    batched = Coop().fit_trials(data, cfgs, [member_ctx(rep) for rep in batched_reports])
    test = torch.randn(300, data.train.features.shape[-1], generator=torch.Generator().manual_seed(0)) * 2
    for ours, ref, rep, repb in zip(batched, sequential, reports, batched_reports, strict=True):
        # lr 0.02 grows the context to ~3: the stacked text tower's rounding is 1e-6 of that (as with three
        # equal lrs under torch's own SGD: the per-member step adds nothing)
        assert float((ours.ctx - ref.ctx).abs().max()) <= 1e-6 * max(1.0, float(ref.ctx.abs().max()))
        torch.testing.assert_close(ours.weights, ref.weights, rtol=0, atol=1e-6)
        assert torch.equal(ours(test).argmax(1), ref(test).argmax(1))
        assert [s for s, _ in repb] == [s for s, _ in rep] == [10]
        assert [v for _, v in repb] == pytest.approx([v for _, v in rep], abs=1e-6)
    assert not torch.equal(batched[0].ctx, batched[1].ctx)  # each member its own lr
    assert Coop().fit_trials(data, [base, dataclasses.replace(base, n_ctx=8)], [ctx, ctx]) is None


def test_coop_trials_are_stacked_by_context_length(task, tmp_path):
    from bench.methods.coop import Coop

    class CountingCoop(Coop):
        groups: ClassVar[list[tuple[int, ...]]] = []

        def fit_trials(self, data, cfgs, ctxs):
            CountingCoop.groups.append(tuple(c.n_ctx for c in cfgs))
            return super().fit_trials(data, cfgs, ctxs)

    data, ctx = task
    storage = f"journal:{tmp_path / 'coop.journal'}"
    ref = StudyRef(name="coop", storage=storage, mode="val", trials=8, seed=7, trial_batch=8)
    config = dataclasses.replace(Coop().default_config("toy", 8), epochs=2)
    _, record = tune(CountingCoop(), data, config, ctx, ref, Objective("val", _val_score(data)))
    trials = optuna.load_study(study_name="coop", storage=open_storage(storage)).get_trials()
    by_length: dict[int, int] = {}
    for t in trials:
        by_length[t.params["n_ctx"]] = by_length.get(t.params["n_ctx"], 0) + 1
    # one fit_trials call per context length drawn more than once, holding exactly those trials
    assert sorted(CountingCoop.groups) == sorted((n,) * k for n, k in by_length.items() if k > 1)
    assert record["complete"] == 8 and len({t.params["lr"] for t in trials}) == 8


def test_trial_batch_without_tune_is_refused(tmp_path, capsys):
    from bench.cli import main

    argv = ["run", "--methods", "clip_adapter", "--trial-batch", "4", "--results", str(tmp_path / "r")]
    assert main(argv) == 2
    assert "--trial-batch: --trial-batch 4 has no effect without --tune" in capsys.readouterr().err
