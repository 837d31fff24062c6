"""CLI of cluster sweeps: the executor flags of ``bench run`` and the ``bench status`` subcommand.

``bench run --executor slurm [--slurm-profile NAME] [--partition P --gpus-per-task 1 --time 60 ...]``
submits the grid (see :mod:`bench.slurm.sweep`) and follows it; ``--detach`` returns right after
submission and ``bench status [--results DIR] [--watch]`` reattaches from the results folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from bench.errors import BenchError

# Flags that only mean something for a sweep, with their argparse types (None = not given).
_RESOURCE_FLAGS = {"partition": str, "gpus_per_task": int, "cpus_per_task": int, "mem_gb": float, "time": int,
                   "account": str, "constraint": str, "cells_per_task": int, "array_parallelism": int}


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The executor flags of ``bench run``."""
    group = parser.add_argument_group("executors and cluster sweeps (flags override the --slurm-profile)")
    group.add_argument("--executor", default="local", choices=("local", "processes", "debug", "slurm"),
                       help="local: in this process (default); processes: one local subprocess per job; "
                            "debug: the sweep's jobs in this process; slurm: a job array on Slurm via submitit")
    group.add_argument("--slurm-profile", default=None, metavar="NAME|FILE.json",
                       help="resources from slurm/profiles: gpu_short (default for slurm), gpu_long, cpu_debug "
                            "(default for processes/debug), or a .json file with the same fields")
    group.add_argument("--partition", help="Slurm partition")
    group.add_argument("--gpus-per-task", type=int, help="GPUs per job")
    group.add_argument("--cpus-per-task", type=int, help="CPUs per job (also the image-decoding workers on GPU jobs)")
    group.add_argument("--mem-gb", type=float, help="host memory per job, GB")
    group.add_argument("--time", type=int, metavar="MINUTES", help="wall time per job; a task that reaches it "
                       "checkpoints and requeues itself")
    group.add_argument("--account", help="Slurm account")
    group.add_argument("--constraint", help="Slurm node constraint, e.g. a100")
    group.add_argument("--cells-per-task", type=int, help="cells run one after another in one array task")
    group.add_argument("--array-parallelism", type=int, help="array tasks (or local processes) at once")
    group.add_argument("--detach", action="store_true", help="return after submitting (slurm); follow later with "
                       "`bench status --watch`")
    group.add_argument("--poll", type=float, default=None, metavar="SECONDS",
                       help="seconds between two looks at the jobs (default: 5 for slurm, 1 otherwise)")


def sweep_requested(args: argparse.Namespace) -> bool:
    """True for ``--executor processes|debug|slurm``; sweep-only flags with the local executor are an error."""
    if args.executor != "local":
        return True
    given = [name for name in (*_RESOURCE_FLAGS, "slurm_profile", "poll") if getattr(args, name) is not None]
    given += ["detach"] if args.detach else []
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise BenchError(f"{flags} only apply to sweeps", where="--executor local",
                         fix="add --executor slurm (or processes), or drop those flags")
    return False


def sweep_options(args: argparse.Namespace):
    """SweepOptions from the flags: the profile, then every flag that was given."""
    from bench.slurm.resources import DEFAULT_PROFILE, load_profile, with_overrides
    from bench.slurm.sweep import SweepOptions

    if args.detach and args.executor != "slurm":
        raise BenchError("only Slurm sweeps can detach", where="--detach",
                         fix="drop --detach; processes and debug sweeps run inside this command")
    base = load_profile(args.slurm_profile or DEFAULT_PROFILE[args.executor])
    flags = {name: getattr(args, name) for name in _RESOURCE_FLAGS}
    flags["time_min"] = flags.pop("time")
    resources = with_overrides(base, **flags)
    poll = args.poll if args.poll is not None else (5.0 if args.executor == "slurm" else 1.0)
    return SweepOptions(executor=args.executor, resources=resources, detach=args.detach, poll_s=poll)


