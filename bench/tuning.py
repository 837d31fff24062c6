"""Hyperparameter search for one cell with Optuna: honest (few-shot val) or labelled oracle (test).

The runner calls :func:`tune` before the final fit when ``RunSpec.tune != "none"``. Each trial
fits the method on the support set with a config sampled from the method's
``search_space(trial, dataset, shots)`` and is scored by an :class:`Objective` the runner
builds: the few-shot val split for ``val``, the test split for ``oracle`` (the only path
by which test features reach model selection; every record it produces says so). Trials
reuse the cell's cached features, so a trial costs one fit.

One study per cell, named from the cell (:func:`study_name`), in a storage shared by every
worker (:func:`open_storage`): re-running a cell resumes its study and runs only the
missing trials; several processes running the same cells fill one study together, and only
the worker that finished the study's last trial does the final fit (the others get
:class:`FinalFitElsewhere`).

Trial batches (``bench run --trial-batch N``, :attr:`StudyRef.trial_batch`): for a method with a
``fit_trials`` hook the worker asks the study for N trials at once, trains them as one stacked model
(one ``fit_trials`` call per group of configs that differ only in the method's ``trial_scalars``; other
groups one fit each), scores each and tells each. The sampler then proposes N points before it sees any
of their scores, so a batch-N study is another search than a batch-1 one: N > 1 enters the tuning
protocol (:func:`tuning_protocol`), hence the run id and the study name, and the record's ``sampler``.
Pruning still applies, at the same steps, to each member, but a pruned member trains on with its batch
(the batch stops when every member is pruned). N = 1, and any method without the hook, run as below.

Determinism: trials run one at a time in a worker (or N at a time, above); trial *n* samples with
``derive_seed(cell seed, dataset, shots, method, backbone, mode, "tpe", n)``, every trial fits with the
cell's own seed (same init and batches: trials differ only in their parameters), the paper
default is trial 0, the choice is made among the first ``trials`` finished trials, and ties
go to the paper default, then to the earlier trial.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, distribution_to_json
from optuna.trial import FrozenTrial, TrialState

from bench.datasets.splits import val_shots
from bench.errors import BenchError, NonFiniteError
from bench.methods.base import FewShotData, FitContext
from bench.seeding import derive_seed

log = logging.getLogger(__name__)

# Part of the run id of every tuned cell: a change of sampler, pruner or selection rule bumps it.
# /2: the sampler's seed covers the backbone and the mode too (val and oracle, or two backbones, no longer
# draw the same start-up trials).
TUNING_PROTOCOL = "tpe-seed-per-trial+median-pruner-2nd-half+default-first+ties-to-default/2"
STUDIES_FILE = "studies.sqlite3"
TPE_STARTUP_TRIALS = 10  # random trials before TPE models the results (Optuna's default)
PRUNER_STARTUP_TRIALS = 5  # no pruning until this many trials are complete
SCORED_ON = {"val": "val", "oracle": "test"}
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class FinalFitElsewhere(Exception):
    """Another worker finished the last trial of this cell's study and does the final fit."""


@dataclass(frozen=True)
class Objective:
    """What a trial is scored on.

    Attributes:
        split: ``"val"`` (the few-shot val split) or ``"test"`` (oracle mode only).
        score: classifier -> top-1 accuracy on that split, a fraction in [0, 1].
    """

    split: str
    score: Callable[[Any], float]


@dataclass(frozen=True)
class StudyRef:
    """Where a cell's study lives and how much of it to fill.

    Attributes:
        name: the study name (:func:`study_name`). storage: a URL (:func:`storage_url`).
        mode: ``"val"`` or ``"oracle"``. trials: finished (complete + pruned) trials to reach.
        seed: the sampler's root seed, derived from the cell.
        trial_batch: trials asked for (and trained) at once (:func:`trial_batch_for`); 1: one at a time.
    """

    name: str
    storage: str
    mode: str
    trials: int
    seed: int
    trial_batch: int = 1


@dataclass(frozen=True)
class StudyOutcome:
    """A worker's view of a filled study: ``ran`` trials now; ``closed_here``: it does the final fit."""

    study: optuna.Study
    ran: int
    closed_here: bool


