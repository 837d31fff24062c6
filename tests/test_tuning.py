"""Tuning: honest val search, oracle labelling, resumable and shared studies, pruning, storage."""

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import torch.nn.functional as F

from bench.backbone import BackboneRef, load_backbone
from bench.errors import BenchError
from bench.features import FeatureCache
from bench.methods.base import FeatureSet, FewShotData, FitContext
from bench.methods.clip_adapter import ClipAdapter
from bench.registry import Registry
from bench.reports import render, results_frame
from bench.reports.params import params_frame, render_params
from bench.results import load_results
from bench.runner import Session, run_cells
from bench.spec import expand_grid
from bench.tuning import (
    FinalFitElsewhere,
    Objective,
    StudyRef,
    describe_storage,
    open_storage,
    run_study,
    storage_url,
    tune,
)

from .conftest import TINY
from .tuning_helpers import ToyMethod

REPO = Path(__file__).resolve().parent.parent
N_CLASSES = 5


def _ref(tmp_path, trials, *, name="cell", mode="val", storage=None) -> StudyRef:
    return StudyRef(
        name=name,
        storage=storage or f"sqlite:///{tmp_path / 'studies.sqlite3'}",
        mode=mode,
        trials=trials,
        seed=7,
    )


def _toy_data() -> FewShotData:
    one = FeatureSet(torch.zeros(1, 2, 4), torch.tensor([0, 1]))
    return FewShotData("toy", 4, ("a", "b"), {"coop": ("{}",)}, one, one)


def _toy_tune(method, tmp_path, trials, **kw):
    ctx = FitContext(backbone=None, device=torch.device("cpu"), seed=1, text_features=lambda t, c: None)
    objective = Objective("val", lambda classifier: classifier.x)
    return tune(
        method, _toy_data(), method.default_config("toy", 4), ctx, _ref(tmp_path, trials, **kw), objective
    )


@pytest.fixture(scope="module")
def adapter_task(tmp_path_factory):
    """Zero-shot is at chance (class means unrelated to the text embeddings) and the adapter can learn
    them, so the answer is known: a high residual ratio α beats the paper's 0.2."""
    backbone = load_backbone(BackboneRef.parse(TINY), torch.device("cpu"))
    backbone.model.logit_scale.data.fill_(math.log(100.0))
    cache = FeatureCache(tmp_path_factory.mktemp("text"))
    generator = torch.Generator().manual_seed(0)
    means = F.normalize(torch.randn(N_CLASSES, backbone.embed_dim, generator=generator), dim=-1) * 3

    def draw(per_class):
        labels = torch.arange(N_CLASSES).repeat_interleave(per_class)
        noise = 0.8 * torch.randn(1, len(labels), backbone.embed_dim, generator=generator)
        return FeatureSet(means[labels][None] + noise, labels)

    data = FewShotData(
        "toy",
        8,
        tuple(f"class {i}" for i in range(N_CLASSES)),
        {"coop": ("a photo of a {}.",)},
        draw(8),
        draw(4),
    )
    ctx = FitContext(
        backbone=backbone,
        device=torch.device("cpu"),
        seed=1,
        text_features=lambda templates, classnames: cache.text_features(backbone, classnames, templates),
    )
    return data, ctx


def test_val_study_finds_the_known_better_alpha(adapter_task, tmp_path):
    data, ctx = adapter_task
    method = ClipAdapter()
    config = dataclasses.replace(
        method.default_config("toy", 8), epochs=20, lr=0.05, batch_size=40, train_views=1
    )
    seen = []

    def on_val(classifier):
        seen.append(len(data.val.labels))
        with torch.no_grad():
            return float((classifier(data.val.center).argmax(1) == data.val.labels).double().mean())

    best, record = tune(method, data, config, ctx, _ref(tmp_path, 10), Objective("val", on_val))
    assert record["default_params"] == {"alpha": 0.2} and record["default_val_top1"] <= 0.4
    assert best.alpha == record["best_params"]["alpha"] > 0.5
    assert record["best_val_top1"] >= record["default_val_top1"] + 0.3
    assert record["mode"] == "val" and record["scored_on"] == "val" and record["trials"] == 10
    assert record["val_shots"] == 4 and record["search_space"]["alpha"]["name"] == "FloatDistribution"
    # every scored trial was scored on the val split, nothing else (pruned trials are never scored)
    assert set(seen) == {N_CLASSES * 4} and 1 <= len(seen) <= 10
    assert dataclasses.replace(best, alpha=config.alpha) == config  # only the searched field changed


def test_objective_must_match_the_mode(adapter_task, tmp_path):
    data, ctx = adapter_task
    method = ClipAdapter()
    with pytest.raises(ValueError, match="must be scored on 'val'"):
        tune(method, data, method.default_config("toy", 8), ctx, _ref(tmp_path, 2), Objective("test", float))


