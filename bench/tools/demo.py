"""``bench demo``: the harness on real images with a meaningful CLIP, on a fresh machine with no network.

1. Source: Debian's Fashion-MNIST, or scikit-learn's digits where the package is absent (said so).
2. Target dataset: the five classes that are rare in pretraining, in CoOp layout
   (``fashion_mnist_fewshot`` or ``digits_fewshot``, :mod:`bench.datasets.demo_data`), generated
   under the data root from images the pretraining does not use.
3. Backbone: a small CLIP pretrained here on all ten classes' captions, five of them rare
   (:mod:`bench.tools.demo_clip`), cached under ``<cache>/demo_clip`` by its recipe digest:
   ``bench-demo/<checkpoint path>``.
4. The grid: zero-shot, linear probe, CoOp and CLIP-Adapter, 1–16 shots, three
   seeds, through the ordinary runner (records under ``--results``, finished cells resumed).
5. The report of exactly these cells, plus the method × shots curve table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from bench.datasets.demo_data import SOURCES, fashion_mnist_available, fashion_mnist_dir
from bench.errors import BenchError
from bench.fileio import ensure_writable_dir

DEMO_METHODS = ("zero_shot", "linear_probe", "coop", "clip_adapter")
TARGET_DATASET = {"fashion_mnist": "fashion_mnist_fewshot", "digits": "digits_fewshot"}


def add_parser(subparsers) -> None:
    from bench.cli import add_folder_options

    p = subparsers.add_parser(
        "demo",
        help="pretrain a small CLIP on real images, run few-shot methods on its rare classes, print the report",
        description="The embedded demo: Fashion-MNIST (Debian dataset-fashion-mnist) or scikit-learn digits, "
        "a CLIP pretrained here (cached) on which five of the ten classes are rare, and zero-shot / "
        "linear probe / CoOp / CLIP-Adapter on those five at 1-16 shots and 3 seeds.",
    )
    p.add_argument(
        "--source",
        default="auto",
        choices=("auto", *SOURCES),
        help="image source (auto: Fashion-MNIST if installed, else digits)",
    )
    p.add_argument(
        "--methods",
        default=",".join(DEMO_METHODS),
        help="comma list of methods (default: the four paper methods)",
    )
    p.add_argument("--shots", default="all", help="comma list or 'all' = 1,2,4,8,16")
    p.add_argument("--seeds", default="1,2,3", help="comma list (default: 1,2,3)")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="pretraining steps (default: the source's recipe; another value trains another checkpoint)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1")
    p.add_argument("--force", action="store_true", help="redo cells that already have a record")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_folder_options(p)
    p.set_defaults(func=run)


def choose_source(requested: str) -> tuple[str, str | None]:
    """(source name, notice to print or None): ``auto`` is Fashion-MNIST when installed, else digits."""
    if requested != "auto":
        return requested, None
    if fashion_mnist_available():
        return "fashion_mnist", None
    return "digits", (
        f"notice: Fashion-MNIST not found in {fashion_mnist_dir()} (Debian package "
        "dataset-fashion-mnist); falling back to scikit-learn digits, so the target is "
        "digits_fewshot and the numbers differ from the README's Fashion-MNIST table"
    )


def run(args: argparse.Namespace) -> int:
    from bench.backbone import resolve_device
    from bench.features import ExtractOptions
    from bench.methods import method_registry
    from bench.runner import RunOptions, Session, plan_cells, run_cells
    from bench.spec import ALL_SHOTS, expand_grid, parse_int_list
    from bench.tools.demo_clip import DEMO_ARCH, ensure_demo_clip, recipe_for

    t0 = time.perf_counter()
    if args.steps is not None and args.steps < 1:
        raise BenchError(
            f"--steps {args.steps}: pretraining needs at least one step",
            where="--steps",
            fix="leave it out for the source's recipe, or pass a positive number",
        )
    for folder, purpose in ((args.results, "results"), (args.cache_dir, "cache")):
        ensure_writable_dir(Path(folder), purpose=purpose)  # before minutes of pretraining, not after
    source, notice = choose_source(args.source)
    if notice:
        print(notice)
    methods = method_registry().expand(args.methods)  # a misspelt name: one line with did-you-mean
    dataset = TARGET_DATASET[source]
    shots = parse_int_list(args.shots, flag="--shots", all_value=ALL_SHOTS)
    seeds = parse_int_list(args.seeds, flag="--seeds")
    options = RunOptions(
        data_root=args.data_root,
        cache_root=args.cache_dir,
        results_root=args.results,
        device=args.device,
        extract=ExtractOptions(progress=not args.no_progress),
        force=args.force,
        progress=not args.no_progress,
    )
    session = Session(options)
    splits = session.splits(dataset)  # generates the target dataset on first use
    recipe = recipe_for(source, args.steps)
    path, log = ensure_demo_clip(
        recipe, args.cache_dir, resolve_device(args.device), progress=not args.no_progress
    )
    print(_pretraining_line(recipe, path, log))
    print(
        f"target: {dataset}, the rare classes, on images pretraining never saw: {', '.join(splits.classnames)} "
        f"({len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test images)"
    )
    specs = expand_grid(methods, [dataset], shots, seeds, [f"{DEMO_ARCH}/{path}"])
    summary = run_cells(specs, options, session)
    print(
        f"{len(summary.ran)} cells run, {len(summary.skipped)} already done (resumed), {len(summary.failed)} failed; "
        f"records in {args.results}; {time.perf_counter() - t0:.0f} s in all\n"
    )
    print(report(plan_cells(specs, session), args.results))
    return 1 if summary.failed else 0


def _pretraining_line(recipe, path, log: dict | None) -> str:
    source = SOURCES[recipe.source]
    rare = [source.classnames[c] for c in source.target_classes]
    what = (
        f"demo CLIP: pretrained on {recipe.source} captions, {', '.join(rare)} rare "
        f"({source.rare_images} images each), {recipe.steps} steps"
    )
    if log is None:
        return f"{what}; cached: {path}"
    return (
        f"{what}, {log['train_s']:.0f} s on {log['device']}; zero-shot top-1 on the common classes' test images "
        f"{100 * log['zero_shot_top1_common_classes']:.1f}%; saved: {path}"
    )


def report(cells, results_root) -> str:
    """Top-1 curves of ``cells``' records: rows = method, columns = shots, mean ± std over seeds (markdown)."""
    from bench.reports import aggregate, results_frame
    from bench.results import read_result

    records = [read_result(c.path) for c in cells if c.path.is_file()]
    frame = results_frame(records)
    ok = frame[frame["status"] == "ok"]
    if ok.empty:
        return "no finished cells"
    first = next(r for r in records if r.ok)
    stats = aggregate(ok).set_index(["method", "shots"])
    shots = sorted(ok["shots"].unique())
    methods = [m for m in DEMO_METHODS if m in set(ok["method"])] + sorted(
        set(ok["method"]) - set(DEMO_METHODS)
    )

    def cell(method: str, k: int) -> str:
        if (method, k) not in stats.index:
            return "—"
        row = stats.loc[(method, k)]
        return f"{row['mean']:.1f} ± {row['std']:.1f}"

    table = pd.DataFrame(
        {f"{k} shot{'s' if k > 1 else ''}": [cell(m, k) for m in methods] for k in shots},
        index=pd.Index(methods, name="method"),
    )
    seeds = ", ".join(map(str, sorted(ok["seed"].unique())))
    return (
        f"## {first.spec.dataset}: top-1 (%) on its {first.data.n_test} test images\n\n"
        f"Backbone `{first.backbone.id}` (weights sha256 `{first.backbone.weights_sha256[:12]}`), "
        f"tuning: {first.spec.tune} (paper defaults), mean ± std over seeds {seeds}.\n\n"
        f"{table.to_markdown(disable_numparse=True)}\n\nEvery cell's record: `bench report --results {results_root}`.\n"
    )