def tuning_protocol(mode: str, trial_batch: int = 1) -> str | None:
    """What goes into the run id for tuning: nothing for untuned cells (their ids do not change); a trial
    batch above 1 (another search: :func:`trial_batch_for`) is part of it, so such a cell never shares a
    record or a study (:func:`study_name` hashes the run id) with a one-at-a-time cell."""
    if mode == "none":
        return None
    return TUNING_PROTOCOL if trial_batch == 1 else f"{TUNING_PROTOCOL}+ask-{trial_batch}-then-tell"


def trial_batch_for(method: Any, requested: int, config: Any) -> int:
    """``--trial-batch``: the trials a cell of ``method`` with ``config`` asks for at once: ``requested`` where
    the method trains several trials of that config together (a ``fit_trials`` hook whose ``stacks_trials``
    accepts it, :mod:`bench.methods.base`), else 1: such a cell runs its study one trial at a time, exactly
    as without the option (the same run id and study), rather than a batch-N search that stacks nothing."""
    if requested <= 1 or not callable(getattr(method, "fit_trials", None)):
        return 1
    stacks = getattr(method, "stacks_trials", None)
    return requested if stacks is None or stacks(config) else 1


def check_tuning(spec: Any, method: Any) -> None:
    """Refuse, before any work, a cell whose tuning request cannot be honoured.

    Args:
        spec: a :class:`bench.spec.RunSpec`. method: the method instance.
    """
    if spec.tune == "none":
        if spec.trials:
            raise BenchError(
                f"--trials {spec.trials} has no effect without --tune",
                where="--trials",
                fix="add --tune val (or oracle), or drop --trials",
            )
        return
    if spec.trials < 1:
        raise BenchError(
            f"--tune {spec.tune} needs a trial budget", where="--trials", fix="pass e.g. --trials 20"
        )


def searchable(method: Any) -> bool:
    """Whether ``method`` declares a search space. One that does not (zero-shot, the linear probe with its
    own C search on val, validation-free CLAP) runs at its defaults in a tuned grid: it chooses nothing on
    the split being tuned on, so it belongs in that table as it is (:func:`untuned_record`)."""
    return callable(getattr(method, "search_space", None))


def untuned_record(mode: str, method_name: str) -> dict:
    """The tuning record of a cell in a ``val``/``oracle`` grid whose method has nothing to search."""
    return {
        "mode": mode,
        "searched": False,
        "scored_on": None,
        "trials": 0,
        "note": f"{method_name} declares no search space: fitted at its defaults, nothing chosen on "
        f"{SCORED_ON[mode]}",
    }


def study_name(spec: Any, identity: dict[str, str]) -> str:
    """``method/dataset/kK/sS/backbone/mode/<key>``: the key hashes the cell's run id without its trial
    budget, so ``--trials 40`` after ``--trials 20`` extends the same study, while another method version,
    checkpoint or ``--set`` override gets a fresh one.

    Args:
        spec: a :class:`bench.spec.RunSpec`. identity: the keyword arguments of ``RunSpec.run_id``.
    """
    key = dataclasses.replace(spec, trials=0).run_id(**identity)[:8]
    return f"{spec.method}/{spec.dataset}/k{spec.shots}/s{spec.seed}/{spec.backbone}/{spec.tune}/{key}"


def study_ref(spec: Any, name: str, storage: str, trial_batch: int = 1) -> StudyRef:
    """The :class:`StudyRef` of a tuned cell (``spec`` a :class:`bench.spec.RunSpec`)."""
    return StudyRef(
        name=name,
        storage=storage,
        mode=spec.tune,
        trials=spec.trials,
        seed=derive_seed(spec.seed, spec.dataset, spec.shots, spec.method, spec.backbone, spec.tune, "tpe"),
        trial_batch=trial_batch,
    )


def storage_url(storage: str | None, results_root: Path) -> str:
    """The study storage: ``None`` -> SQLite in the results folder; ``journal:PATH`` -> an absolute path;
    anything else is an Optuna RDB URL (``postgresql://...``, ``sqlite:///...``)."""
    if storage is None:
        return f"sqlite:///{(Path(results_root) / STUDIES_FILE).resolve()}"
    if storage.startswith("journal:"):
        return "journal:" + str(Path(storage[len("journal:") :]).expanduser().resolve())
    return storage