def test_rerun_resumes_the_study_and_runs_only_missing_trials(tmp_path):
    method = ToyMethod()
    _, first = _toy_tune(method, tmp_path, 4)
    assert len(method.fitted) == 4 and method.fitted[0] == 0.5  # the paper default is trial 0
    _, again = _toy_tune(method, tmp_path, 4)
    assert len(method.fitted) == 4 and again["best_params"] == first["best_params"]
    best, more = _toy_tune(method, tmp_path, 7)
    assert len(method.fitted) == 7 and more["trials"] == 7 and best.x == max(method.fitted)
    _, fewer = _toy_tune(method, tmp_path, 4)  # a smaller budget chooses among the first 4 trials only
    assert len(method.fitted) == 7 and fewer["best_params"] == first["best_params"]
    assert fewer["trials"] == 4 and fewer["study_trials"] == 7
    # trial n samples with a seed of its own: a resumed study equals one run in one go
    fresh = ToyMethod()
    _toy_tune(fresh, tmp_path, 7, storage=f"sqlite:///{tmp_path / 'other.sqlite3'}")
    assert fresh.fitted == method.fitted


def test_pruner_stops_bad_trials_after_warmup_and_they_count(tmp_path):
    method = ToyMethod()
    best, record = _toy_tune(method, tmp_path, 16)
    assert record["pruned"] >= 1 and record["complete"] + record["pruned"] == record["trials"] == 16
    assert record["pruner"]["n_warmup_steps"] == 5
    study = optuna.load_study(study_name="cell", storage=open_storage(_ref(tmp_path, 1).storage))
    for trial in study.get_trials(states=(optuna.trial.TrialState.PRUNED,)):
        assert max(trial.intermediate_values) >= 5  # never pruned while warming up
    assert best.x == max(t.params["x"] for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))


def test_only_the_worker_that_finishes_the_study_does_the_final_fit(tmp_path):
    ref = _ref(tmp_path, 3)
    run_study(
        dataclasses.replace(ref, trials=2), lambda trial: trial.suggest_float("x", 0, 1), default_params={}
    )
    other = []

    def slow_trial(trial):  # while this trial runs, another worker completes the study's third trial
        other.append(run_study(ref, lambda t: t.suggest_float("x", 0, 1), default_params={}))
        return trial.suggest_float("x", 0, 1)

    mine = run_study(ref, slow_trial, default_params={})
    assert other[0].ran == 1 and other[0].closed_here
    assert mine.ran == 1 and not mine.closed_here
    late = run_study(ref, lambda trial: 0.0, default_params={})  # a study already full: nothing to wait for
    assert late.ran == 0 and late.closed_here


def test_tune_defers_the_final_fit_to_the_worker_that_closed_the_study(tmp_path):
    method, interrupted = ToyMethod(), []
    _toy_tune(method, tmp_path, 2)
    fit = method.fit

    def fit_while_another_worker_closes(data, cfg, ctx):
        if not interrupted:
            interrupted.append(_toy_tune(ToyMethod(), tmp_path, 3))  # completes the third trial first
        return fit(data, cfg, ctx)

    method.fit = fit_while_another_worker_closes
    with pytest.raises(FinalFitElsewhere):
        _toy_tune(method, tmp_path, 3)
    assert interrupted[0][1]["trials"] == 3


