"""Cluster sweeps: plan the jobs of a grid, submit them through submitit, track them.

The plan shares caches: the pending cells are grouped by (backbone, dataset); each group gets
one feature job (:class:`bench.slurm.jobs.FeatureTask`) and an array of
:class:`~bench.slurm.jobs.CellTask` tasks of ``cells_per_task`` cells each that starts after it.
Cells with an ok record are not submitted, so re-submitting a sweep only runs what is missing.

Executors (one code path, three ways to run the same jobs):

- ``slurm``: everything is submitted at once; each array waits for its feature job through an
  ``afterok`` dependency, so the submitter may detach.
- ``processes`` (submitit's local executor, one subprocess per job) and ``debug`` (in this
  process, for debugging): there is no scheduler, so :class:`LocalScheduler` plays it from the
  submitting process: feature jobs first, then a group's tasks once its features are ready, at
  most ``array_parallelism`` jobs at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import io
import shutil
import subprocess
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import pickle_load
from submitit.slurm.slurm import SlurmInfoWatcher

from bench.errors import BenchError
from bench.provenance import utc_now
from bench.runner import PlannedCell, RunOptions, batched_fit, is_done, seedless_key
from bench.slurm.jobs import CellTask, FeatureTask
from bench.slurm.manifest import (
    CellEntry,
    FeatureEntry,
    Manifest,
    TaskEntry,
    list_sweeps,
    new_sweep_id,
    read_manifest,
    sweep_folder,
    write_manifest,
)
from bench.slurm.progress import JobState, job_log_detail, slurm_phase, tail
from bench.slurm.resources import Resources, executor_parameters

_SUBMITIT_CLUSTER = {"processes": "local", "debug": "debug", "slurm": "slurm"}


@dataclass(frozen=True)
class SweepOptions:
    """How a sweep is submitted: executor, per-job resources, whether to return right after
    submitting (slurm only), seconds between two looks at the jobs, and the content of the
    ``--config`` file the run was given (kept in the manifest; None without one)."""

    executor: str = "slurm"
    resources: Resources = Resources()
    detach: bool = False
    poll_s: float = 5.0
    config: dict | None = None


def job_options(options: RunOptions) -> RunOptions:
    """``options`` as jobs get them: absolute folders (jobs may start elsewhere), no progress bars."""
    return dataclasses.replace(
        options,
        data_root=Path(options.data_root).resolve(),
        cache_root=Path(options.cache_root).resolve(),
        results_root=Path(options.results_root).resolve(),
        progress=False,
        extract=dataclasses.replace(options.extract, progress=False),
    )


def plan_sweep(cells: list[PlannedCell], options: RunOptions, sweep: SweepOptions) -> Manifest:
    """The manifest of a new sweep over ``cells``: every cell, and the jobs for the ones without an ok record."""
    results_root = Path(options.results_root).resolve()
    sweep_id = new_sweep_id([c.run_id for c in cells])
    groups: dict[tuple[str, str], list[int]] = {}
    for index, cell in enumerate(cells):
        if options.force or not is_done(cell):
            groups.setdefault((cell.spec.backbone, cell.spec.dataset), []).append(index)
    features, tasks, task_of = [], [], {}
    for (backbone, dataset), members in groups.items():
        features.append(FeatureEntry(backbone, dataset))
        units = _seed_units(members, cells) if options.batch_seeds else [[i] for i in members]
        for chunk in _chunks(units, sweep.resources.cells_per_task):
            task_of.update({i: len(tasks) for i in chunk})
            tasks.append(TaskEntry(cells=chunk, feature=len(features) - 1))
    entries = tuple(
        CellEntry(
            c.spec.name, c.spec.backbone, str(c.path.resolve().relative_to(results_root)), task_of.get(i)
        )
        for i, c in enumerate(cells)
    )
    return Manifest(
        sweep_id=sweep_id,
        created_at=utc_now(),
        executor=sweep.executor,
        force=options.force,
        results_root=str(results_root),
        log_folder=str(sweep_folder(results_root, sweep_id) / "logs" / "%j"),
        resources=dataclasses.asdict(sweep.resources),
        cells=entries,
        features=tuple(features),
        tasks=tuple(tasks),
        config=sweep.config,
    )


def _seed_units(members: list[int], cells: list[PlannedCell]) -> list[list[int]]:
    """``--batch-seeds``: the cells (indices) of one seed group together, so one array task can train them
    in one fit (:func:`bench.runner.seed_groups`: a method whose ``batched_fit`` takes the config); other
    cells alone. In the order of each unit's first cell."""
    from bench.methods import method_registry

    methods = method_registry()
    units: dict[str, list[int]] = {}
    for i in members:
        cell = cells[i]
        key = seedless_key(cell) if batched_fit(cell, methods.get(cell.spec.method)()) is not None else None
        units.setdefault(key if key is not None else f"cell {i}", []).append(i)
    return list(units.values())