def describe_storage(url: str) -> str:
    """``url`` with any password masked: what goes into result records and messages."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


@functools.cache
def open_storage(url: str) -> optuna.storages.BaseStorage:
    """The Optuna storage behind ``url`` (one per process and URL); a bad URL is a :class:`BenchError`."""
    import sqlalchemy.exc

    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            path = Path(url[len("journal:") :])
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        return _rdb_storage(url)
    except (ImportError, ValueError, OSError, sqlalchemy.exc.SQLAlchemyError) as exc:
        fix = "pass an Optuna RDB URL (sqlite:///FILE, postgresql+psycopg://USER@HOST/DB) or journal:PATH"
        if isinstance(exc, ImportError) and url.startswith("postgresql"):
            fix = 'install the PostgreSQL driver: pip install "clip-fewshot-bench[postgres]" (psycopg 3)'
        raise BenchError(
            f"cannot open the study storage {describe_storage(url)!r}: {exc}", where="--storage", fix=fix
        ) from exc


def _rdb_storage(url: str, attempts: int = 5) -> optuna.storages.RDBStorage:
    """An RDB storage; SQLite waits up to 60 s for a lock. Opening is retried when processes that start
    together on a new database race to create its schema (a duplicate alembic version row, or a
    locked SQLite file); a second look finds the schema the winner created."""
    import sqlalchemy.exc

    engine_kwargs: dict[str, Any] = {}
    sqlite = url.startswith("sqlite:")
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 60}}
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError) as exc:
            locked = sqlite and isinstance(exc, sqlalchemy.exc.OperationalError)
            if attempt == attempts - 1 or not (locked or isinstance(exc, sqlalchemy.exc.IntegrityError)):
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def tune(
    method: Any, data: FewShotData, config: Any, ctx: FitContext, ref: StudyRef, objective: Objective
) -> tuple[Any, dict]:
    """Fill the cell's study and return (best config, tuning record).

    Args:
        method: the method instance (with ``search_space``). data: the cell's support + few-shot val.
        config: the resolved default config (paper defaults + ``--set``). ctx: the cell's fit context.
        ref: the study. objective: how a trial's classifier is scored; its split must match ``ref.mode``.

    Raises:
        FinalFitElsewhere: another worker closed the study and does the final fit.
    """
    if SCORED_ON.get(ref.mode) != objective.split:
        raise ValueError(
            f"tuning mode {ref.mode!r} must be scored on {SCORED_ON.get(ref.mode)!r}, not {objective.split!r}"
        )
    warmup = int(getattr(config, "epochs", 0) or 0) // 2
    with _quiet_optuna():
        defaults = _default_params(method, config, data.dataset, data.shots)
        batched = ref.trial_batch > 1 and callable(getattr(method, "fit_trials", None))
        outcome = run_study(
            ref,
            _trial_objective(method, data, config, ctx, objective),
            default_params=defaults,
            warmup_steps=warmup,
            step=ctx.progress_step,
            run_batch=_batch_objective(method, data, config, ctx, objective) if batched else None,
        )
    if not outcome.closed_here:
        raise FinalFitElsewhere(ref.name)
    finished = finished_trials(outcome.study)
    considered = finished[: ref.trials]  # a study extended by a larger budget: --trials N still means N
    best = best_trial(considered)
    overrides = method.search_space(optuna.trial.FixedTrial(best.params), data.dataset, data.shots, config)
    record = _record(ref, objective.split, considered, best, defaults, warmup)
    record.update(study_trials=len(finished), val_shots=val_shots(data.shots, data.val.labels.tolist()))
    return _apply(method, config, overrides), record


def run_study(
    ref: StudyRef,
    objective: Callable[[optuna.Trial], float],
    *,
    default_params: dict[str, Any],
    warmup_steps: int = 0,
    step: Callable[[int, int, str], None] | None = None,
    run_batch: Callable[[list[optuna.Trial]], list[float | optuna.TrialPruned]] | None = None,
) -> StudyOutcome:
    """Create or load the study and run trials one at a time until it holds ``ref.trials`` finished ones.

    With ``run_batch`` and ``ref.trial_batch`` N > 1, N trials (fewer for the last batch) are asked for
    at once and ``run_batch(trials)`` gives each its score or its :class:`optuna.TrialPruned`; they are
    told in order. A batch that raises leaves its untold trials failed (as ``optimize`` would).

    The paper default goes in first (``default_params``, when the study is new). Trials that
    other workers are running do not count, so a killed worker never blocks a study; workers
    that run concurrently may overshoot the target by one trial each (by up to a trial batch each,
    with ``--trial-batch``). ``step(finished, target, "trial")`` follows the study after each trial.
    """
    study = optuna.create_study(
        study_name=ref.name,
        storage=open_storage(ref.storage),
        direction="maximize",
        sampler=TrialSeededTPE(ref.seed),
        pruner=_pruner(warmup_steps),
        load_if_exists=True,
    )
    study.set_user_attr("scored_on", SCORED_ON[ref.mode])
    if default_params and not study.get_trials(deepcopy=False):
        study.enqueue_trial(default_params, user_attrs={"paper_default": True}, skip_if_exists=True)
    worker = f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"  # tags this call's trials

    def tagged(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", worker)
        return objective(trial)

    def counted(study: optuna.Study, trial: FrozenTrial) -> None:
        if step is not None:
            step(min(len(finished_trials(study)), ref.trials), ref.trials, "trial")

    ran = 0
    while len(finished_trials(study)) < ref.trials:
        if run_batch is None or ref.trial_batch <= 1:
            study.optimize(tagged, n_trials=1, callbacks=[counted])
            ran += 1
            continue
        trials = [study.ask() for _ in range(min(ref.trial_batch, ref.trials - len(finished_trials(study))))]
        for trial in trials:
            trial.set_user_attr("worker", worker)
        _tell_batch(study, trials, run_batch, counted)
        ran += len(trials)
    closer = finished_trials(study)[ref.trials - 1].user_attrs.get("worker")
    return StudyOutcome(study, ran, closed_here=ran == 0 or closer == worker)


def _tell_batch(
    study: optuna.Study,
    trials: list[optuna.Trial],
    run_batch: Callable[[list[optuna.Trial]], list[float | optuna.TrialPruned]],
    counted: Callable[[optuna.Study, FrozenTrial], None],
) -> None:
    told = 0
    try:
        outcomes = run_batch(trials)
        for trial, outcome in zip(trials, outcomes, strict=True):
            if isinstance(outcome, optuna.TrialPruned):
                frozen = study.tell(trial, state=TrialState.PRUNED)
            else:
                frozen = study.tell(trial, outcome)
            told += 1
            counted(study, frozen)
    finally:
        for trial in trials[told:]:
            with contextlib.suppress(Exception):  # already told, or the storage is gone
                study.tell(trial, state=TrialState.FAIL)


def finished_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Complete and pruned trials, in the order they finished."""
    trials = study.get_trials(deepcopy=False, states=FINISHED)
    return sorted(trials, key=lambda t: (t.datetime_complete, t.number))


