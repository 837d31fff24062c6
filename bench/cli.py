# PYTHON_ARGCOMPLETE_OK
"""The ``bench`` command line: parse → build frozen specs → call a library function → print.

Subcommands: ``run`` (a grid of cells), ``methods`` (registered methods with their config
fields and defaults), and the feature commands of ``FEATURE_COMMANDS`` (``report``: tables
from result records, in ``bench.reports.command``).
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import importlib
import json
import logging
import os
import sys

from bench.errors import BenchError

# Subcommands that live beside their feature: each module has ``add_parser(subparsers)``.
FEATURE_COMMANDS: tuple[str, ...] = (
    "bench.tools.demo",
    "bench.reports.command",
    "bench.reports.export",
    "bench.datasets.cli",
    "bench.slurm.cli",
    "bench.tools.perf",
    "bench.weights",
)


def add_folder_options(parser: argparse.ArgumentParser) -> None:
    """``--data-root``, ``--cache-dir``, ``--results`` with their one set of defaults (bench.run_config.FOLDERS)."""
    from bench.run_config import add_folder_arguments

    add_folder_arguments(parser)


def _add_run(sub) -> None:
    from bench.run_config import add_run_options

    p = sub.add_parser(
        "run",
        help="run methods × datasets × shots × seeds; finished cells are skipped",
        description="Run a grid of cells. Cells with an ok record are skipped (resume); --force "
        "redoes them. Every option can also come from --config FILE (YAML or JSON).",
    )
    add_run_options(p)  # every option, defined once in bench.run_config.RunConfig
    p.add_argument("--json", action="store_true", help="with --dry-run: print the plan as one JSON document")
    p.set_defaults(func=_cmd_run)


def run_config_from_args(args):
    """The :class:`~bench.run_config.RunConfig` of ``bench run``: defaults < --config file < flags given."""
    from bench.run_config import RunConfig, option_fields, resolve

    names = {f.name for f in option_fields()}
    given = {name: value for name, value in vars(args).items() if name in names}
    config, content = resolve(given, args.config)
    assert isinstance(config, RunConfig)
    return config, content


def _specs_from_args(args):
    from bench.datasets import dataset_registry
    from bench.datasets.selection import fewshot_datasets, shift_targets
    from bench.methods import method_registry
    from bench.spec import ALL_SHOTS, expand_grid, parse_int_list, parse_overrides

    methods = method_registry().expand(args.methods)
    datasets = fewshot_datasets(args.datasets, dataset_registry())
    shift = shift_targets(args.shift, datasets, dataset_registry(), args.data_root)
    shots = parse_int_list(args.shots, flag="--shots", all_value=ALL_SHOTS)
    seeds = parse_int_list(args.seeds, flag="--seeds")  # an empty list is an error, not the default seeds
    backbones = list(dict.fromkeys(b.strip() for b in args.backbone.split(",") if b.strip()))
    if not backbones:
        raise BenchError("no backbone named", where="--backbone", fix="e.g. --backbone RN50/openai")
    overrides = (
        [*as_published_overrides(methods), *args.overrides] if args.as_published else list(args.overrides)
    )
    return expand_grid(
        methods,
        datasets,
        shots,
        seeds,
        backbones,
        tune=args.tune,
        trials=args.trials,
        overrides=parse_overrides(overrides),
        protocol=args.protocol,
        shift=shift,
    )


def as_published_overrides(methods) -> list[str]:
    """``--set`` items (``METHOD.FIELD=VALUE``) of each method's ``as_published`` mapping, for --as-published.

    They come before the user's own items, so an explicit ``--set`` of the same field wins.
    """
    import json

    from bench.methods import method_registry

    registry = method_registry()
    return [
        f"{name}.{field}={json.dumps(value)}"
        for name in methods
        for field, value in sorted(getattr(registry.get(name), "as_published", {}).items())
    ]


def _run_options(args):
    import torch

    from bench.features import ExtractOptions
    from bench.runner import RunOptions

    if args.trial_batch > 1 and args.tune == "none":
        raise BenchError(
            f"--trial-batch {args.trial_batch} has no effect without --tune",
            where="--trial-batch",
            fix="add --tune val (or oracle) with --trials, or drop --trial-batch",
        )
    workers = args.workers
    if workers is None:
        workers = min(8, os.cpu_count() or 1) if torch.cuda.is_available() and args.device != "cpu" else 0
    return RunOptions(
        data_root=args.data_root,
        cache_root=args.cache_dir,
        results_root=args.results,
        device=args.device,
        precision=args.precision,
        extract=ExtractOptions(
            batch_size=args.batch_size, num_workers=workers, progress=not args.no_progress
        ),
        force=args.force,
        progress=not args.no_progress,
        storage=args.storage,
        sampling=args.sampling,
        batch_seeds=args.batch_seeds,
        trial_batch=args.trial_batch,
    )


def _cmd_run(cli_args) -> int:
    from bench.plugins import activated
    from bench.spec import check_unrepeated

    check_unrepeated(
        getattr(cli_args, "overrides", [])
    )  # on the command line; a flag may still override the --config file
    args, content = run_config_from_args(cli_args)  # every option, from the flags and the --config file
    with activated(args.plugin_paths()):
        return _run(args, content, as_json=getattr(cli_args, "json", False))


def _run(args, content, *, as_json: bool = False) -> int:
    from bench.runner import Session, is_done, plan_cells, run_cells
    from bench.slurm.cli import run_sweep, sweep_requested

    specs = _specs_from_args(args)
    options = _run_options(args)
    if sweep_requested(args):  # --executor processes|debug|slurm: the same cells as jobs
        return run_sweep(args, specs, options, content)
    session = Session(options)
    if args.dry_run:
        from bench.build_plan import locate_backbones

        located = locate_backbones([s.backbone for s in specs], download=False)
        cells = plan_cells(specs, session, dry_run=True)  # reads only: works on a read-only results folder
        done = sum(is_done(c) for c in cells)
        if as_json:
            plan = [
                {"cell": c.spec.name, "backbone": c.spec.backbone, "done": is_done(c), "record": str(c.path)}
                for c in cells
            ]
            print(
                json.dumps(
                    {
                        "backbones": located,
                        "cells": plan,
                        "total": len(cells),
                        "done": done,
                        "todo": len(cells) - done,
                    },
                    indent=2,
                )
            )
            return 0
        for line in located:
            print(f"backbone {line}")
        for cell in cells:
            print(
                f"{'done' if is_done(cell) else 'todo'}  {cell.spec.name}  {cell.spec.backbone}  -> {cell.path}"
            )
        print(f"{len(cells)} cells, {done} done, {len(cells) - done} to run")
        return 0
    summary = run_cells(specs, options, session)
    print(
        f"{len(summary.ran)} cells run, {len(summary.skipped)} already done (resumed), {len(summary.failed)} failed; "
        f"records in {args.results}"
    )
    if summary.deferred:
        print(f"{len(summary.deferred)} tuned cells are finished by the worker that completed their study")
    if summary.busy:
        print(
            f"{len(summary.busy)} cells left to another runner that holds their locks (rerun to pick up any it drops)"
        )
    for name, error in summary.failed:
        print(f"FAILED {name}: {error}", file=sys.stderr)
    return 1 if summary.failed else 0


def _add_methods(sub) -> None:
    p = sub.add_parser(
        "methods",
        help="list methods with their config fields and defaults",
        description="Methods with their config fields and defaults; with --dataset, the defaults "
        "of that cell (per-dataset ratios, epochs by shots) and what --tune searches.",
    )
    p.add_argument("names", nargs="?", default="all", help="method name(s), comma-separated, or 'all'")
    p.add_argument("--dataset", help="show the defaults default_config gives this dataset's cells")
    p.add_argument("--shots", type=int, default=16, help="with --dataset: the shot count (default: 16)")
    p.add_argument("--json", action="store_true", help="print the methods as one JSON document")
    p.add_argument(
        "--plugins",
        default="",
        metavar="PATHS",
        help="also list the methods of these plugin files and folders (comma list; also BENCH_PLUGINS)",
    )
    p.set_defaults(func=_cmd_methods)


def _cmd_methods(args) -> int:
    from bench.plugins import activated

    with activated([p.strip() for p in args.plugins.split(",") if p.strip()]):
        return _list_methods(args)


def _list_methods(args) -> int:
    from bench.methods import method_registry
    from bench.tuning import search_distributions, searchable

    registry = method_registry()
    if args.dataset:
        from bench.datasets import dataset_registry

        dataset_registry().get(args.dataset)  # an unknown name fails with did-you-mean
    if args.json:
        print(
            json.dumps(
                [
                    _method_json(registry, name, args.dataset, args.shots)
                    for name in registry.expand(args.names)
                ],
                indent=2,
                default=repr,
            )
        )
        return 0
    for name in registry.expand(args.names):
        method = registry.get(name)()
        doc = (
            (type(method).__doc__ or sys.modules[type(method).__module__].__doc__ or "").strip().splitlines()
        )
        print(f"{name} (v{method.version}, {registry.origin(name)}): {doc[0] if doc else ''}")
        cell = method.default_config(args.dataset, args.shots) if args.dataset else None
        for f in dataclasses.fields(method.Config):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if cell is not None and getattr(cell, f.name) != default:
                print(
                    f"    {f.name} = {getattr(cell, f.name)!r}  ({args.dataset}, {args.shots} shots; "
                    f"class default {default!r})"
                )
            else:
                print(f"    {f.name} = {default!r}")
        published = getattr(method, "as_published", {})
        if published:
            print(f"    --as-published sets: {', '.join(f'{k}={v!r}' for k, v in sorted(published.items()))}")
        varying = _per_cell_defaults(method)
        if varying and cell is None:
            print(f"    (per dataset/shots, default_config sets: {', '.join(varying)}; see --dataset)")
        if searchable(method):
            space = search_distributions(
                method,
                cell or method.default_config("synthetic", args.shots),
                args.dataset or "synthetic",
                args.shots,
            )
            print(f"    --tune searches: {', '.join(f'{k} {_distribution(v)}' for k, v in space.items())}")
        else:
            print("    --tune searches: nothing (runs at its defaults in a tuned grid)")
    return 0


def _method_json(registry, name: str, dataset: str | None, shots: int) -> dict:
    """One method for ``bench methods --json``: version, origin, summary, config defaults (of the cell with
    ``dataset``), what --as-published sets and what --tune searches."""
    from bench.tuning import search_distributions, searchable

    method = registry.get(name)()
    doc = (type(method).__doc__ or sys.modules[type(method).__module__].__doc__ or "").strip().splitlines()
    config = method.default_config(dataset, shots) if dataset else method.Config()
    space = search_distributions(method, config, dataset or "synthetic", shots) if searchable(method) else {}
    return {
        "name": name,
        "version": str(method.version),
        "origin": registry.origin(name),
        "summary": doc[0] if doc else "",
        "config": dataclasses.asdict(config),
        "per_cell_defaults": _per_cell_defaults(method),
        "as_published": dict(getattr(method, "as_published", {})),
        "search": {k: _distribution(v) for k, v in space.items()},
    }


def _distribution(distribution) -> str:
    """An Optuna distribution as ``[low, high]`` (``log``) or ``{a, b}``."""
    if hasattr(distribution, "choices"):
        return "{" + ", ".join(map(repr, distribution.choices)) + "}"
    return f"[{distribution.low:g}, {distribution.high:g}]" + (
        " log" if getattr(distribution, "log", False) else ""
    )


def _per_cell_defaults(method) -> list[str]:
    """Config fields whose default depends on the dataset or the shots (paper defaults per cell)."""
    generic = method.default_config("synthetic", 16)
    probes = [
        (dataset, shots)
        for dataset in ("imagenet", "dtd", "eurosat", "oxford_flowers")
        for shots in (1, 2, 16)
    ]
    return [
        f.name
        for f in dataclasses.fields(generic)
        if any(getattr(method.default_config(d, k), f.name) != getattr(generic, f.name) for d, k in probes)
    ]


# One line per feature command, so `bench --help` lists them without importing their modules (which import
# torch): a command's module is imported only when that command runs. A module of FEATURE_COMMANDS missing
# here is imported for every command line (slow, but it works).
LAZY_COMMANDS: dict[str, dict[str, str]] = {
    "bench.tools.demo": {
        "demo": "pretrain a small CLIP on real images, run few-shot methods on its rare classes, "
        "print the report"
    },
    "bench.reports.command": {"report": "tables, curves, paper deltas and paired tests from result records"},
    "bench.datasets.cli": {"data": "list, check and prepare datasets; export few-shot index files"},
    "bench.slurm.cli": {"status": "progress of a sweep submitted with --executor slurm|processes|debug"},
    "bench.tools.perf": {"perf": "benchmark extraction and per-cell training speed against re-encoding"},
    "bench.weights": {"weights": "pre-download backbone weights (for offline nodes) or show where they are"},
    "bench.reports.export": {
        "export": "result records into W&B (offline), MLflow (file store) or TensorBoard event files"
    },
}
CORE_COMMANDS = {
    "run": "run methods × datasets × shots × seeds; finished cells are skipped",
    "methods": "list methods with their config fields and defaults",
}
EXIT_OK, EXIT_FAILED_CELLS, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_PIPE = 0, 1, 2, 130, 141
EXIT_CODES = f"""exit status:
  {EXIT_OK}    success
  {EXIT_FAILED_CELLS}    bench run (or a sweep) finished, but some cells failed (their records say why)
  {EXIT_USAGE}    usage error: a bad option, value, name or file (one line on stderr, nothing run)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C, SIGINT); finished cells are kept and skipped next time
  {EXIT_PIPE}  the reader of stdout went away (bench report | head)