def _chunks(units: list[list[int]], size: int) -> list[tuple[int, ...]]:
    """Array tasks of up to ``size`` cells, a unit never split: a unit larger than ``size`` is a task of its
    own (a seed group of 3 with ``cells_per_task`` 1 is one task of 3 cells)."""
    chunks: list[list[int]] = []
    for unit in units:
        if chunks and len(chunks[-1]) + len(unit) <= size:
            chunks[-1].extend(unit)
        else:
            chunks.append(list(unit))
    return [tuple(c) for c in chunks]


def in_flight(results_root: Path) -> dict[str, str]:
    """Cells that earlier Slurm sweeps into ``results_root`` still have queued or running: record path
    (relative to the results folder) -> sweep id. Submitting them again would run them twice.

    Asks ``squeue`` (jobs pending, requeued or running, array tasks one by one), not ``sacct``: a job
    accounting has forgotten must not look queued. Local sweeps (``processes``, ``debug``) end with the
    process that submitted them, so only Slurm sweeps can be in flight; an array whose feature job
    failed was cancelled by Slurm and is not in the queue.
    """
    manifests = []
    for sweep_id in list_sweeps(results_root):
        try:
            manifest = read_manifest(sweep_folder(Path(results_root), sweep_id) / "manifest.json")
        except BenchError:
            continue  # an unreadable manifest: `bench status` reports it; nothing to deduplicate against
        if manifest.executor == "slurm" and any(t.job_id for t in manifest.tasks):
            manifests.append(manifest)
    if not manifests:
        return {}
    queued = queued_job_ids()
    return {
        manifest.cells[i].record: manifest.sweep_id
        for manifest in manifests
        for task in manifest.tasks
        if task.job_id in queued
        for i in task.cells
    }


def queued_job_ids() -> set[str]:
    """Ids of this user's jobs in the Slurm queue, array tasks as ``<array>_<task>`` (submitit's ids)."""
    check_slurm_available()
    out = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%i", "-u", getpass.getuser()],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if out.returncode != 0:
        raise BenchError(
            f"squeue failed: {out.stderr.strip()}",
            where="--executor slurm",
            fix="check that the Slurm controller answers (`sinfo`)",
        )
    return set(out.stdout.split())


def _executor(
    manifest: Manifest,
    kind: str,
    resources: Resources,
    name: str,
    dependency: str | None = None,
    timeouts: int | None = None,
) -> submitit.AutoExecutor:
    """``timeouts``: how often a Slurm job may hit its time limit and requeue (submitit's default, 3, when
    None); a task of many cells that finishes some of them per allocation needs about one per cell."""
    limits = {"slurm_max_num_timeout": timeouts} if kind == "slurm" and timeouts is not None else {}
    executor = submitit.AutoExecutor(folder=manifest.log_folder, cluster=_SUBMITIT_CLUSTER[kind], **limits)
    executor.update_parameters(**executor_parameters(resources, kind, name=name, dependency=dependency))
    return executor


def _specs(cells: list[PlannedCell], indices: tuple[int, ...]) -> tuple:
    return tuple(cells[i].spec for i in indices)


def _feature_specs(manifest: Manifest, cells: list[PlannedCell], feature: int) -> tuple:
    indices = [i for task in manifest.tasks if task.feature == feature for i in task.cells]
    return _specs(cells, tuple(indices))


def check_slurm_available() -> None:
    for tool in ("sbatch", "sacct", "squeue"):
        if not shutil.which(tool):
            raise BenchError(
                f"{tool} not found: no Slurm client on this machine",
                where="--executor slurm",
                fix="run on the cluster's login node, start a local one with `bash slurm/cluster.sh up`, "
                "or use --executor processes",
            )