def best_trial(trials: list[FrozenTrial]) -> FrozenTrial:
    """The highest-scoring complete trial; ties go to the paper default, then to the earlier trial."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        raise RuntimeError("no complete trial to choose from (every trial was pruned)")
    return max(complete, key=lambda t: (t.value, bool(t.user_attrs.get("paper_default")), -t.number))


class TrialSeededTPE(optuna.samplers.BaseSampler):
    """TPE whose random draws for trial *n* come from ``derive_seed(root_seed, n)``.

    One seed per study would make concurrent workers (each with its own copy of the generator)
    propose the same points in lockstep; trial numbers are unique in the storage, so seeding
    per trial keeps workers apart and makes a sequential study independent of where it was
    interrupted and resumed (between trials).
    """

    def __init__(self, root_seed: int, n_startup_trials: int = TPE_STARTUP_TRIALS):
        self.root_seed, self.n_startup_trials = root_seed, n_startup_trials
        self._by_trial: dict[int, optuna.samplers.TPESampler] = {}

    def _tpe(self, trial: FrozenTrial) -> optuna.samplers.TPESampler:
        if trial.number not in self._by_trial:
            seed = derive_seed(self.root_seed, trial.number) & 0xFFFFFFFF  # numpy seeds are 32-bit
            self._by_trial[trial.number] = optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=self.n_startup_trials
            )
        return self._by_trial[trial.number]

    def infer_relative_search_space(self, study, trial):
        return self._tpe(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._tpe(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._tpe(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial):
        self._tpe(trial).before_trial(study, trial)

    def after_trial(self, study, trial, state, values):
        sampler = self._tpe(trial)
        del self._by_trial[trial.number]  # a finished trial is never sampled again
        sampler.after_trial(study, trial, state, values)

    def describe(self) -> dict:
        return {
            "name": "TPESampler",
            "seed": "derive_seed(root_seed, trial.number)",
            "root_seed": self.root_seed,
            "n_startup_trials": self.n_startup_trials,
        }


def _pruner(warmup_steps: int) -> optuna.pruners.MedianPruner:
    # Intermediate scores are compared only over the second half of training: a high-α adapter starts
    # from a random projection and would lose every early comparison it later wins.
    return optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=warmup_steps)


def _trial_objective(
    method: Any, data: FewShotData, config: Any, ctx: FitContext, objective: Objective
) -> Callable[[optuna.Trial], float]:
    def run_trial(trial: optuna.Trial) -> float:
        trial_config = _apply(method, config, method.search_space(trial, data.dataset, data.shots, config))
        return _fit_one(method, data, trial_config, ctx, objective, trial)

    return run_trial


def _fit_one(
    method: Any, data: FewShotData, config: Any, ctx: FitContext, objective: Objective, trial: optuna.Trial
) -> float:
    """One trial's fit and score; it may raise :class:`optuna.TrialPruned`."""
    trial_ctx = dataclasses.replace(
        ctx, record=_ignore, progress=False, report=_pruning_report(trial), progress_step=None
    )  # the bar counts trials, not a trial's epochs
    try:
        return objective.score(method.fit(data, config, trial_ctx))
    except NonFiniteError as exc:  # a diverged trial is a bad point of the search, not a failed cell
        raise optuna.TrialPruned(str(exc)) from exc


