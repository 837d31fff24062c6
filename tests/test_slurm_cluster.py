"""Integration test against a real Slurm cluster (``bash slurm/cluster.sh up``; scripts/test.sh starts it in CI).

A 2 datasets × 2 shots × 2 seeds × {zero_shot, linear_probe} sweep on the tiny model goes through
``bench run --executor slurm``: one task is cancelled (its cells are reported failed, the others
finish), one is preempted (it requeues and finishes without redoing its finished cells), a
re-submission runs only the missing cells, and every record equals the in-process run's.
Skipped when no Slurm node is idle, unless BENCH_REQUIRE_SLURM=1 (CI), where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from bench.cli import main
from bench.results import load_results, read_result
from bench.slurm.manifest import find_manifest, list_sweeps

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(600)]

GRID = [
    "--methods",
    "zero_shot,linear_probe",
    "--datasets",
    "synthetic,synthetic_alt",
    "--shots",
    "1,2",
    "--seeds",
    "1,2",
]
METRICS = ("top1", "top5", "mean_per_class_recall", "val_top1")


def _slurm_node_idle() -> bool:
    if not shutil.which("sinfo"):
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    return out.returncode == 0 and any(state in ("idle", "mix") for state in out.stdout.split())


@pytest.fixture(scope="module")
def slurm_cluster():
    if not _slurm_node_idle():
        if os.environ.get("BENCH_REQUIRE_SLURM") == "1":
            pytest.fail("BENCH_REQUIRE_SLURM=1 but no Slurm node is idle (bash slurm/cluster.sh up; status)")
        pytest.skip("no local Slurm cluster (bash slurm/cluster.sh up)")


def _args(root: Path, name: str, *extra: str) -> list[str]:
    return [
        "run",
        *GRID,
        "--data-root",
        str(root / "data"),
        "--cache-dir",
        str(root / f"cache-{name}"),
        "--results",
        str(root / name),
        "--device",
        "cpu",
        "--no-progress",
        *extra,
    ]


def _slurm_state(job_id: str) -> str:
    out = subprocess.run(
        ["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=20
    )
    return out.stdout.strip() or "GONE"


def _wait(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.2)


def _records(results: Path, manifest, task: int) -> list[Path]:
    return [results / manifest.cells[i].record for i in manifest.tasks[task].cells]


def _by_cell(results: Path) -> dict:
    return {(r.spec.dataset, r.spec.method, r.spec.shots, r.spec.seed): r for r in load_results(results)}


def test_slurm_sweep_survives_cancel_and_preemption_and_equals_a_local_run(slurm_cluster, tmp_path, capsys):
    assert main(_args(tmp_path, "local")) == 0
    results = tmp_path / "slurm"
    # --time 60: with a limit of 10 minutes or less submitit counts every signal as a time-out
    sweep_args = ("--executor", "slurm", "--slurm-profile", "cpu_debug", "--time", "60")
    assert main(_args(tmp_path, "slurm", *sweep_args, "--detach")) == 0
    manifest = find_manifest(results)
    assert (len(manifest.features), len(manifest.tasks), len(manifest.cells)) == (2, 4, 16)
    capsys.readouterr()
    # the same command while the sweep is queued: nothing is submitted twice
    assert main(_args(tmp_path, "slurm", *sweep_args, "--detach")) == 0
    out = capsys.readouterr().out
    assert f"cells are still queued or running in sweep(s) {manifest.sweep_id}: not submitted again" in out
    assert "nothing to submit" in out and len(list_sweeps(results)) == 1
    # task 0: zero_shot on synthetic -> cancelled; task 3: linear_probe on synthetic_alt -> preempted
    assert {manifest.cells[i].name.split("/")[0] for i in manifest.tasks[0].cells} == {"zero_shot"}
    assert {
        manifest.cells[i].name.split("/")[:2] == ["linear_probe", "synthetic_alt"]
        for i in manifest.tasks[3].cells
    } == {True}
    cancelled, preempted = manifest.tasks[0].job_id, manifest.tasks[3].job_id

    _wait(lambda: _slurm_state(cancelled) == "RUNNING", 240, f"task {cancelled} to start")
    subprocess.run(["scancel", cancelled], check=True)

    _wait(
        lambda: any(p.is_file() for p in _records(results, manifest, 3)), 240, f"a record of task {preempted}"
    )
    before = {p: p.stat().st_mtime_ns for p in _records(results, manifest, 3) if p.is_file()}
    assert 1 <= len(before) < 4
    import submitit

    submitit.SlurmJob(
        folder=manifest.log_folder, job_id=preempted
    )._interrupt()  # SIGTERM + USR2, as a preemption
    capsys.readouterr()

    assert main(["status", "--results", str(results), "--watch", "--poll", "1"]) == 1
    out = capsys.readouterr().out
    lost = [p for p in _records(results, manifest, 0) if not p.is_file()]
    assert lost, "the cancelled task finished its cells before scancel reached it"
    assert f"{16 - len(lost)} done, {len(lost)} failed" in out
    assert f"task {cancelled} CANCELLED" in out and "zero_shot/synthetic/" in out

    after = _records(results, manifest, 3)
    assert all(p.is_file() for p in after)
    assert {p: p.stat().st_mtime_ns for p in before} == before  # finished cells were not redone
    restarts = {p: read_result(p).provenance.slurm_restart_count for p in after}
    assert all(restarts[p] is None for p in before)
    assert {restarts[p] for p in after if p not in before} == {"1"}  # the rest ran after the requeue

    assert main(_args(tmp_path, "slurm", *sweep_args, "--poll", "1")) == 0
    out = capsys.readouterr().out
    assert (
        f"16 cells, {16 - len(lost)} already done; {len(lost)} to run as 1 feature job(s) + 1 array task(s)"
        in out
    )
    assert len(list_sweeps(results)) == 2 and all(p.is_file() for p in lost)

    local, cluster = _by_cell(tmp_path / "local"), _by_cell(results)
    assert local.keys() == cluster.keys() and len(local) == 16
    for key, record in local.items():
        assert all(cluster[key].metrics[m] == record.metrics[m] for m in METRICS), key
        assert cluster[key].data == record.data and cluster[key].config == record.config
        assert cluster[key].provenance.slurm_job_id and record.provenance.slurm_job_id is None
    _assert_cells_waited_for_features(find_manifest(results, list_sweeps(results)[0]))
    _assert_one_plain_line_per_finished_cell(find_manifest(results, list_sweeps(results)[-1]))


def _assert_one_plain_line_per_finished_cell(manifest) -> None:
    """A Slurm log is not a terminal: each finished cell is one plain line, no escape codes (issue 21)."""
    import re

    task = manifest.tasks[-1]
    logs = list(Path(manifest.log_folder.replace("%j", task.job_id)).parent.rglob(f"{task.job_id}*log.err"))
    text = "".join(p.read_text() for p in logs)
    lines = re.findall(r"^\[\d+/\d+\] ok \S+/\S+/k\d+/s\d+  top-1 [\d.]+%  [\d.]+ s", text, re.M)
    assert lines and len(lines) == len(task.cells), (logs, text[-2000:])
    assert "\x1b[" not in text


def _assert_cells_waited_for_features(manifest) -> None:
    ids = [f.job_id for f in manifest.features] + [t.job_id for t in manifest.tasks]
    out = subprocess.run(
        ["sacct", "-n", "-P", "-X", "-o", "JobID,Start,End", *[a for i in ids for a in ("-j", i)]],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    ).stdout
    times = {line.split("|")[0]: line.split("|")[1:] for line in out.splitlines() if line}
    for task in manifest.tasks:
        assert times[task.job_id][0] >= times[manifest.features[task.feature].job_id][1], (task.job_id, times)
