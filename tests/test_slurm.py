"""Cluster sweeps without a cluster: profiles, the sbatch text, the plan, the jobs, cell states,
and the debug (in-process) and processes (subprocess) executors end to end.

The same sweep against a real Slurm is tests/test_slurm_cluster.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pdb
from types import SimpleNamespace

import pytest
import submitit
from submitit.core.utils import DelayedSubmission, cloudpickle_dump

from bench import runner
from bench.cli import main
from bench.errors import BenchError
from bench.results import RunResult, load_results, write_result
from bench.runner import Session, plan_cells, prepare_features, run_cells
from bench.seeding import derive_seed
from bench.slurm.jobs import CellTask
from bench.slurm.manifest import CellEntry, FeatureEntry, Manifest, TaskEntry, find_manifest, read_manifest
from bench.slurm.progress import JobState, RecordReader, cell_statuses, count, job_log_detail, slurm_phase
from bench.slurm.resources import Resources, executor_parameters, load_profile, profile_names, with_overrides
from bench.slurm.sweep import SweepOptions, plan_sweep
from bench.spec import expand_grid

from .conftest import TINY

METRICS = ("top1", "top5", "mean_per_class_recall", "val_top1")


def _grid(methods=("zero_shot",), datasets=("synthetic",), shots=(1, 2), seeds=(1,)):
    return expand_grid(list(methods), list(datasets), list(shots), list(seeds), [TINY])


def _cli(tmp_path, data_root, name, *extra):
    return [
        "run",
        "--data-root",
        str(data_root),
        "--cache-dir",
        str(tmp_path / f"cache-{name}"),
        "--results",
        str(tmp_path / name),
        "--device",
        "cpu",
        "--no-progress",
        *extra,
    ]


def _metrics(results):
    return {
        (r.spec.method, r.spec.dataset, r.spec.shots, r.spec.seed): [r.metrics[m] for m in METRICS]
        for r in load_results(results)
    }


@pytest.fixture
def no_pdb(monkeypatch):
    # submitit's debug executor opens pdb on an exception; under pytest's capture that raises instead
    monkeypatch.setattr(pdb, "post_mortem", lambda *a, **k: None)


def test_builtin_profiles_load_and_flags_override_them():
    assert {"gpu_short", "gpu_long", "cpu_debug"} <= set(profile_names())
    short = load_profile("gpu_short")
    assert (
        short.gpus_per_task == 1 and short.cells_per_task > 1 and load_profile("gpu_long").cells_per_task == 1
    )
    assert load_profile("cpu_debug").gpus_per_task == 0
    custom = with_overrides(short, partition="a100", time_min=15, gpus_per_task=None)
    assert (custom.partition, custom.time_min, custom.gpus_per_task) == ("a100", 15, 1)


def test_profile_errors_name_the_file_and_field(tmp_path):
    with pytest.raises(BenchError, match="Did you mean: gpu_short"):
        load_profile("gpu_shrt")
    bad = tmp_path / "mine.json"
    bad.write_text(json.dumps({"partition": "gpu", "gpus": 2}))
    with pytest.raises(BenchError, match=r"mine.json: unknown profile field\(s\) gpus"):
        load_profile(str(bad))
    bad.write_text(json.dumps({"time_min": "1h"}))
    with pytest.raises(BenchError, match="'time_min' has the wrong type"):
        load_profile(str(bad))
    bad.write_text(json.dumps({"partition": "gpu", "time_min": 5, "description": "mine"}))
    assert load_profile(str(bad)) == Resources(partition="gpu", time_min=5)
    with pytest.raises(BenchError, match="cells_per_task must be at least 1"):
        Resources(cells_per_task=0)


def test_sbatch_script_carries_resources_and_the_feature_dependency(tmp_path):
    resources = with_overrides(load_profile("gpu_short"), partition="a100", account="lab", constraint="80gb")
    executor = submitit.AutoExecutor(folder=tmp_path / "%j", cluster="slurm")
    executor.update_parameters(
        **executor_parameters(resources, "slurm", name="bench-cells-x", dependency="42")
    )
    lines = set(executor._executor._make_submission_file_text("python -m x", "uid").splitlines())
    for flag in (
        "--dependency=afterok:42",
        "--kill-on-invalid-dep=yes",
        "--gpus-per-task=1",
        "--partition=a100",
        "--account=lab",
        "--constraint=80gb",
        "--time=60",
        "--mem=32GB",
        "--cpus-per-task=8",
        "--job-name=bench-cells-x",
        "--signal=USR2@90",
    ):
        assert f"#SBATCH {flag}" in lines
    cpu = executor_parameters(load_profile("cpu_debug"), "slurm", name="f")
    assert "slurm_gpus_per_task" not in cpu and "slurm_dependency" not in cpu and "slurm_partition" not in cpu
    assert executor_parameters(resources, "processes", name="f") == {"timeout_min": 60, "name": "f"}


def test_cell_arrays_may_time_out_once_per_cell_and_feature_jobs_requeue(tmp_path):
    from bench.slurm.jobs import FeatureTask
    from bench.slurm.sweep import _executor

    manifest = SimpleNamespace(log_folder=str(tmp_path / "%j"))
    resources = load_profile("gpu_short")
    array = _executor(manifest, "slurm", resources, "bench-cells-x", dependency="42", timeouts=10)
    assert array._executor.max_num_timeout == 10  # submitit's default of 3 would end a long task early
    assert _executor(manifest, "slurm", resources, "bench-features-x")._executor.max_num_timeout == 3
    assert isinstance(FeatureTask(), submitit.helpers.Checkpointable)  # a timed-out feature job requeues


def test_plan_groups_pending_cells_by_backbone_and_dataset(run_options):
    session = Session(run_options)
    run_cells(_grid(shots=(1,)), run_options, session)  # zero_shot k1 is done before the sweep
    cells = plan_cells(
        _grid(methods=("zero_shot", "linear_probe"), datasets=("synthetic", "synthetic_alt")), session
    )
    manifest = plan_sweep(cells, run_options, SweepOptions(resources=Resources(cells_per_task=3)))
    assert [(f.dataset, f.job_id) for f in manifest.features] == [("synthetic", ""), ("synthetic_alt", "")]
    tasks = [[manifest.cells[i].name for i in t.cells] for t in manifest.tasks]
    assert tasks == [
        ["zero_shot/synthetic/k2/s1", "linear_probe/synthetic/k1/s1", "linear_probe/synthetic/k2/s1"],
        [
            "zero_shot/synthetic_alt/k1/s1",
            "zero_shot/synthetic_alt/k2/s1",
            "linear_probe/synthetic_alt/k1/s1",
        ],
        ["linear_probe/synthetic_alt/k2/s1"],
    ]
    assert [t.feature for t in manifest.tasks] == [0, 1, 1]
    assert manifest.cells[0].task is None and manifest.cells[0].record.startswith(
        "bench-tiny__random/synthetic/"
    )
    forced = plan_sweep(
        cells, dataclasses.replace(run_options, force=True), SweepOptions(resources=Resources())
    )
    assert len(forced.tasks) == 8 and forced.force


def test_batch_seeds_keeps_a_seed_group_in_one_array_task(run_options):
    """With --batch-seeds a cell's seeds go to one task (so it can train them in one fit), even past
    cells_per_task; other cells keep the usual chunks."""
    session = Session(run_options)
    cells = plan_cells(_grid(methods=("coop", "zero_shot"), seeds=(1, 2, 3), shots=(1,)), session)
    batched = dataclasses.replace(run_options, batch_seeds=True)
    manifest = plan_sweep(cells, batched, SweepOptions(resources=Resources(cells_per_task=1)))
    tasks = [sorted(manifest.cells[i].name for i in t.cells) for t in manifest.tasks]
    assert ["coop/synthetic/k1/s1", "coop/synthetic/k1/s2", "coop/synthetic/k1/s3"] in tasks
    assert all(len(t) == 1 for t in tasks if not t[0].startswith("coop/"))
    plain = plan_sweep(cells, run_options, SweepOptions(resources=Resources(cells_per_task=1)))
    assert all(len(t.cells) == 1 for t in plain.tasks)


def test_prepare_features_leaves_nothing_for_the_cells_to_encode(run_options):
    grid = _grid(shots=(1, 2)) + _grid(methods=("clip_adapter",), shots=(1,))
    session = Session(run_options)
    cells = plan_cells(grid, session)
    encoded = prepare_features(cells, session)
    assert encoded > 96  # the test split, the val union and both kinds of support views
    assert prepare_features(cells, session) == 0
    assert len(run_cells(grid, run_options, session).ran) == 3
    assert session.cache.images_encoded == encoded


def test_cell_task_checkpoint_resumes_without_redoing_finished_cells(run_options, tmp_path, monkeypatch):
    specs = tuple(_grid())
    options = dataclasses.replace(run_options, force=True)  # so only the checkpoint can say what is finished
    task, pickle_path, real_run_cell = CellTask(), tmp_path / "checkpoint.pkl", runner.run_cell

    def preempted_on_second_cell(cell, session, **kwargs):
        if task.finished:  # what submitit's USR2 handler does: checkpoint, then exit
            task.checkpoint(specs, options).dump(pickle_path)
            raise SystemExit(-1)
        return real_run_cell(cell, session, **kwargs)

    monkeypatch.setattr(runner, "run_cell", preempted_on_second_cell)
    with pytest.raises(SystemExit):
        task(specs, options)
    (first,) = load_results(options.results_root)
    stamp = next(options.results_root.rglob("k01-*.json")).stat().st_mtime_ns
    monkeypatch.setattr(runner, "run_cell", real_run_cell)
    summary = DelayedSubmission.load(pickle_path).result()  # the requeued task
    assert summary == {
        "ran": ["zero_shot/synthetic/k2/s1"],
        "skipped": ["zero_shot/synthetic/k1/s1"],
        "failed": [],
        "deferred": [],
        "busy": [],
    }
    assert next(options.results_root.rglob("k01-*.json")).stat().st_mtime_ns == stamp
    assert len(CellTask()(specs, options)["ran"]) == 2  # without the checkpoint, force redoes both


def _record(path, ok, finished_at):
    spec = {"method": "zero_shot", "dataset": "synthetic", "shots": 1, "seed": 1, "backbone": TINY}
    write_result(
        path,
        RunResult.build(
            {
                "run_id": "r",
                "status": "ok" if ok else "failed",
                "spec": spec,
                "backbone": {"id": TINY},
                "data": {},
                "config": {},
                "tuning": {"mode": "none"},
                "metrics": {"top1": 0.5} if ok else {},
                "timing_s": {},
                "memory": {},
                "provenance": {"finished_at": finished_at},
                "error": None
                if ok
                else {"type": "ValueError", "message": "bad", "traceback_tail": "Traceback\nValueError: bad"},
            }
        ),
    )


def test_cell_states_follow_jobs_and_records(tmp_path):
    now, before = "2026-01-02T00:00:00+00:00", "2026-01-01T00:00:00+00:00"
    names = ["done", "stale-failed", "fresh-failed", "running", "crashed", "nothing", "already"]
    cells = tuple(
        CellEntry(n, TINY, f"{n}.json", None if n == "already" else (0 if i < 4 else 1))
        for i, n in enumerate(names)
    )
    manifest = Manifest(
        "s",
        now,
        "slurm",
        False,
        str(tmp_path),
        str(tmp_path / "logs" / "%j"),
        {},
        cells,
        (FeatureEntry(TINY, "synthetic", "7"),),
        (TaskEntry((0, 1, 2, 3), 0, "8_0"), TaskEntry((4, 5), 0, "8_1")),
    )
    _record(tmp_path / "done.json", True, before)  # ok from an earlier sweep counts (not --force)
    _record(tmp_path / "stale-failed.json", False, before)  # retried by this sweep: its old error is not news
    _record(tmp_path / "fresh-failed.json", False, now)
    _record(tmp_path / "already.json", True, before)
    reader = RecordReader(tmp_path)

    def states(feature, first, second):
        return {
            s.entry.name: (s.state, s.detail)
            for s in cell_statuses(manifest, [feature], [first, second], reader)
        }

    got = states(JobState("ended"), JobState("running"), JobState("failed", "CANCELLED by 0\nlog tail"))
    assert got["done"] == ("done", "") and got["already"] == ("done", "")
    assert got["stale-failed"] == ("running", "") and got["running"] == ("running", "")
    assert got["fresh-failed"] == ("failed", "Traceback\nValueError: bad")
    assert got["crashed"] == ("failed", "task 8_1 CANCELLED by 0\nlog tail") == got["nothing"]
    got = states(JobState("failed", "OUT_OF_MEMORY"), JobState("queued"), JobState("queued"))
    assert got["running"] == ("failed", "feature job 7 failed: OUT_OF_MEMORY")
    got = states(JobState("ended"), JobState("queued"), JobState("ended"))
    assert (
        got["running"] == ("submitted", "")
        and got["nothing"][1] == "task 8_1 ended without writing nothing.json"
    )
    forced = dataclasses.replace(manifest, force=True)
    assert {
        s.entry.name: s.state
        for s in cell_statuses(forced, [JobState("ended")], [JobState("queued")] * 2, reader)
    }["done"] == "submitted"
    assert count(cell_statuses(manifest, [JobState("ended")], [JobState("ended")] * 2, reader))["failed"] == 5
    assert [
        slurm_phase(s)
        for s in ("PENDING", "REQUEUED", "RUNNING", "COMPLETED", "CANCELLED by 0", "TIMEOUT", "", "NODE_FAIL")
    ] == ["queued", "queued", "running", "ended", "failed", "failed", "queued", "failed"]


def test_job_log_detail_reads_the_log_never_the_result_pickle(tmp_path):
    folder = str(tmp_path / "%j")
    (tmp_path / "5_1").mkdir()
    (tmp_path / "5_1" / "5_1_0_log.err").write_text("line\n" * 30 + "srun: error: task killed\n")
    assert job_log_detail(folder, "5_1").splitlines()[-2] == "srun: error: task killed"
    assert len(job_log_detail(folder, "5_1").splitlines()) == 13  # the tail and where the log is
    cloudpickle_dump(
        ("error", "Traceback (most recent call last):\nRuntimeError: node on fire\n"),
        tmp_path / "5_1" / "5_1_0_result.pkl",
    )
    assert "node on fire" not in job_log_detail(folder, "5_1")  # a pickle from a results folder is not loaded
    assert job_log_detail(folder, "") == "" and job_log_detail(folder, "6") == ""


def test_debug_sweep_equals_local_run_and_resubmits_only_missing(tmp_path, data_root, capsys, no_pdb):
    grid = ["--methods", "zero_shot,linear_probe", "--shots", "1", "--seeds", "1"]
    assert main(_cli(tmp_path, data_root, "local", *grid)) == 0
    sweep = [*grid, "--executor", "debug", "--cells-per-task", "1"]
    assert main(_cli(tmp_path, data_root, "debug", *sweep)) == 0
    out = capsys.readouterr().out
    assert "2 cells, 0 already done; 2 to run as 1 feature job(s) + 2 array task(s)" in out
    assert "2 cells: 0 submitted, 0 running, 2 done, 0 failed" in out
    assert (
        _metrics(tmp_path / "debug") == _metrics(tmp_path / "local")
        and len(_metrics(tmp_path / "local")) == 2
    )
    manifest = find_manifest(tmp_path / "debug")
    assert manifest.executor == "debug" and all(t.job_id.startswith("DEBUG_") for t in manifest.tasks)
    assert read_manifest(manifest.folder / "manifest.json") == manifest
    assert main(_cli(tmp_path, data_root, "debug", *sweep)) == 0
    assert "2 cells, 2 already done; 0 to run" in capsys.readouterr().out
    assert main(["status", "--results", str(tmp_path / "debug")]) == 0
    assert "2 cells: 0 submitted, 0 running, 2 done, 0 failed" in capsys.readouterr().out


def test_a_crashing_task_and_a_failing_cell_are_reported_and_the_rest_finish(
    tmp_path, data_root, capsys, no_pdb, monkeypatch
):
    from bench.methods.zero_shot import ZeroShot

    real_run_cell, real_fit = runner.run_cell, ZeroShot.fit

    def crash_on_k1_s2(cell, session, **kwargs):  # the whole task dies, as on a BenchError or a segfault
        if (cell.spec.shots, cell.spec.seed) == (1, 2):
            raise RuntimeError("node on fire")
        return real_run_cell(cell, session, **kwargs)

    def fail_on_k2_s2(self, data, cfg, ctx):  # one cell fails: a failed record, the task goes on
        if data.shots == 2 and ctx.seed == derive_seed(2, "synthetic", 2, "zero_shot"):
            raise ValueError("bad prompts")
        return real_fit(self, data, cfg, ctx)

    monkeypatch.setattr(runner, "run_cell", crash_on_k1_s2)
    monkeypatch.setattr(ZeroShot, "fit", fail_on_k2_s2)
    args = [
        "--methods",
        "zero_shot",
        "--shots",
        "1,2",
        "--seeds",
        "1,2,3",
        "--executor",
        "debug",
        "--cells-per-task",
        "3",
    ]
    assert main(_cli(tmp_path, data_root, "debug", *args)) == 1
    out = capsys.readouterr().out
    assert "6 cells: 0 submitted, 0 running, 3 done, 3 failed" in out
    crashed = out.index("FAILED zero_shot/synthetic/k1/s2 [bench-tiny/random], zero_shot/synthetic/k1/s3 [")
    assert "RuntimeError: node on fire" in out[crashed:]
    failed = out.index("FAILED zero_shot/synthetic/k2/s2 [bench-tiny/random]: Traceback")
    assert "ValueError: bad prompts" in out[failed:]
    assert main(["status", "--results", str(tmp_path / "debug")]) == 1
    assert "6 cells: 0 submitted, 0 running, 3 done, 3 failed" in capsys.readouterr().out


def test_processes_executor_runs_the_jobs_in_subprocesses(tmp_path, data_root, capsys):
    grid = ["--methods", "zero_shot", "--shots", "1,2", "--seeds", "1"]
    assert main(_cli(tmp_path, data_root, "local", *grid)) == 0
    assert (
        main(
            _cli(
                tmp_path,
                data_root,
                "processes",
                *grid,
                "--executor",
                "processes",
                "--cells-per-task",
                "2",
                "--poll",
                "0.5",
            )
        )
        == 0
    )
    assert "2 cells: 0 submitted, 0 running, 2 done, 0 failed" in capsys.readouterr().out
    assert _metrics(tmp_path / "processes") == _metrics(tmp_path / "local")
    manifest = find_manifest(tmp_path / "processes")
    assert (
        manifest.executor == "processes" and int(manifest.tasks[0].job_id) != os.getpid()
    )  # another process
    assert main(["status", "--results", str(tmp_path / "processes")]) == 0


def test_cli_rejects_sweep_flags_without_a_sweep_and_slurm_without_sbatch(
    tmp_path, data_root, capsys, monkeypatch
):
    assert main(_cli(tmp_path, data_root, "r", "--partition", "gpu", "--detach")) == 2
    assert "--partition, --detach only apply to sweeps" in capsys.readouterr().err
    assert main(_cli(tmp_path, data_root, "r", "--executor", "processes", "--detach")) == 2
    assert "only Slurm sweeps can detach" in capsys.readouterr().err
    assert main(_cli(tmp_path, data_root, "r", "--executor", "slurm", "--slurm-profile", "gpu_shrt")) == 2
    assert "Did you mean: gpu_short" in capsys.readouterr().err
    monkeypatch.setattr("shutil.which", lambda tool: None)
    assert (
        main(
            _cli(
                tmp_path,
                data_root,
                "r",
                "--executor",
                "slurm",
                "--methods",
                "zero_shot",
                "--shots",
                "1",
                "--seeds",
                "1",
            )
        )
        == 2
    )
    assert "sbatch not found" in capsys.readouterr().err and not (tmp_path / "r" / ".sweeps").exists()


def test_dry_run_shows_the_job_plan_and_submits_nothing(tmp_path, data_root, capsys):
    assert (
        main(
            _cli(
                tmp_path,
                data_root,
                "r",
                "--methods",
                "zero_shot,linear_probe",
                "--shots",
                "1,2",
                "--seeds",
                "1",
                "--executor",
                "slurm",
                "--cells-per-task",
                "3",
                "--dry-run",
            )
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "4 cells, 0 already done; 4 to run as 1 feature job(s) + 2 array task(s)" in out
    assert "todo  linear_probe/synthetic/k2/s1  bench-tiny/random  (task 1)" in out
    assert not (tmp_path / "r" / ".sweeps").exists()


def test_status_without_a_sweep_is_a_user_error(tmp_path, capsys):
    assert main(["status", "--results", str(tmp_path)]) == 2
    assert "no sweep was submitted into this results folder" in capsys.readouterr().err


def test_only_cells_of_queued_tasks_count_as_in_flight(tmp_path, monkeypatch):
    """squeue decides: a task still queued holds its cells; one that ended, or that accounting forgot, does not."""
    from bench.slurm import sweep
    from bench.slurm.manifest import write_manifest

    cells = tuple(CellEntry(f"c{i}", TINY, f"r{i}.json", i // 2) for i in range(4))
    manifest = Manifest(
        "20260101T000000Z-abcdef",
        "2026-01-01T00:00:00+00:00",
        "slurm",
        False,
        str(tmp_path),
        str(tmp_path / "logs" / "%j"),
        {},
        cells,
        (FeatureEntry(TINY, "synthetic", "7"),),
        (TaskEntry((0, 1), 0, "8_0"), TaskEntry((2, 3), 0, "8_1")),
    )
    write_manifest(manifest)
    local = dataclasses.replace(manifest, sweep_id="20260101T000001Z-fedcba", executor="processes")
    write_manifest(local)  # a local sweep is never in flight: it ended with its submitting process
    monkeypatch.setattr(sweep, "queued_job_ids", lambda: {"8_1", "99"})
    assert sweep.in_flight(tmp_path) == {"r2.json": manifest.sweep_id, "r3.json": manifest.sweep_id}
    monkeypatch.setattr(sweep, "queued_job_ids", lambda: set())
    assert sweep.in_flight(tmp_path) == {}