def submit_slurm(
    manifest: Manifest, cells: list[PlannedCell], options: RunOptions, resources: Resources
) -> Manifest:
    """Submit every feature job and array now; returns the manifest with job ids (also written)."""
    check_slurm_available()
    options = job_options(options)
    submitted: list[submitit.Job] = []
    feature_ids: dict[int, str] = {}
    task_ids: dict[int, str] = {}
    try:
        # submitit echoes a refusing sbatch's stderr; it comes back in the exception, said once below
        with contextlib.redirect_stderr(io.StringIO()):
            for f, entry in enumerate(manifest.features):
                job = _executor(manifest, "slurm", resources, f"bench-features-{entry.dataset}").submit(
                    FeatureTask(), _feature_specs(manifest, cells, f), options
                )
                submitted.append(job)
                feature_ids[f] = job.job_id
                members = [t for t, task in enumerate(manifest.tasks) if task.feature == f]
                array = _executor(
                    manifest,
                    "slurm",
                    resources,
                    f"bench-cells-{entry.dataset}",
                    dependency=job.job_id,
                    timeouts=resources.cells_per_task + 2,
                )
                jobs = array.map_array(
                    CellTask(),
                    [_specs(cells, manifest.tasks[t].cells) for t in members],
                    [options] * len(members),
                )
                submitted.extend(jobs)
                task_ids.update({t: j.job_id for t, j in zip(members, jobs, strict=True)})
    except Exception as exc:  # sbatch said no: take back what went in, report it as a user error
        for job in submitted:
            job.cancel(check=False)
        shutil.rmtree(manifest.folder, ignore_errors=True)  # no manifest yet: only submitit's scripts
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        said = next(
            (line for line in reversed(lines) if "error" in line.lower()),
            lines[-1] if lines else type(exc).__name__,
        )
        raise BenchError(
            f"sbatch refused the sweep's jobs, nothing was submitted: {said}",
            where=_rejected_option(said, resources),
            fix="check the names with `sinfo`, `sacctmgr show qos` and `sacctmgr show assoc user=$USER`; "
            "`bench run ... --dry-run` prints the sbatch scripts",
        ) from exc
    manifest = manifest.updated(
        {f: {"job_id": i} for f, i in feature_ids.items()}, {t: {"job_id": i} for t, i in task_ids.items()}
    )
    write_manifest(manifest)
    return manifest


# words of sbatch's refusals -> the option that caused them
_REFUSALS = (
    ("qos", "qos"),
    ("partition", "partition"),
    ("account", "account"),
    ("gres", "gres"),
    ("generic resource", "gres"),
    ("gpu", "gres"),
    ("reservation", "reservation"),
    ("feature", "constraint"),
    ("constraint", "constraint"),
    ("exclude", "exclude"),
    ("node", "exclude"),
    ("mail", "mail_type"),
    ("memory", "mem_gb"),
    ("time limit", "time_min"),
)


def _rejected_option(said: str, resources: Resources) -> str:
    """The option sbatch's message ``said`` is about, as the flag and value, when it can tell; else every
    Slurm option the sweep set."""
    lower = said.lower()
    for word, name in _REFUSALS:
        value = getattr(resources, name)
        if word in lower and value:
            flag = "--time" if name == "time_min" else "--" + name.replace("_", "-")
            return f"{flag} {value}"
    extra = [f"--slurm-param {k}={v}" for k, v in resources.slurm_additional_parameters.items()]
    given = [
        f"--{name.replace('_', '-')} {getattr(resources, name)}"
        for name in ("partition", "account", "constraint", "qos", "gres", "reservation", "exclude")
        if getattr(resources, name)
    ]
    return ", ".join(given + extra) or "--slurm-profile"


class SlurmTracker:
    """States of a Slurm sweep's jobs from ``sacct`` (one call per look), failures from the job logs."""

    def __init__(self, manifest: Manifest):
        check_slurm_available()
        self.manifest = manifest
        self._watcher = SlurmInfoWatcher(delay_s=0)
        for job_id in [f.job_id for f in manifest.features] + [t.job_id for t in manifest.tasks]:
            if job_id:
                self._watcher.register_job(job_id)
        self._details: dict[str, str] = {}

    def step(self) -> None:
        self._watcher.update()

    def states(self) -> tuple[list[JobState], list[JobState]]:
        return (
            [self._state(f.job_id) for f in self.manifest.features],
            [self._state(t.job_id) for t in self.manifest.tasks],
        )

    def _state(self, job_id: str) -> JobState:
        if not job_id:
            return JobState("unknown")
        raw = self._watcher.get_state(job_id, mode="cache")
        phase = slurm_phase(raw)
        if phase != "failed":
            return JobState(phase)
        if job_id not in self._details:
            self._details[job_id] = f"{raw}\n{job_log_detail(self.manifest.log_folder, job_id)}".rstrip()
        return JobState(phase, self._details[job_id])


