"""Where a sweep stands: job states + result records -> one state per cell, counts and failure reports.

A cell is ``done`` when its record is ok, ``failed`` when its record says so (with the
traceback tail) or when its task or feature job ended without writing it (with the
scheduler's word for it and the tail of the job's log), ``running`` while its task runs,
``submitted`` while its task waits, and ``unknown`` when nobody can tell any more (a local
sweep whose submitting process is gone).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from submitit.core.utils import JobPaths

from bench.errors import BenchError
from bench.results import read_result
from bench.slurm.manifest import CellEntry, Manifest

CELL_STATES = ("submitted", "running", "done", "failed", "unknown")
TAIL_LINES = 12

# Slurm job states (sacct's first word), by what they mean for the cells of the job.
_SLURM_WAITING = frozenset(
    {
        "PENDING",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "CONFIGURING",
        "RESIZING",
        "SUSPENDED",
        "PREEMPTED",
        "UNKNOWN",
        "READY",
    }
)
_SLURM_RUNNING = frozenset({"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"})


@dataclass(frozen=True)
class JobState:
    """One job as the cells see it: ``phase`` is queued | running | ended | failed | unknown;
    ``detail`` says why a failed job failed (scheduler state and log tail)."""

    phase: str
    detail: str = ""


@dataclass(frozen=True)
class CellStatus:
    entry: CellEntry
    state: str  # one of CELL_STATES
    detail: str = ""


class Tracker(Protocol):
    """Knows the jobs of one sweep: :meth:`step` lets it launch more (local sweeps), :meth:`states`
    gives (feature jobs, array tasks) in the manifest's order."""

    manifest: Manifest

    def step(self) -> None: ...

    def states(self) -> tuple[list[JobState], list[JobState]]: ...


def slurm_phase(state: str) -> str:
    word = (state or "UNKNOWN").split()[0].upper().rstrip("+")
    if word in _SLURM_WAITING:
        return "queued"
    if word in _SLURM_RUNNING:
        return "running"
    return "ended" if word == "COMPLETED" else "failed"


def tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def job_log_detail(log_folder: str, job_id: str) -> str:
    """The error a submitit job left: the tail of its stderr log (submitit prints the traceback there).

    Text only: a job's result pickle is never loaded here, since unpickling a file from a results
    folder someone sent you would run whatever code it holds.
    """
    if not job_id:
        return ""
    paths = JobPaths(log_folder, job_id=job_id, task_id=0)
    if paths.stderr.is_file():
        return tail(paths.stderr.read_text(errors="replace")) + f"\n(log: {paths.stderr})"
    return ""


class RecordReader:
    """Reads cell records, re-parsing a file only when it changed: (ok, finished_at, error tail)."""

    def __init__(self, results_root: Path):
        self.root = Path(results_root)
        self._seen: dict[str, tuple[int, tuple[bool, str, str]]] = {}

    def get(self, entry: CellEntry) -> tuple[bool, str, str] | None:
        path = self.root / entry.record
        try:
            stamp = path.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        cached = self._seen.get(entry.record)
        if cached and cached[0] == stamp:
            return cached[1]
        try:
            result = read_result(path)
        except BenchError as exc:
            summary = (False, "9999", str(exc))
        else:
            error = result.error
            text = (error.traceback_tail or f"{error.type}: {error.message}") if error else ""
            summary = (result.ok, result.provenance.finished_at or "", "" if result.ok else tail(text))
        self._seen[entry.record] = (stamp, summary)
        return summary


def cell_statuses(
    manifest: Manifest, features: list[JobState], tasks: list[JobState], records: RecordReader
) -> list[CellStatus]:
    return [_cell_status(manifest, entry, features, tasks, records.get(entry)) for entry in manifest.cells]


def _cell_status(
    manifest: Manifest,
    entry: CellEntry,
    features: list[JobState],
    tasks: list[JobState],
    record: tuple[bool, str, str] | None,
) -> CellStatus:
    fresh = record is not None and record[1] >= manifest.created_at
    if record is not None and record[0] and (fresh or not manifest.force):
        return CellStatus(entry, "done")
    if record is not None and not record[0] and fresh:
        return CellStatus(entry, "failed", record[2])
    if entry.task is None:
        return CellStatus(entry, "unknown", "its ok record is gone")
    task = manifest.tasks[entry.task]
    feature, state = features[task.feature], tasks[entry.task]
    if feature.phase == "failed" and state.phase not in ("running", "ended"):
        job = manifest.features[task.feature].job_id
        return CellStatus(entry, "failed", f"feature job {job} failed: {feature.detail}".rstrip())
    if state.phase == "ended":
        return CellStatus(entry, "failed", f"task {task.job_id} ended without writing {entry.record}")
    if state.phase == "failed":
        return CellStatus(entry, "failed", f"task {task.job_id} {state.detail}".rstrip())
    return CellStatus(entry, {"queued": "submitted"}.get(state.phase, state.phase))


def count(statuses: list[CellStatus]) -> dict[str, int]:
    return {state: sum(s.state == state for s in statuses) for state in CELL_STATES}


def progress_line(counts: dict[str, int]) -> str:
    """``16 cells: 4 submitted, 4 running, 8 done, 0 failed`` (unknown only when there are some)."""
    shown = [f"{counts[s]} {s}" for s in CELL_STATES if s != "unknown" or counts[s]]
    return f"{sum(counts.values())} cells: {', '.join(shown)}"


def failure_report(statuses: list[CellStatus], already: set[str] | None = None) -> list[str]:
    """Lines reporting failed cells, grouped by identical error; ``already`` holds errors reported before."""
    groups: dict[str, list[str]] = {}
    for status in statuses:
        if status.state == "failed":
            groups.setdefault(status.detail, []).append(_label(status))
    lines = []
    for detail, names in groups.items():
        if already is not None:
            if detail in already:
                continue
            already.add(detail)
        head, *rest = (detail or "no error recorded").splitlines()
        lines.append(f"FAILED {', '.join(names)}: {head}")
        lines.extend(f"    {line}" for line in rest)
    return lines


def _label(status: CellStatus) -> str:
    return f"{status.entry.name} [{status.entry.backbone}]"


def is_finished(counts: dict[str, int]) -> bool:
    return counts["submitted"] == 0 and counts["running"] == 0


def follow(
    tracker: Tracker, records: RecordReader, poll_s: float, emit: Callable[[str], None]
) -> list[CellStatus]:
    """Step and poll ``tracker`` until no cell is submitted or running; emit a progress line whenever
    the counts change and each new failure once. Returns the final cell states."""
    last: dict[str, int] | None = None
    reported: set[str] = set()
    while True:
        tracker.step()
        statuses = cell_statuses(tracker.manifest, *tracker.states(), records)
        counts = count(statuses)
        if counts != last:
            emit(f"[{time.strftime('%H:%M:%S')}] {progress_line(counts)}")
            last = counts
        for line in failure_report(statuses, reported):
            emit(line)
        if is_finished(counts):
            return statuses
        time.sleep(poll_s)
