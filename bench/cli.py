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
import logging
import os
import sys
from pathlib import Path

from bench.errors import BenchError

# Subcommands that live beside their feature: each module has ``add_parser(subparsers)``.
FEATURE_COMMANDS: tuple[str, ...] = (
    "bench.demo",
    "bench.reports.command",
    "bench.datasets.cli",
    "bench.slurm.cli",
    "bench.perf",
    "bench.weights",
)
DEFAULT_METHODS = "zero_shot,linear_probe,coop,clip_adapter"  # the four methods of the CLIP-Adapter paper
DEFAULT_DATASETS = "synthetic"


def _env_path(var: str, default: str) -> Path:
    return Path(os.environ.get(var, default))


def _add_paths(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("folders (also set by BENCH_DATA_ROOT, BENCH_CACHE_DIR, BENCH_RESULTS_DIR)")
    group.add_argument("--data-root", type=Path, default=_env_path("BENCH_DATA_ROOT", "data"),
                       help="datasets live in DATA_ROOT/<dataset folder> (default: ./data)")
    group.add_argument("--cache-dir", type=Path, default=_env_path("BENCH_CACHE_DIR", "cache"),
                       help="features, few-shot indices (default: ./cache)")
    group.add_argument("--results", type=Path, default=_env_path("BENCH_RESULTS_DIR", "results"),
                       help="one JSON record per cell (default: ./results)")


def _add_run(sub) -> None:
    from bench.spec import DEFAULT_BACKBONE, PROTOCOLS, TUNE_MODES

    p = sub.add_parser("run", help="run methods × datasets × shots × seeds; finished cells are skipped",
                       description="Run a grid of cells. Cells with an ok record are skipped (resume); --force redoes them.")
    p.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma list, fnmatch patterns or 'all' (default: {DEFAULT_METHODS})")
    p.add_argument("--datasets", default=DEFAULT_DATASETS,
                   help="comma list, fnmatch patterns or 'all' (the eleven few-shot datasets; default: synthetic)")
    p.add_argument("--protocol", default="fewshot", choices=PROTOCOLS,
                   help="fewshot (all classes) or base2new (CoCoOp: train on the first half of the classes, "
                        "score base and new classes)")
    p.add_argument("--shift", default="", metavar="SETS",
                   help="also score imagenet cells on these distribution-shift sets: comma list of imagenet_v2, "
                        "imagenet_sketch, imagenet_a, imagenet_r, or 'all' (those whose data is present)")
    p.add_argument("--shots", default="all", help="comma list or 'all' = 1,2,4,8,16")
    p.add_argument("--seeds", default="1,2,3", help="comma list (default: 1,2,3)")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE,
                   help="ARCH/WEIGHTS, comma-separated for several: RN50/openai, ViT-B-16/laion2b_s34b_b88k, "
                        f"ARCH/random, ARCH//path/to/ckpt.pt (default: {DEFAULT_BACKBONE})")
    p.add_argument("--tune", default="none", choices=TUNE_MODES,
                   help="hyperparameter search: none (paper defaults), val (Optuna on the few-shot val split), "
                        "oracle (scored on test; results labelled ORACLE)")
    p.add_argument("--trials", type=int, default=0, help="finished trials per study with --tune val|oracle (e.g. 20)")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="Optuna study storage: an RDB URL (postgresql://..., sqlite:///FILE) or journal:PATH for "
                        "shared filesystems (default: sqlite in the results folder)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="METHOD.FIELD=VALUE",
                   help="override a method config field, e.g. clip_adapter.alpha=0.5 (repeatable)")
    p.add_argument("--as-published", action="store_true",
                   help="set every selected method to its official code's behaviour where ours differs (each "
                        "method's as_published overrides, e.g. tip_adapter_f.precision=fp16; see docs/fidelity.md); "
                        "they act as --set items, recorded and shown in report rows; an explicit --set wins")
    p.add_argument("--sampling", default="dassl", choices=("dassl", "dassl_repeat"),
                   help="few-shot subsets: dassl (Dassl's default: a class smaller than K is taken whole) or "
                        "dassl_repeat (Dassl's repeat=True: drawn with replacement to K); recorded as split_protocol")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="encoder precision (auto: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--workers", type=_non_negative_int, default=None, help="image-decoding processes (default: min(8, CPUs) on CUDA, 0 on CPU)")
    p.add_argument("--batch-size", type=_positive_int, default=128, help="images per encoder forward during feature extraction")
    p.add_argument("--force", action="store_true", help="redo cells that already have a record")
    p.add_argument("--dry-run", action="store_true", help="print the cells and how many are done, then exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_paths(p)
    importlib.import_module("bench.slurm.cli").add_run_arguments(p)  # --executor and the cluster-sweep flags
    p.set_defaults(func=_cmd_run)


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
    overrides = [*as_published_overrides(methods), *args.overrides] if args.as_published else args.overrides
    return expand_grid(methods, datasets, shots, seeds, backbones, tune=args.tune, trials=args.trials,
                       overrides=parse_overrides(overrides), protocol=args.protocol, shift=shift)


def as_published_overrides(methods) -> list[str]:
    """``--set`` items (``METHOD.FIELD=VALUE``) of each method's ``as_published`` mapping, for --as-published.

    They come before the user's own items, so an explicit ``--set`` of the same field wins.
    """
    import json

    from bench.methods import method_registry

    registry = method_registry()
    return [f"{name}.{field}={json.dumps(value)}" for name in methods
            for field, value in sorted(getattr(registry.get(name), "as_published", {}).items())]


def _run_options(args):
    import torch

    from bench.features import ExtractOptions
    from bench.runner import RunOptions

    workers = args.workers
    if workers is None:
        workers = min(8, os.cpu_count() or 1) if torch.cuda.is_available() and args.device != "cpu" else 0
    return RunOptions(
        data_root=args.data_root, cache_root=args.cache_dir, results_root=args.results, device=args.device,
        precision=args.precision, extract=ExtractOptions(batch_size=args.batch_size, num_workers=workers,
                                                         progress=not args.no_progress),
        force=args.force, progress=not args.no_progress, storage=args.storage,
        sampling=args.sampling,
    )


def _cmd_run(args) -> int:
    from bench.runner import Session, is_done, plan_cells, run_cells
    from bench.slurm.cli import run_sweep, sweep_requested

    specs = _specs_from_args(args)
    options = _run_options(args)
    if sweep_requested(args):  # --executor processes|debug|slurm: the same cells as jobs
        return run_sweep(args, specs, options)
    session = Session(options)
    if args.dry_run:
        from bench.build_plan import locate_backbones

        for line in locate_backbones([s.backbone for s in specs], download=False):
            print(f"backbone {line}")
        cells = plan_cells(specs, session, dry_run=True)  # reads only: works on a read-only results folder
        done = sum(is_done(c) for c in cells)
        for cell in cells:
            print(f"{'done' if is_done(cell) else 'todo'}  {cell.spec.name}  {cell.spec.backbone}  -> {cell.path}")
        print(f"{len(cells)} cells, {done} done, {len(cells) - done} to run")
        return 0
    summary = run_cells(specs, options, session)
    print(f"{len(summary.ran)} cells run, {len(summary.skipped)} already done (resumed), {len(summary.failed)} failed; "
          f"records in {args.results}")
    if summary.deferred:
        print(f"{len(summary.deferred)} tuned cells are finished by the worker that completed their study")
    if summary.busy:
        print(f"{len(summary.busy)} cells left to another runner that holds their locks (rerun to pick up any it drops)")
    for name, error in summary.failed:
        print(f"FAILED {name}: {error}", file=sys.stderr)
    return 1 if summary.failed else 0


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative; pass 0 (decode in this process) or more")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number; pass 1 or more")
    return value