class _AllPruned(Exception):
    """Every member of a stacked trial fit was pruned: the fit stops."""


def _batch_objective(
    method: Any, data: FewShotData, config: Any, ctx: FitContext, objective: Objective
) -> Callable[[list[optuna.Trial]], list[float | optuna.TrialPruned]]:
    """``run_batch`` of :func:`run_study`: the asked trials' configs, grouped where they differ only in the
    method's ``trial_scalars``; a group of several is one ``method.fit_trials`` call (one fit each where it
    returns None or a member diverges), a group of one is a plain fit."""
    scalars = tuple(getattr(method, "trial_scalars", ()))

    def one(trial: optuna.Trial, trial_config: Any) -> float | optuna.TrialPruned:
        try:
            return _fit_one(method, data, trial_config, ctx, objective, trial)
        except optuna.TrialPruned as exc:
            return exc

    def stacked(trials: list[optuna.Trial], configs: list[Any]) -> list[float | optuna.TrialPruned]:
        pruned: dict[int, optuna.TrialPruned] = {}

        def reporter(i: int) -> Callable[[int, float], None]:
            def report(step: int, val_accuracy: float) -> None:
                if i in pruned:
                    return  # trains on with its batch; its score no longer counts
                trials[i].report(val_accuracy, step)
                if trials[i].should_prune():
                    pruned[i] = optuna.TrialPruned(f"pruned at step {step} (val top-1 {val_accuracy:.4f})")
                    if len(pruned) == len(trials):
                        raise _AllPruned

            return report

        ctxs = [
            dataclasses.replace(ctx, record=_ignore, progress=False, report=reporter(i), progress_step=None)
            for i in range(len(trials))
        ]
        try:
            classifiers = method.fit_trials(data, configs, ctxs)
        except _AllPruned:
            return [pruned[i] for i in range(len(trials))]
        except NonFiniteError:  # which member diverged: each alone, as without batching
            log.info("a stacked trial fit diverged; its trials run one at a time", exc_info=True)
            classifiers = None
        if classifiers is None:
            return [one(t, c) for t, c in zip(trials, configs, strict=True)]
        return [pruned.get(i) or objective.score(c) for i, c in enumerate(classifiers)]

    def run_batch(trials: list[optuna.Trial]) -> list[float | optuna.TrialPruned]:
        configs = [
            _apply(method, config, method.search_space(t, data.dataset, data.shots, config)) for t in trials
        ]
        groups: list[tuple[Any, list[int]]] = []  # (the config without its scalars, members)
        for i, c in enumerate(configs):
            key = dataclasses.replace(c, **{f: getattr(config, f) for f in scalars if hasattr(config, f)})
            group = next((members for k, members in groups if k == key), None)
            if group is None:
                groups.append((key, [i]))
            else:
                group.append(i)
        outcomes: list[float | optuna.TrialPruned] = [0.0] * len(trials)
        for _, members in groups:
            if len(members) == 1:
                results = [one(trials[members[0]], configs[members[0]])]
            else:
                results = stacked([trials[i] for i in members], [configs[i] for i in members])
            for i, result in zip(members, results, strict=True):
                outcomes[i] = result
        return outcomes

    return run_batch


