"""``bench report``: result records -> tables in five formats, curves, paper deltas, paired tests."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.errors import BenchError

EXAMPLES = """examples:
  bench report                                    # markdown to stdout
  bench report --format latex --out table.tex     # booktabs tables for a paper (bold best, \\label)
  bench report --format latex --no-std --decimals 1 --names names.json
  bench report --datasets dtd,eurosat --shots 16 --ci
  bench report --compare paper --tolerance 1.0    # published number and delta per cell
  bench report --compare-methods clip_adapter,linear_probe
  bench report --plot figures/                    # accuracy-vs-shots curves (PNG, SVG, PDF; all.pdf: one figure)
  bench report --params alpha                     # the α --tune chose, per dataset × shots
"""


def add_parser(subparsers) -> None:
    from bench.reports.aggregate import MIXABLE
    from bench.reports.blocks import METRIC_TITLES
    from bench.reports.formats import FORMATS
    from bench.reports.tables import CI_CHOICES
    from bench.run_config import add_folder_argument

    p = subparsers.add_parser(
        "report",
        help="tables, curves, paper deltas and paired tests from result records",
        description="Aggregate result records (mean ± std over seeds) into tables, curves and "
        "comparisons. Reads the JSON records only.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--format", default="markdown", choices=FORMATS)
    p.add_argument("--out", type=Path, default=None, help="write to this file instead of stdout")
    add_folder_argument(p, "results", "results folder")
    which = p.add_argument_group("which records (comma lists; names accept fnmatch patterns)")
    which.add_argument("--methods", help="method names or labels, e.g. zero_shot,clip_adapter*")
    which.add_argument("--datasets", help="e.g. dtd,eurosat")
    which.add_argument("--shots", help="e.g. 1,16")
    which.add_argument("--backbone", help="backbone ids or architectures, e.g. RN50/openai or ViT-B-*")
    which.add_argument("--tune", help="tuning modes: none, val, oracle")
    which.add_argument("--seeds", help="keep these seeds; a cell with fewer of them is marked incomplete")
    show = p.add_argument_group("what to show")
    show.add_argument("--metric", default="top1", choices=tuple(METRIC_TITLES))
    show.add_argument(
        "--ci",
        nargs="?",
        const="coop",
        default=None,
        choices=CI_CHOICES,
        help="show a 95%% CI instead of the std: coop = 1.96·σ/√n (CoOp's --ci95, the default), "
        "t = Student t with the sample std",
    )
    show.add_argument(
        "--names",
        default=None,
        metavar="FILE|ids",
        help="method names as printed: a JSON object file mapping a method or row label to its name "
        "(merged over the built-in Zero-shot CLIP, Linear probe, CoOp, CLIP-Adapter, ...), or "
        "'ids' for the registry identifiers",
    )
    show.add_argument("--decimals", type=int, default=2, help="digits after the point in tables (default: 2)")
    show.add_argument(
        "--std",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="show ± the spread over seeds (default) or, with --no-std, the means only",
    )
    show.add_argument(
        "--highlight",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="bold the best and underline the second mean per column among rows of the same shots",
    )
    show.add_argument(
        "--allow-mixed",
        default="",
        metavar="SETTINGS",
        help=f"average cells that differ in these settings ({', '.join(MIXABLE)}, or all); "
        "the header says so",
    )
    show.add_argument(
        "--params",
        default=None,
        metavar="NAMES",
        help="instead of accuracy: the hyperparameters tuning chose (e.g. alpha or alpha,beta) per "
        "dataset × shots, median over seeds (markdown, csv or json)",
    )
    show.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write accuracy-vs-shots curves (PNG, SVG and PDF) per dataset, for the average, "
        "and all.*: every panel in one figure (CoOp's Figure 3 layout)",
    )
    cmp = p.add_argument_group("comparisons")
    cmp.add_argument(
        "--compare",
        choices=("paper",),
        default=None,
        help="paper: add the published number, Δ and a flag per cell (reports/data/paper_numbers.json)",
    )
    cmp.add_argument(
        "--tolerance", type=float, default=1.0, help="flag |Δ| above this many points (default: 1.0)"
    )
    cmp.add_argument(
        "--paper-source", default=None, help="only these sources of the paper-numbers file (comma list)"
    )
    cmp.add_argument(
        "--paper-file", type=Path, default=None, help="your own paper-numbers file (same format)"
    )
    cmp.add_argument(
        "--compare-methods",
        default=None,
        metavar="A,B",
        help="paired comparison of two rows over seeds and datasets (Wilcoxon signed-rank, paired t)",
    )
    p.set_defaults(func=run)


def _names(text: str | None) -> tuple[str, ...] | None:
    return tuple(v.strip() for v in text.split(",") if v.strip()) if text else None


def options_from_args(args):
    """The :class:`~bench.reports.tables.ReportOptions` the flags describe."""
    from bench.reports.aggregate import MIXABLE, Filters
    from bench.reports.tables import ReportOptions
    from bench.spec import ALL_SHOTS, parse_int_list

    filters = Filters(
        methods=_names(args.methods),
        datasets=_names(args.datasets),
        backbones=_names(args.backbone),
        tune=_names(args.tune),
        shots=parse_int_list(args.shots, flag="--shots", all_value=ALL_SHOTS) if args.shots else None,
        seeds=parse_int_list(args.seeds, flag="--seeds") if args.seeds else None,
    )
    mixed = _names(args.allow_mixed) or ()
    mixed = MIXABLE if mixed == ("all",) else mixed
    pair = _names(args.compare_methods)
    if pair is not None and len(pair) != 2:
        raise BenchError(
            f"{args.compare_methods!r} does not name two rows",
            where="--compare-methods",
            fix="write A,B, e.g. clip_adapter,linear_probe",
        )
    if args.tolerance < 0:
        raise BenchError("the tolerance must not be negative", where="--tolerance", fix="write e.g. 1.0")
    return ReportOptions(
        metric=args.metric,
        ci=args.ci,
        filters=filters,
        allow_mixed=frozenset(mixed),
        compare_paper=args.compare == "paper",
        tolerance=args.tolerance,
        paper_file=args.paper_file,
        paper_sources=_names(args.paper_source),
        compare_methods=pair,
        names=method_names(args.names),
        decimals=args.decimals,
        spread=args.std,
        highlight=args.highlight,
    )


def method_names(value: str | None) -> dict[str, str]:
    """The display-name map ``--names`` asks for: the built-in names, none (``ids``), or a file's merged over them."""
    import json

    from bench.reports.blocks import METHOD_NAMES

    if value is None:
        return dict(METHOD_NAMES)
    if value == "ids":
        return {}
    path = Path(value)
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BenchError(
            f"cannot read {path}: {exc}",
            where="--names",
            fix='pass a JSON object like {"clip_adapter": "CLIP-Adapter"}, or ids',
        ) from None
    if not isinstance(names, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in names.items()
    ):
        raise BenchError(
            f"{path} is not a JSON object of names",
            where="--names",
            fix='write {"method or row label": "printed name", ...}',
        )
    return {**METHOD_NAMES, **names}