def run_sweep(args: argparse.Namespace, specs: list, options) -> int:
    """``bench run --executor processes|debug|slurm``: plan, submit, follow (or detach)."""
    from bench.runner import Session, plan_cells
    from bench.slurm import progress, sweep
    from bench.slurm.resources import describe

    config = sweep_options(args)
    if args.workers is None:  # decide for the job's node, not for this (login) node
        workers = min(8, config.resources.cpus_per_task) if config.resources.gpus_per_task else 0
        options = dataclasses.replace(options, extract=dataclasses.replace(options.extract, num_workers=workers))
    cells = plan_cells(specs, Session(options), dry_run=args.dry_run)
    if config.executor == "slurm":  # the nodes read the weights from the cache: fetch or fail before submitting
        from bench.build_plan import locate_backbones

        for line in locate_backbones([s.backbone for s in specs], download=not args.dry_run):
            print(f"backbone {line}")
    if config.executor == "slurm" and options.storage is None and any(cell.study for cell in cells):
        print(f"warning: tuned cells keep their studies in SQLite ({Path(options.results_root) / 'studies.sqlite3'}); "
              "SQLite locking is unreliable on network filesystems, so on a cluster pass "
              f"--storage journal:{Path(options.results_root) / 'studies.journal'} (or a postgresql+psycopg:// URL)",
              file=sys.stderr)
    if config.executor == "slurm":
        cells = _without_cells_in_flight(cells, Path(options.results_root))
    manifest = sweep.plan_sweep(cells, options, config)
    pending = sum(entry.task is not None for entry in manifest.cells)
    print(f"{len(cells)} cells, {len(cells) - pending} already done; {pending} to run as "
          f"{len(manifest.features)} feature job(s) + {len(manifest.tasks)} array task(s) "
          f"[{config.executor}: {describe(config.resources)}]")
    if args.dry_run:
        for cell, entry in zip(cells, manifest.cells, strict=True):
            where = "done" if entry.task is None else f"task {entry.task}"
            print(f"{'todo' if entry.task is not None else 'done'}  {cell.spec.name}  {cell.spec.backbone}  ({where})")
        return 0
    if not pending:
        print(f"nothing to submit; records in {args.results}")
        return 0
    tracker = sweep.start(manifest, cells, options, config)
    manifest = tracker.manifest
    print(f"sweep {manifest.sweep_id}: manifest and logs in {manifest.folder}")
    if config.detach:
        print(f"detached; follow with: bench status --results {args.results} --watch")
        return 0
    records = progress.RecordReader(Path(manifest.results_root))
    try:
        statuses = progress.follow(tracker, records, config.poll_s, print)
    except KeyboardInterrupt:
        if config.executor != "slurm":
            raise
        print(f"stopped following; the jobs go on. Reattach with: bench status --results {args.results} --watch")
        return 130
    return _summary(statuses, args.results)


def _without_cells_in_flight(cells: list, results_root: Path) -> list:
    """``cells`` less those an earlier Slurm sweep into this results folder still has queued or running
    (a cell with an ok record stays: its task may still be winding up, but the cell is done)."""
    from bench.runner import is_done
    from bench.slurm import sweep

    busy = sweep.in_flight(results_root)
    root = results_root.resolve()
    held = {c.path: busy[r] for c in cells if (r := str(c.path.resolve().relative_to(root))) in busy
            and not is_done(c)}
    keep = [c for c in cells if c.path not in held]
    if held:
        sweeps = sorted(set(held.values()))
        print(f"{len(cells) - len(keep)} cells are still queued or running in sweep(s) {', '.join(sweeps)}: not "
              f"submitted again (follow them with `bench status --results {results_root} --sweep ID`)")
    return keep


def _summary(statuses: list, results: Path) -> int:
    from bench.slurm.progress import count

    counts = count(statuses)
    failed = counts["failed"] + counts["unknown"]
    print(f"{counts['done']} cells done, {counts['failed']} failed"
          + (f", {counts['unknown']} unknown" if counts["unknown"] else "") + f"; records in {results}")
    if failed:
        print("re-run the same command to retry the cells without an ok record", file=sys.stderr)
    return 1 if failed else 0


def add_parser(subparsers) -> None:
    """``bench status``."""
    p = subparsers.add_parser("status", help="progress of a sweep submitted with --executor slurm|processes|debug",
                              description="Show a sweep's cells as submitted / running / done / failed, from its "
                                          "manifest in the results folder, the job states and the records; failed "
                                          "cells show the end of their traceback.")
    p.add_argument("--results", type=Path, default=Path(os.environ.get("BENCH_RESULTS_DIR", "results")),
                   help="results folder the sweep writes into (default: ./results)")
    p.add_argument("--sweep", default=None, help="sweep id (default: the latest one)")
    p.add_argument("--watch", action="store_true", help="follow until no cell is submitted or running")
    p.add_argument("--poll", type=float, default=5.0, metavar="SECONDS", help="with --watch: seconds between looks")
    p.add_argument("--list", action="store_true", help="list the sweeps in the results folder")
    p.set_defaults(func=_cmd_status)


def _cmd_status(args: argparse.Namespace) -> int:
    from bench.slurm import progress, sweep
    from bench.slurm.manifest import find_manifest, list_sweeps

    if args.list:
        for sweep_id in list_sweeps(args.results):
            print(sweep_id)
        return 0
    manifest = find_manifest(args.results, args.sweep)
    print(f"sweep {manifest.sweep_id} ({manifest.executor}, submitted {manifest.created_at}): "
          f"{len(manifest.tasks)} array task(s); logs in {Path(manifest.log_folder).parent}")
    tracker = sweep.attach(manifest)
    records = progress.RecordReader(Path(manifest.results_root))
    if args.watch:
        statuses = progress.follow(tracker, records, args.poll, print)
    else:
        tracker.step()
        statuses = progress.cell_statuses(manifest, *tracker.states(), records)
        print(progress.progress_line(progress.count(statuses)))
        for line in progress.failure_report(statuses):
            print(line)
    if progress.is_finished(progress.count(statuses)):
        return _summary(statuses, args.results)
    return 0