def _pruning_report(trial: optuna.Trial) -> Callable[[int, float], None]:
    """``FitContext.report``: hands intermediate val scores to the pruner, which may stop the trial."""

    def report(step: int, val_accuracy: float) -> None:
        trial.report(val_accuracy, step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} (val top-1 {val_accuracy:.4f})")

    return report


def _ignore(name: str, value: Any) -> None:
    """Trials keep no diagnostics: only the final fit's go into the record."""


def _apply(method: Any, config: Any, overrides: dict[str, Any]) -> Any:
    """``config`` with a search space's overrides; they must name config fields and not change ``needs``."""
    fields = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise BenchError(
            f"search_space returned {unknown}, which are not fields of {type(config).__name__}",
            where=f"{type(method).__name__}.search_space",
            fix=f"return overrides of: {', '.join(sorted(fields))}",
        )
    tuned = dataclasses.replace(config, **overrides)
    if method.needs(tuned) != method.needs(config):
        raise BenchError(
            "search_space changed the features the method needs",
            where=f"{type(method).__name__}.search_space",
            fix="do not search fields that change needs() (e.g. train_views)",
        )
    return tuned


def search_distributions(method: Any, config: Any, dataset: str, shots: int) -> dict[str, Any]:
    """The Optuna distributions ``method`` searches for this cell: parameter name -> distribution."""
    with _quiet_optuna():
        probe = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    method.search_space(probe, dataset, shots, config)
    return dict(probe.distributions)


def _default_params(method: Any, config: Any, dataset: str, shots: int) -> dict[str, Any]:
    """The search-space parameters that are config fields, at their default (paper) values when in range."""
    params = {}
    for name, distribution in search_distributions(method, config, dataset, shots).items():
        value = getattr(config, name, None)
        if value is None:
            continue
        if isinstance(distribution, CategoricalDistribution):
            inside = value in distribution.choices
        else:
            inside = distribution.low <= value <= distribution.high
        if inside:
            params[name] = value
    return params


def _record(
    ref: StudyRef,
    split: str,
    finished: list[FrozenTrial],
    best: FrozenTrial,
    defaults: dict[str, Any],
    warmup: int,
) -> dict:
    default = next(
        (t for t in finished if t.user_attrs.get("paper_default") and t.state == TrialState.COMPLETE), None
    )
    return {
        "mode": ref.mode,
        "scored_on": split,
        "trials": len(finished),
        "target_trials": ref.trials,
        "complete": sum(t.state == TrialState.COMPLETE for t in finished),
        "pruned": sum(t.state == TrialState.PRUNED for t in finished),
        "best_trial": best.number,
        "best_params": dict(best.params),
        f"best_{split}_top1": best.value,
        "default_params": defaults,
        f"default_{split}_top1": default.value if default else None,
        "search_space": {n: json.loads(distribution_to_json(d)) for n, d in best.distributions.items()},
        "study": ref.name,
        "storage": describe_storage(ref.storage),
        "protocol": tuning_protocol(ref.mode, ref.trial_batch),
        "sampler": {**TrialSeededTPE(ref.seed).describe(), "trial_batch": ref.trial_batch},
        "pruner": {
            "name": "MedianPruner",
            "n_startup_trials": PRUNER_STARTUP_TRIALS,
            "n_warmup_steps": warmup,
        },
    }


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna logs every trial at INFO; show that only with ``bench -v``."""
    previous = optuna.logging.get_verbosity()
    if not log.isEnabledFor(logging.DEBUG):
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(previous)