def _add_methods(sub) -> None:
    p = sub.add_parser("methods", help="list methods with their config fields and defaults",
                       description="Methods with their config fields and defaults; with --dataset, the defaults "
                                   "of that cell (per-dataset ratios, epochs by shots) and what --tune searches.")
    p.add_argument("names", nargs="?", default="all", help="method name(s), comma-separated, or 'all'")
    p.add_argument("--dataset", help="show the defaults default_config gives this dataset's cells")
    p.add_argument("--shots", type=int, default=16, help="with --dataset: the shot count (default: 16)")
    p.set_defaults(func=_cmd_methods)


def _cmd_methods(args) -> int:
    from bench.methods import method_registry
    from bench.tuning import search_distributions, searchable

    registry = method_registry()
    if args.dataset:
        from bench.datasets import dataset_registry

        dataset_registry().get(args.dataset)  # an unknown name fails with did-you-mean
    for name in registry.expand(args.names):
        method = registry.get(name)()
        doc = (type(method).__doc__ or sys.modules[type(method).__module__].__doc__ or "").strip().splitlines()
        print(f"{name} (v{method.version}, {registry.origin(name)}): {doc[0] if doc else ''}")
        cell = method.default_config(args.dataset, args.shots) if args.dataset else None
        for f in dataclasses.fields(method.Config):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if cell is not None and getattr(cell, f.name) != default:
                print(f"    {f.name} = {getattr(cell, f.name)!r}  ({args.dataset}, {args.shots} shots; "
                      f"class default {default!r})")
            else:
                print(f"    {f.name} = {default!r}")
        published = getattr(method, "as_published", {})
        if published:
            print(f"    --as-published sets: {', '.join(f'{k}={v!r}' for k, v in sorted(published.items()))}")
        varying = _per_cell_defaults(method)
        if varying and cell is None:
            print(f"    (per dataset/shots, default_config sets: {', '.join(varying)}; see --dataset)")
        if searchable(method):
            space = search_distributions(method, cell or method.default_config("synthetic", args.shots),
                                         args.dataset or "synthetic", args.shots)
            print(f"    --tune searches: {', '.join(f'{k} {_distribution(v)}' for k, v in space.items())}")
        else:
            print("    --tune searches: nothing (runs at its defaults in a tuned grid)")
    return 0