shell completion: pip install 'clip-fewshot-bench[completion]' (argcomplete), then
  eval "$(register-python-argcomplete bench)"
"""
ALL_COMMANDS = None  # build_parser(ALL_COMMANDS): every subcommand in full (completion, docs, tests)


def build_parser(command: str | None = ALL_COMMANDS) -> argparse.ArgumentParser:
    """The ``bench`` parser. With ``command``, only that subcommand is built in full and the others are
    one-line entries (their modules are not imported); ``bench --help`` passes ``""``: none in full."""
    import bench

    parser = argparse.ArgumentParser(
        prog="bench",
        description="Few-shot CLIP adaptation benchmark harness.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (also after the command)")
    parser.add_argument("--version", action="version", version=f"bench {bench.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    full = (lambda name: True) if command is ALL_COMMANDS else (lambda name: name == command)
    for name, add in (("run", _add_run), ("methods", _add_methods)):
        if full(name):
            add(sub)
        else:
            sub.add_parser(name, help=CORE_COMMANDS[name], add_help=False)
    for module in FEATURE_COMMANDS:
        names = LAZY_COMMANDS.get(module)
        if names is None or any(full(name) for name in names):
            importlib.import_module(module).add_parser(sub)
        else:
            for name, text in names.items():
                sub.add_parser(name, help=text, add_help=False)
    _accept_global_options(parser)
    return parser


def _accept_global_options(parser: argparse.ArgumentParser) -> None:
    """``-v`` after the command too (``bench run -v``), in every subcommand and sub-subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                if not {"-v", "--verbose"} & set(child._option_string_actions):
                    child.add_argument(
                        "-v",
                        "--verbose",
                        action="store_true",
                        default=argparse.SUPPRESS,
                        help="debug logging",
                    )
                _accept_global_options(child)