class LocalScheduler:
    """Runs a sweep's jobs through submitit's local (subprocess) or debug (in-process) executor,
    launching them in dependency order from :meth:`step`."""

    def __init__(
        self, manifest: Manifest, cells: list[PlannedCell], options: RunOptions, resources: Resources
    ):
        self.manifest = manifest
        self._cells, self._options, self._resources = cells, job_options(options), resources
        self._features: dict[int, submitit.Job] = {}
        self._tasks: dict[int, submitit.Job] = {}
        self._ended: dict[str, JobState] = {}
        write_manifest(manifest)

    def step(self) -> None:
        features, tasks = self.states()
        slots = self._resources.array_parallelism - sum(
            s.phase in ("queued", "running") for s in features + tasks if s is not _NOT_LAUNCHED
        )
        for f in range(len(self.manifest.features)):
            if slots > 0 and f not in self._features:
                self._features[f] = self._launch_features(f)
                slots -= 1
        for t, task in enumerate(self.manifest.tasks):
            if slots > 0 and t not in self._tasks and features[task.feature].phase == "ended":
                self._tasks[t] = self._launch_task(t)
                slots -= 1
        self._record(features, tasks)

    def _record(self, features: list[JobState], tasks: list[JobState]) -> None:
        """Keep job ids and outcomes in the manifest, so ``bench status`` can tell later what happened."""
        manifest = self.manifest.updated(
            {f: _entry_fields(job, features[f]) for f, job in self._features.items()},
            {t: _entry_fields(job, tasks[t]) for t, job in self._tasks.items()},
        )
        if manifest != self.manifest:
            self.manifest = manifest
            write_manifest(manifest)

    def _launch_features(self, f: int) -> submitit.Job:
        name = f"bench-features-{self.manifest.features[f].dataset}"
        executor = _executor(self.manifest, self.manifest.executor, self._resources, name)
        return executor.submit(FeatureTask(), _feature_specs(self.manifest, self._cells, f), self._options)

    def _launch_task(self, t: int) -> submitit.Job:
        name = f"bench-cells-{self.manifest.features[self.manifest.tasks[t].feature].dataset}"
        executor = _executor(self.manifest, self.manifest.executor, self._resources, name)
        return executor.submit(CellTask(), _specs(self._cells, self.manifest.tasks[t].cells), self._options)

    def states(self) -> tuple[list[JobState], list[JobState]]:
        features = [self._state(self._features.get(f)) for f in range(len(self.manifest.features))]
        tasks = [self._state(self._tasks.get(t)) for t in range(len(self.manifest.tasks))]
        self._record(features, tasks)
        return features, tasks

    def _state(self, job: submitit.Job | None) -> JobState:
        if job is None:
            return _NOT_LAUNCHED
        if job.job_id in self._ended:
            return self._ended[job.job_id]
        if isinstance(job, submitit.DebugJob):
            state = _debug_state(job)
        elif job.state == "RUNNING":
            return JobState("running")
        else:
            state = _ended_state(job, self.manifest.log_folder)
        self._ended[job.job_id] = state
        return state


_NOT_LAUNCHED = JobState("queued", "not launched yet")


def _entry_fields(job: submitit.Job, state: JobState) -> dict[str, str]:
    ended = state.phase in ("ended", "failed")
    return {
        "job_id": job.job_id,
        "outcome": state.phase if ended else "",
        "detail": state.detail if ended else "",
    }


def _ended_state(job: submitit.Job, log_folder: str) -> JobState:
    """How a job this process submitted (and holds) ended, from the result file the job wrote.

    submitit's result file is a pickle: it is read only here, for a job of this process at the path
    this process chose, never for a job named by a manifest found on disk (``bench status``)."""
    outcome, value = "missing", None
    if job.paths.result_pickle.is_file():
        outcome, value = pickle_load(job.paths.result_pickle)
    if outcome == "success":
        return JobState("ended")
    detail = tail(str(value)) if outcome == "error" else job_log_detail(log_folder, job.job_id)
    return JobState("failed", f"{job.state}\n{detail}".rstrip())


def _debug_state(job: Any) -> JobState:
    try:
        job.done()  # the debug executor runs the job here, in this process (and opens pdb if it raises)
    except Exception as error:
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        return JobState("failed", tail(text))
    return JobState("ended")


class FileTracker:
    """A processes/debug sweep seen from another shell: the outcomes its submitting process wrote into the
    manifest. The jobs' result files are pickles and are not read: loading one from a results folder
    would run whatever code it holds; a job without a recorded outcome is ``unknown``."""

    def __init__(self, manifest: Manifest):
        self.manifest = manifest

    def step(self) -> None:
        pass

    def states(self) -> tuple[list[JobState], list[JobState]]:
        return (
            [self._state(f) for f in self.manifest.features],
            [self._state(t) for t in self.manifest.tasks],
        )

    def _state(self, entry: FeatureEntry | TaskEntry) -> JobState:
        if entry.outcome in ("ended", "failed"):
            return JobState(entry.outcome, entry.detail)
        return JobState("unknown")  # still running, or the submitting process went away meanwhile


def start(manifest: Manifest, cells: list[PlannedCell], options: RunOptions, sweep: SweepOptions):
    """Submit (slurm) or start scheduling (processes, debug) the sweep; returns its tracker."""
    if sweep.executor == "slurm":
        return SlurmTracker(submit_slurm(manifest, cells, options, sweep.resources))
    return LocalScheduler(manifest, cells, options, sweep.resources)


def attach(manifest: Manifest):
    """A tracker for a sweep submitted earlier (``bench status``)."""
    return SlurmTracker(manifest) if manifest.executor == "slurm" else FileTracker(manifest)