def run(args) -> int:
    from bench.fileio import atomic_write_bytes
    from bench.reports.aggregate import results_frame
    from bench.reports.plots import write_plots
    from bench.reports.tables import prepare, render
    from bench.results import load_results

    options = options_from_args(args)
    if args.params:
        text = _params_report(args)
    else:
        results = load_results(args.results)
        frame = results_frame(results)
        text = render(frame, args.format, options)
    if args.out:
        atomic_write_bytes(args.out, text.encode())
        sys.stderr.write(f"wrote {args.out}\n")
    else:
        sys.stdout.write(text)
    if args.plot and not args.params:
        paths = write_plots(prepare(frame, options), args.plot, options.metric, options.ci, options.names)
        sys.stderr.write(f"wrote {len(paths)} plot files under {args.plot}\n")
    if not args.params:  # after the outputs: a report that fails says one line, its error
        sys.stderr.write(wall_time_line(results, args.results))
    return 0


def wall_time_line(results, results_root) -> str:
    """One line for stderr: the grid's wall time, its cells' ``timing_s.total`` plus the feature pre-passes
    that prepared them (:func:`bench.results.grid_wall_seconds`; issue 23)."""
    from bench.results import grid_wall_seconds, load_extraction_passes

    wall = grid_wall_seconds(results, load_extraction_passes(results_root))
    return (
        f"grid wall time: {wall['total']:.1f} s = {wall['cells']:.1f} s in {len(results)} cells + "
        f"{wall['extraction']:.1f} s feature extraction (pre-pass)\n"
    )


def _params_report(args) -> str:
    from bench.reports.params import FORMATS, params_frame, render_params
    from bench.results import load_results

    if args.format not in FORMATS:
        raise BenchError(
            f"--params tables come as {', '.join(FORMATS)}, not {args.format}",
            where="--format",
            fix=f"use --format {FORMATS[0]}",
        )
    return render_params(params_frame(load_results(args.results), _names(args.params)), args.format)