def _command_of(argv: list[str]) -> str | None:
    """The subcommand ``argv`` names (its first word that is not an option); ``""`` for none, and
    :data:`ALL_COMMANDS` for an unknown word (argparse then says what the choices are)."""
    known = {*CORE_COMMANDS, *(n for names in LAZY_COMMANDS.values() for n in names)}
    for token in argv:
        if not token.startswith("-"):
            return token if token in known else ALL_COMMANDS
    return ""


# errors the machine gives for a file the user named or a disk it filled: one line, not a traceback
_ENVIRONMENT_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.EISDIR,
        errno.ENOTDIR,
        errno.ENAMETOOLONG,
        errno.EEXIST,
    }
)


def environment_error(exc: OSError) -> BenchError:
    """``exc`` (a full disk, a read-only or unwritable path) as a :class:`BenchError` naming the file."""
    fix = (
        "free space (or quota) on that disk, then run the same command again: finished work is kept"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT)
        else "pass a path you can write to (a folder for --plot)"
    )
    return BenchError(
        exc.strerror or type(exc).__name__, where=None if exc.filename is None else str(exc.filename), fix=fix
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(ALL_COMMANDS if "_ARGCOMPLETE" in os.environ else _command_of(argv))
    _autocomplete(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `bench report | head`: the reader left; say nothing more (Python's recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE
    except OSError as exc:
        if exc.errno not in _ENVIRONMENT_ERRNOS:
            raise
        print(f"bench: error: {environment_error(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("bench: interrupted; finished cells are saved and will be skipped next time", file=sys.stderr)
        return EXIT_INTERRUPTED


def _autocomplete(parser: argparse.ArgumentParser) -> None:
    """Shell completion through argcomplete where it is installed (the ``completion`` extra); else nothing."""
    if "_ARGCOMPLETE" not in os.environ:
        return
    try:
        import argcomplete
    except ImportError:
        return
    argcomplete.autocomplete(parser)


if __name__ == "__main__":
    sys.exit(main())