def test_two_processes_fill_one_sqlite_study_without_losing_trials(tmp_path):
    url = (
        f"sqlite:///{tmp_path / 'shared.sqlite3'}"  # a new file: the processes also race to create the schema
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "tests.tuning_helpers", url, "24", "0.02"]
    workers = [
        subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outcomes = []
    for worker in workers:
        out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err
        outcomes.append(json.loads(out.strip().splitlines()[-1]))
    study = optuna.load_study(study_name="two-workers", storage=open_storage(url))
    finished = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    numbers = sorted(t.number for t in study.trials)
    assert numbers == list(range(len(numbers)))  # no lost or duplicated trial numbers
    assert (
        24 <= len(finished) == sum(o["ran"] for o in outcomes) <= 25
    )  # each worker overshoots by one at most
    assert all(o["ran"] > 0 for o in outcomes)  # both filled the same study
    assert len({t.user_attrs["worker"] for t in finished}) == 2
    assert any(o["closed_here"] for o in outcomes)


def test_storage_urls_and_errors(tmp_path):
    assert storage_url(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/studies.sqlite3"
    assert storage_url("journal:rel/studies.log", tmp_path) == f"journal:{Path.cwd() / 'rel/studies.log'}"
    assert (
        describe_storage("postgresql+psycopg2://bench:s3cret@db:5432/optuna")
        == "postgresql+psycopg2://bench:***@db:5432/optuna"
    )
    journal = open_storage(f"journal:{tmp_path / 'j' / 'studies.log'}")
    assert isinstance(journal, optuna.storages.JournalStorage)
    with pytest.raises(BenchError, match="--storage: cannot open the study storage 'nonsense://x'"):
        open_storage("nonsense://x")


def test_opening_a_new_database_retries_the_schema_race(tmp_path, monkeypatch):
    import sqlalchemy.exc

    real, calls = optuna.storages.RDBStorage, []

    def racing(url, **kwargs):  # the first attempt loses the race to create the schema
        calls.append(url)
        if len(calls) == 1:
            raise sqlalchemy.exc.IntegrityError(
                "INSERT INTO alembic_version", {}, Exception("UNIQUE constraint failed")
            )
        return real(url, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    assert isinstance(open_storage(f"sqlite:///{tmp_path / 'race.sqlite3'}"), real) and len(calls) == 2


def _grid(tune, trials, method="clip_adapter", **kw):
    overrides = {method: (("epochs", 4),)} if method == "clip_adapter" else {}
    return expand_grid(
        [method], ["synthetic"], [2], [1], [TINY], tune=tune, trials=trials, overrides=overrides, **kw
    )


@pytest.fixture
def spy_session(run_options):
    from tests import tuning_helpers

    tuning_helpers.SpyAdapter.fits.clear()
    methods = Registry(
        "method",
        {"clip_adapter": "tests.tuning_helpers:SpyAdapter", "zero_shot": "bench.methods.zero_shot:ZeroShot"},
        plugins=[],
    )
    session = Session(run_options, methods=methods)
    original, events = session.cache.image_features, []

    def spy(key, *args, **kwargs):
        events.append((key.split, len(tuning_helpers.SpyAdapter.fits)))
        return original(key, *args, **kwargs)

    session.cache.image_features = spy
    return session, events, tuning_helpers.SpyAdapter.fits


def test_runner_tunes_on_val_then_fits_once_and_reads_test_last(spy_session, run_options):
    session, events, fits = spy_session
    summary = run_cells(_grid("val", 3), run_options, session)
    assert len(summary.ran) == 1 and not summary.failed
    assert len(fits) == 4  # 3 trials + the final fit
    assert [split for split, n_fits in events if split == "test"] == ["test"]
    assert [n_fits for split, n_fits in events if split == "test"] == [4]  # test read after every fit
    (record,) = load_results(run_options.results_root)
    tuning = record.tuning
    assert tuning["mode"] == "val" and tuning["scored_on"] == "val" and tuning["trials"] == 3
    assert record.config["alpha"] == tuning["best_params"]["alpha"] == fits[-1]
    assert record.metrics.val_top1 == pytest.approx(tuning["best_val_top1"])  # the refit is the best trial
    assert tuning["storage"] == f"sqlite:///{run_options.results_root.resolve()}/studies.sqlite3"
    assert tuning["study"].startswith(f"clip_adapter/synthetic/k2/s1/{TINY}/val/")
    assert record.timing_s.tune is not None
    # the same command again does nothing; a larger budget extends the study
    assert run_cells(_grid("val", 3), run_options, session).skipped == ["clip_adapter/synthetic/k2/s1"]
    run_cells(_grid("val", 5), run_options, session)
    assert len(fits) == 4 + 2 + 1
    study = optuna.load_study(study_name=tuning["study"], storage=open_storage(tuning["storage"]))
    assert len(study.trials) == 5


def test_oracle_is_scored_on_test_and_labelled_in_every_report(spy_session, run_options):
    session, events, fits = spy_session
    run_cells(_grid("oracle", 2), run_options, session)
    run_cells(_grid("val", 2), run_options, session)
    oracle = next(r for r in load_results(run_options.results_root) if r.spec.tune == "oracle")
    assert oracle.tuning.mode == "oracle" and oracle.tuning.scored_on == "test"
    assert oracle.tuning.best_test_top1 is not None and oracle.tuning.best_val_top1 is None
    assert (
        oracle.tuning.study
        != next(r for r in load_results(run_options.results_root) if r.spec.tune == "val").tuning.study
    )
    assert events[2][0] == "test" and events[2][1] == 0  # oracle: test features reach the objective

    accuracy = render(results_frame(load_results(run_options.results_root)), "markdown")
    sections = accuracy.split("## ")[1:]
    oracle_part = next(part for part in sections if part.startswith("bench-tiny/random · tuning: oracle"))
    honest_part = next(part for part in sections if part.startswith("bench-tiny/random · tuning: val"))
    assert (
        "tuning: oracle" in oracle_part
        and "ORACLE" in oracle_part
        and "CLIP-Adapter [epochs=4] (oracle)" in oracle_part
    )
    assert "tuning: val" in honest_part and "ORACLE" not in honest_part and "(oracle)" not in honest_part
    params = render_params(params_frame(load_results(run_options.results_root), ["alpha"]), "markdown")
    oracle_part, honest_part = params.split("## ")[1:3]
    assert "ORACLE" in oracle_part and "| clip_adapter[epochs=4] (oracle) | alpha " in oracle_part
    assert "ORACLE" not in honest_part and "| clip_adapter[epochs=4] | alpha   | 2 " in honest_part


def test_a_method_with_nothing_to_search_runs_at_its_defaults_in_a_tuned_grid(spy_session, run_options):
    session = spy_session[0]
    summary = run_cells(_grid("val", 3, method="zero_shot"), run_options, session)
    assert len(summary.ran) == 1 and not summary.failed
    (record,) = load_results(run_options.results_root)
    assert record.spec.tune == "val" and record.spec.trials == 0
    assert {k: v for k, v in record.tuning.to_json().items() if v is not None} == {
        "mode": "val",
        "searched": False,
        "trials": 0,
        "note": "zero_shot declares no search space: fitted at its defaults, nothing chosen on val",
    }
    assert not (run_options.results_root / "studies.sqlite3").exists()  # no study for it
    # another trial budget finds the same record: nothing was searched
    assert run_cells(_grid("val", 7, method="zero_shot"), run_options, session).skipped == [
        "zero_shot/synthetic/k2/s1"
    ]


def test_oracle_base_to_new_trials_are_scored_as_the_record_scores(spy_session, run_options):
    """base2new: an oracle trial's score is the record's metrics.top1 (base classes), not a top-1 over
    every test image with the new classes counted wrong."""
    session = spy_session[0]
    run_cells(_grid("oracle", 2, protocol="base2new"), run_options, session)
    (record,) = load_results(run_options.results_root)
    assert record.metrics.top1 == record.metrics.base_top1
    assert record.tuning.best_test_top1 == pytest.approx(record.metrics.top1)  # the refit is the best trial


def test_bad_tuning_requests_fail_before_any_work(spy_session, run_options):
    session = spy_session[0]
    with pytest.raises(BenchError, match="--trials: --tune val needs a trial budget"):
        run_cells(_grid("val", 0), run_options, session)
    with pytest.raises(BenchError, match="--trials: --trials 5 has no effect without --tune"):
        run_cells(_grid("none", 5), run_options, session)
    bad = dataclasses.replace(run_options, storage="nonsense://x")
    with pytest.raises(BenchError, match="--storage"):
        run_cells(_grid("val", 2), bad, Session(bad, methods=session.methods))
    assert not list(run_options.results_root.rglob("*.json"))


def test_untuned_run_ids_do_not_change():
    spec = expand_grid(["clip_adapter"], ["synthetic"], [1], [1], [TINY])[0]
    identity = {
        "method_version": "1",
        "dataset_version": "1",
        "backbone_identity": "b",
        "split_protocol": "dassl",
    }
    assert spec.run_id(**identity) == spec.run_id(**identity, tuning_protocol=None)
    tuned = dataclasses.replace(spec, tune="val", trials=20)
    assert tuned.run_id(**identity) != tuned.run_id(**identity, tuning_protocol="x")


def test_cli_tunes_into_a_journal_and_reports_the_chosen_alpha(tmp_path, data_root, capsys):
    from bench.cli import main

    journal, results = tmp_path / "shared" / "studies.log", tmp_path / "results"
    args = [
        "run",
        "--data-root",
        str(data_root),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--results",
        str(results),
        "--device",
        "cpu",
        "--no-progress",
        "--methods",
        "clip_adapter",
        "--shots",
        "1",
        "--seeds",
        "1,2",
        "--tune",
        "val",
        "--trials",
        "2",
        "--set",
        "clip_adapter.epochs=2",
        "--storage",
        f"journal:{journal}",
    ]
    assert main(args) == 0
    assert "2 cells run" in capsys.readouterr().out and journal.is_file()
    assert {r.tuning.storage for r in load_results(results)} == {f"journal:{journal.resolve()}"}
    assert main(["report", "--results", str(results), "--params", "alpha", "--format", "json"]) == 0
    (cell,) = json.loads(capsys.readouterr().out)["params"]
    assert (
        cell["param"] == "alpha" and cell["tune"] == "val" and cell["trials"] == 2 and cell["seeds"] == [1, 2]
    )
    assert cell["min"] <= cell["median"] <= cell["max"]
    assert main(["report", "--results", str(results), "--params", "beta"]) == 2
    assert "--params: no tuned result records chose these parameters" in capsys.readouterr().err
    assert main(args[:-1] + ["nonsense://x"]) == 2
    assert "--storage: cannot open the study storage" in capsys.readouterr().err