def _distribution(distribution) -> str:
    """An Optuna distribution as ``[low, high]`` (``log``) or ``{a, b}``."""
    if hasattr(distribution, "choices"):
        return "{" + ", ".join(map(repr, distribution.choices)) + "}"
    return f"[{distribution.low:g}, {distribution.high:g}]" + (" log" if getattr(distribution, "log", False) else "")


def _per_cell_defaults(method) -> list[str]:
    """Config fields whose default depends on the dataset or the shots (paper defaults per cell)."""
    generic = method.default_config("synthetic", 16)
    probes = [(dataset, shots) for dataset in ("imagenet", "dtd", "eurosat", "oxford_flowers") for shots in (1, 2, 16)]
    return [f.name for f in dataclasses.fields(generic)
            if any(getattr(method.default_config(d, k), f.name) != getattr(generic, f.name) for d, k in probes)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench", description="Few-shot CLIP adaptation benchmark harness.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_methods(sub)
    for module in FEATURE_COMMANDS:
        importlib.import_module(module).add_parser(sub)
    return parser


# errors the machine gives for a file the user named or a disk it filled: one line, not a traceback
_ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR,
                                 errno.ENOTDIR, errno.ENAMETOOLONG, errno.EEXIST})


def environment_error(exc: OSError) -> BenchError:
    """``exc`` (a full disk, a read-only or unwritable path) as a :class:`BenchError` naming the file."""
    fix = ("free space (or quota) on that disk, then run the same command again: finished work is kept"
           if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "pass a path you can write to (a folder for --plot)")
    return BenchError(exc.strerror or type(exc).__name__, where=None if exc.filename is None else str(exc.filename),
                      fix=fix)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in _ENVIRONMENT_ERRNOS:
            raise
        print(f"bench: error: {environment_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted; finished cells are saved and will be skipped next time", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `bench report | head`: the reader left; say nothing more (Python's recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
