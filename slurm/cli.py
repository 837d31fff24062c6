"""CLI of cluster sweeps: ``bench run`` with a sweep executor (its options, like every ``bench run`` option,
are defined once in :class:`bench.run_config.RunConfig`) and the ``bench status`` subcommand.

``bench run --executor slurm [--slurm-profile NAME] [--partition P --gpus-per-task 1 --time 60 ...]``
submits the grid (see :mod:`bench.slurm.sweep`) and follows it; ``--detach`` returns right after
submission and ``bench status [--results DIR] [--watch]`` reattaches from the results folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from bench.errors import BenchError


def sweep_requested(args) -> bool:
    """True for ``--executor processes|debug|slurm``; sweep-only options with the local executor are an error.

    ``args`` is a :class:`bench.run_config.RunConfig` (flags and --config file together).
    """
    from bench.run_config import SWEEP_ONLY, RunConfig, flag_of, option_fields

    if args.executor != "local":
        return True
    defaults = RunConfig(data_root=args.data_root, cache_dir=args.cache_dir, results=args.results)
    given = [
        flag_of(f)
        for f in option_fields()
        if f.name in SWEEP_ONLY and getattr(args, f.name) != getattr(defaults, f.name)
    ]
    if given:
        raise BenchError(
            f"{', '.join(given)} only apply to sweeps",
            where="--executor local",
            fix="add --executor slurm (or processes), or drop those flags",
        )
    return False


def sweep_options(args, content: dict | None = None):
    """SweepOptions from a :class:`bench.run_config.RunConfig`: the profile, then every option that was given."""
    from bench.run_config import RESOURCE_OPTIONS
    from bench.slurm.resources import DEFAULT_PROFILE, load_profile, with_overrides
    from bench.slurm.sweep import SweepOptions

    if args.detach and args.executor != "slurm":
        raise BenchError(
            "only Slurm sweeps can detach",
            where="--detach",
            fix="drop --detach; processes and debug sweeps run inside this command",
        )
    base = load_profile(args.slurm_profile or DEFAULT_PROFILE[args.executor])
    flags = {name: getattr(args, name) for name in RESOURCE_OPTIONS}
    flags["slurm_additional_parameters"] = flags["slurm_additional_parameters"] or None
    flags["setup"] = flags["setup"] or None
    resources = with_overrides(base, **flags)
    poll = args.poll if args.poll is not None else (5.0 if args.executor == "slurm" else 1.0)
    return SweepOptions(
        executor=args.executor, resources=resources, detach=args.detach, poll_s=poll, config=content
    )


def run_sweep(args, specs: list, options, content: dict | None = None) -> int:
    """``bench run --executor processes|debug|slurm``: plan, submit, follow (or detach).

    ``args`` is the run's :class:`bench.run_config.RunConfig`; ``content`` the --config file's content (into the
    sweep manifest)."""
    from bench.runner import Session, plan_cells
    from bench.slurm import progress, sweep
    from bench.slurm.resources import describe

    config = sweep_options(args, content)
    if args.workers is None:  # decide for the job's node, not for this (login) node
        workers = min(8, config.resources.cpus_per_task) if config.resources.uses_gpus else 0
        options = dataclasses.replace(
            options, extract=dataclasses.replace(options.extract, num_workers=workers)
        )
    cells = plan_cells(specs, Session(options), dry_run=args.dry_run)
    if (
        config.executor == "slurm"
    ):  # the nodes read the weights from the cache: fetch or fail before submitting
        from bench.build_plan import locate_backbones

        for line in locate_backbones([s.backbone for s in specs], download=not args.dry_run):
            print(f"backbone {line}")
    if config.executor == "slurm" and options.storage is None and any(cell.study for cell in cells):
        print(
            f"warning: tuned cells keep their studies in SQLite ({Path(options.results_root) / 'studies.sqlite3'}); "
            "SQLite locking is unreliable on network filesystems, so on a cluster pass "
            f"--storage journal:{Path(options.results_root) / 'studies.journal'} (or a postgresql+psycopg:// URL)",
            file=sys.stderr,
        )
    if config.executor == "slurm":
        cells = _without_cells_in_flight(cells, Path(options.results_root))
    manifest = sweep.plan_sweep(cells, options, config)
    pending = sum(entry.task is not None for entry in manifest.cells)
    print(
        f"{len(cells)} cells, {len(cells) - pending} already done; {pending} to run as "
        f"{len(manifest.features)} feature job(s) + {len(manifest.tasks)} array task(s) "
        f"[{config.executor}: {describe(config.resources)}]"
    )
    if args.dry_run:
        for cell, entry in zip(cells, manifest.cells, strict=True):
            where = "done" if entry.task is None else f"task {entry.task}"
            print(
                f"{'todo' if entry.task is not None else 'done'}  {cell.spec.name}  {cell.spec.backbone}  ({where})"
            )
        if config.executor == "slurm" and manifest.tasks:
            _print_scripts(manifest, config.resources)
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
        print(
            f"stopped following; the jobs go on. Reattach with: bench status --results {args.results} --watch"
        )
        return 130
    return _summary(statuses, args.results)


def _print_scripts(manifest, resources) -> None:
    """The sbatch scripts of the first feature job and its cell array, as submitit would submit them."""
    from bench.slurm.resources import sbatch_script

    dataset = manifest.features[0].dataset
    size = sum(task.feature == 0 for task in manifest.tasks)
    for title, name, array, dependency in (
        ("feature job", f"bench-features-{dataset}", None, None),
        (
            f"cell array ({size} task(s); afterok on the feature job)",
            f"bench-cells-{dataset}",
            size,
            "<FEATURE_JOB_ID>",
        ),
    ):
        print(f"--- sbatch script: {title} ---")
        print(
            sbatch_script(
                resources, name=name, folder=manifest.log_folder, array_size=array, dependency=dependency
            )
        )


def _without_cells_in_flight(cells: list, results_root: Path) -> list:
    """``cells`` less those an earlier Slurm sweep into this results folder still has queued or running
    (a cell with an ok record stays: its task may still be winding up, but the cell is done)."""
    from bench.runner import is_done
    from bench.slurm import sweep

    busy = sweep.in_flight(results_root)
    root = results_root.resolve()
    held = {
        c.path: busy[r]
        for c in cells
        if (r := str(c.path.resolve().relative_to(root))) in busy and not is_done(c)
    }
    keep = [c for c in cells if c.path not in held]
    if held:
        sweeps = sorted(set(held.values()))
        print(
            f"{len(cells) - len(keep)} cells are still queued or running in sweep(s) {', '.join(sweeps)}: not "
            f"submitted again (follow them with `bench status --results {results_root} --sweep ID`)"
        )
    return keep


def _summary(statuses: list, results: Path) -> int:
    from bench.slurm.progress import count

    counts = count(statuses)
    failed = counts["failed"] + counts["unknown"]
    print(
        f"{counts['done']} cells done, {counts['failed']} failed"
        + (f", {counts['unknown']} unknown" if counts["unknown"] else "")
        + f"; records in {results}"
    )
    if failed:
        print("re-run the same command to retry the cells without an ok record", file=sys.stderr)
    return 1 if failed else 0


def _status_json(manifest) -> int:
    """``bench status --json``: one look at the sweep (no --watch), as a JSON document; exit 1 when it
    finished with failed cells, as without --json."""
    from bench.slurm import progress, sweep

    tracker = sweep.attach(manifest)
    tracker.step()
    statuses = progress.cell_statuses(
        manifest, *tracker.states(), progress.RecordReader(Path(manifest.results_root))
    )
    counts = progress.count(statuses)
    print(
        json.dumps(
            {
                "sweep": manifest.sweep_id,
                "executor": manifest.executor,
                "submitted": manifest.created_at,
                "counts": counts,
                "finished": progress.is_finished(counts),
                "cells": [
                    {
                        "cell": s.entry.name,
                        "backbone": s.entry.backbone,
                        "state": s.state,
                        "detail": s.detail,
                        "record": s.entry.record,
                    }
                    for s in statuses
                ],
            },
            indent=2,
        )
    )
    return 1 if progress.is_finished(counts) and counts["failed"] + counts["unknown"] else 0


def add_parser(subparsers) -> None:
    """``bench status``."""
    from bench.run_config import add_folder_argument

    p = subparsers.add_parser(
        "status",
        help="progress of a sweep submitted with --executor slurm|processes|debug",
        description="Show a sweep's cells as submitted / running / done / failed, from its "
        "manifest in the results folder, the job states and the records; failed "
        "cells show the end of their traceback.",
    )
    add_folder_argument(p, "results", "results folder the sweep writes into")
    p.add_argument("--sweep", default=None, help="sweep id (default: the latest one)")
    p.add_argument("--watch", action="store_true", help="follow until no cell is submitted or running")
    p.add_argument(
        "--poll", type=float, default=5.0, metavar="SECONDS", help="with --watch: seconds between looks"
    )
    p.add_argument("--list", action="store_true", help="list the sweeps in the results folder")
    p.add_argument(
        "--json", action="store_true", help="print the sweep's cells and counts (or --list) as JSON"
    )
    p.set_defaults(func=_cmd_status)


def _cmd_status(args: argparse.Namespace) -> int:
    from bench.slurm import progress, sweep
    from bench.slurm.manifest import find_manifest, list_sweeps

    if args.list:
        for sweep_id in [json.dumps(list_sweeps(args.results))] if args.json else list_sweeps(args.results):
            print(sweep_id)
        return 0
    manifest = find_manifest(args.results, args.sweep)
    if args.json:
        return _status_json(manifest)
    print(
        f"sweep {manifest.sweep_id} ({manifest.executor}, submitted {manifest.created_at}): "
        f"{len(manifest.tasks)} array task(s); logs in {Path(manifest.log_folder).parent}"
    )
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
