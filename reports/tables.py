"""Build the report: one section per table of settings that may be averaged together.

A section has the accuracy table (rows method × shots, columns datasets and their
average), the shots-by-method average panel (as the CLIP-Adapter paper's), the
distribution-shift table and the base-to-new table when the records have those metrics,
and, on request, the comparison with published numbers and the paired method comparison.
:func:`render` turns it into markdown, LaTeX, HTML, CSV or JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.errors import BenchError
from bench.reports import sections
from bench.reports.aggregate import (
    NO_GENERATION,
    Filters,
    aggregate,
    dataset_average,
    expected_seeds,
    filter_frame,
    holes,
    in_table,
    mix_settings,
    spread,
    table_keys,
    table_settings,
)
from bench.reports.blocks import (
    METHOD_NAMES,
    METRIC_TITLES,
    STANDARD_DATASETS,
    TUNE_TITLES,
    Block,
    Report,
    dataset_sort_key,
    dataset_title,
    display_name,
    emphasis,
    is_shot_free,
    mean_pm,
    method_sort_key,
    number,
)
from bench.reports.formats import FORMATS, render_report
from bench.reports.paper import load_paper_numbers

CI_CHOICES = ("coop", "t")
SPREAD_TEXT = {
    None: "± the population standard deviation over seeds (np.std, as CoOp's parse_test_res.py)",
    "coop": "± the 95% confidence half-width 1.96·σ/√n over the n seeds, σ the population standard deviation "
    "(CoOp's parse_test_res.py --ci95; a normal approximation, narrow for 3 seeds)",
    "t": "± the 95% confidence half-width t(0.975, n−1)·s/√n over the n seeds, s the sample standard deviation "
    "(Student t; undefined for one seed)",
}


@dataclass(frozen=True)
class ReportOptions:
    """What a report shows. ``ci``: None shows the std; ``"coop"`` or ``"t"`` a 95% CI instead."""

    metric: str = "top1"
    ci: str | None = None
    filters: Filters = field(default_factory=Filters)
    allow_mixed: frozenset[str] = frozenset()
    compare_paper: bool = False
    tolerance: float = 1.0
    paper_file: Path | None = None
    paper_sources: tuple[str, ...] | None = None
    compare_methods: tuple[str, str] | None = None
    names: dict[str, str] = field(default_factory=lambda: dict(METHOD_NAMES))  # {} shows identifiers
    decimals: int = 2
    spread: bool = True  # False: means only (--no-std)
    highlight: bool = True  # bold best, underlined second per column among rows of the same shots


@dataclass(frozen=True)
class Table:
    """One group of cells that may be averaged together, with what a section needs to show it."""

    key: tuple
    frame: pd.DataFrame  # its records
    cells: pd.DataFrame  # aggregate(frame, options.metric)
    seeds: tuple[int, ...]  # what a complete cell has
    title: str
    options: ReportOptions

    @property
    def settings(self) -> dict:
        return table_settings(self.key)

    @property
    def oracle(self) -> bool:
        return self.settings["tune"] == "oracle"

    @property
    def datasets(self) -> list[str]:
        return sorted(self.frame["dataset"].unique(), key=dataset_sort_key)

    @property
    def labels(self) -> list[str]:
        return sorted(self.frame["label"].unique(), key=method_sort_key)

    def display(self, label: str) -> str:
        name = display_name(label, self.options.names)
        return f"{name} (oracle)" if self.oracle else name

    def number(self, value) -> str:
        return number(value, self.options.decimals)

    def pm(self, values: dict, *, constant_free: bool = False) -> str:
        """``mean ± spread`` of one :func:`~bench.reports.aggregate.spread` dict, marked when incomplete.

        ``constant_free``: a method that sees no training images and gave every seed the same number
        shows the mean alone (its ``± 0.00`` says nothing).
        """
        half = {None: values["std"], "coop": values["ci95"], "t": values["ci95_t"]}[self.options.ci]
        n, expected = int(values["n_seeds"]), len(self.seeds)
        if constant_free and n >= expected and values["std"] == 0:
            return self.number(values["mean"])
        return mean_pm(values["mean"], half, n, expected, self.options.decimals, self.options.spread)


def render(frame: pd.DataFrame, fmt: str = "markdown", options: ReportOptions | None = None) -> str:
    """The report of a :func:`~bench.reports.aggregate.results_frame` in ``fmt``."""
    if fmt not in FORMATS:
        raise BenchError(
            f"unknown report format {fmt!r}", where="--format", fix=f"use one of: {', '.join(FORMATS)}"
        )
    return render_report(build_report(frame, options or ReportOptions()), fmt)


def build_report(frame: pd.DataFrame, options: ReportOptions) -> Report:
    """Sections for every table of ``frame`` (filtered, mixed as allowed), with the JSON/CSV payload."""
    frame = prepare(frame, options)
    paper = (
        load_paper_numbers(options.paper_file, sources=options.paper_sources)
        if options.compare_paper
        else None
    )
    if options.compare_methods:
        sections.check_labels(frame, options.compare_methods, options.metric)
    cells = aggregate(frame, options.metric)
    expected = expected_seeds(frame, options.filters.seeds)
    blocks, tables, long_parts = [], [], []
    for key, title in _titles(frame).items():
        table = Table(key, in_table(frame, key), in_table(cells, key), tuple(expected[key]), title, options)
        table_blocks, payload, long = _section(table, paper)
        blocks += table_blocks
        tables.append(payload)
        long_parts.append(long)
    missing, failed = holes(frame, options.filters.seeds)
    blocks.append(_holes_block(missing, failed))
    long = pd.concat([p for p in long_parts if not p.empty] or [sections.empty_long()], ignore_index=True)
    payload = {
        "report": "bench-report",
        "version": 1,
        "metric": options.metric,
        "units": "percent",
        "spread": SPREAD_TEXT[options.ci],
        "n_records": len(frame),
        "tables": tables,
        "cells": _records(long, "cell"),
        "transfer": _records(long, "transfer"),
        "base2new": _records(long, "base2new"),
        "missing": missing,
        "failed": failed,
    }
    return Report(
        title=f"Few-shot results: {METRIC_TITLES[options.metric].lower()}",
        intro=_intro(options),
        blocks=tuple(blocks),
        payload=payload,
        long=_csv_table(long, tables, options),
    )


def prepare(frame: pd.DataFrame, options: ReportOptions) -> pd.DataFrame:
    """Check the options, keep the records the filters select, merge the settings ``allow_mixed`` names."""
    _check(frame, options)
    return mix_settings(filter_frame(frame, options.filters), options.allow_mixed)


def _check(frame: pd.DataFrame, options: ReportOptions) -> None:
    if frame.empty:
        raise BenchError("no result records found", where="--results", fix="run `bench run` first")
    if options.metric not in METRIC_TITLES:
        raise BenchError(
            f"unknown metric {options.metric!r}",
            where="--metric",
            fix=f"use one of: {', '.join(METRIC_TITLES)}",
        )
    if options.ci not in (None, *CI_CHOICES):
        raise BenchError(
            f"unknown interval {options.ci!r}", where="--ci", fix=f"use one of: {', '.join(CI_CHOICES)}"
        )
    if not 0 <= options.decimals <= 6:
        raise BenchError(f"{options.decimals} decimals", where="--decimals", fix="use 0 to 6")
    if options.compare_paper and options.metric != "top1":
        raise BenchError(
            "published numbers are top-1 accuracies", where="--compare paper", fix="drop --metric or use top1"
        )


def _titles(frame: pd.DataFrame) -> dict[tuple, str]:
    """Table key -> heading; tables whose short heading collides also name weights and preprocessing."""
    short = {}
    for key in table_keys(frame):
        s = table_settings(key)
        protocol = "" if s["protocol"] == "fewshot" else f" · protocol: {s['protocol']}"
        short[key] = f"{s['backbone']} · tuning: {s['tune']}{protocol}"
    counts = pd.Series(list(short.values())).value_counts()
    return {
        key: title
        if counts[title] == 1
        else f"{title} · weights {table_settings(key)['weights_sha256']} · {table_settings(key)['preprocessing']}"
        for key, title in short.items()
    }


def _intro(options: ReportOptions) -> tuple[str, ...]:
    f = options.filters
    chosen = [
        f"--{name} {','.join(map(str, value))}"
        for name, value in (
            ("methods", f.methods),
            ("datasets", f.datasets),
            ("shots", f.shots),
            ("backbone", f.backbones),
            ("tune", f.tune),
            ("seeds", f.seeds),
        )
        if value
    ]
    lines = [
        f"{METRIC_TITLES[options.metric]} (%) on the test split: mean over seeds {SPREAD_TEXT[options.ci]}. "
        "A cell with fewer seeds than its table is marked (n/m seeds); (oracle) marks cells tuned on the test "
        "split. Averages over datasets are the means of the cell means and need every dataset of the table."
    ]
    if chosen:
        lines.append("Records selected with " + " ".join(chosen) + ".")
    if options.allow_mixed:
        lines.append(
            f"--allow-mixed {','.join(sorted(options.allow_mixed))}: cells that differ in these settings "
            "are averaged together; the settings below say which values were mixed."
        )
    return tuple(lines)


def _section(table: Table, paper) -> tuple[list[Block], dict, pd.DataFrame]:
    settings = _settings(table)
    payload = {
        **table.settings,
        "arch": sorted(table.frame["arch"].unique().tolist()),
        "seeds": list(table.seeds),
        "datasets": table.datasets,
        "prompts": _prompt_sets(table),
        "n_records": len(table.frame),
    }
    long = sections.long_cells(table)
    if table.settings["protocol"] == "base2new":
        main, b2n = sections.base2new_block(table, settings)
        blocks, payload["base2new"] = [main], b2n
        long = pd.concat([long, sections.long_base2new(table)], ignore_index=True)
    else:
        average = dataset_average(table.frame, table.cells, table.options.metric)
        shown, marks = accuracy_table(table, average)
        blocks = [
            Block(table.title, 2, settings, _emphasis_note(marks), shown, marks),
            average_block(table, average),
        ]
        payload["averages"] = _average_payload(average)
        long = pd.concat([long, sections.long_averages(table, average)], ignore_index=True)
    shift = sections.transfer_block(table)
    if shift is not None:
        blocks.append(shift)
        long = pd.concat([long, sections.long_transfer(table)], ignore_index=True)
    if table.settings["protocol"] != "fewshot":
        published = None
        if paper is not None and table.settings["protocol"] == "base2new":
            published, payload["paper_base2new"] = sections.base2new_paper_block(table, paper)
        if published is not None:
            blocks.append(published)
            if table.options.compare_methods:
                note = (
                    "The paired comparison covers the few-shot protocol only; these cells are not compared."
                )
                blocks.append(Block("Comparisons", 3, (), (note,)))
        elif paper is not None or table.options.compare_methods:
            blocks.append(Block("Comparisons", 3, (), (_unmatched_protocol_note(table, paper),)))
        return blocks, payload, long
    if paper is not None:
        block, long = sections.paper_block(table, long, paper)
        blocks.append(block)
    if table.options.compare_methods:
        block, payload["method_comparison"] = sections.methods_block(table)
        if block is not None:
            blocks.append(block)
    return blocks, payload, long


def _unmatched_protocol_note(table: Table, paper) -> str:
    """The note of a table of another protocol than few-shot that nothing published matches."""
    paired = "The paired comparison covers the few-shot protocol only; these cells are not compared."
    if paper is None:
        return paired
    frame = table.frame
    published = (
        "No published series matches these cells: a published value matches only cells of the same "
        f"protocol ({table.settings['protocol']}), method, dataset, shots, architecture "
        f"({', '.join(map(str, frame['arch'].unique()))}) and preprocessing generation "
        f"({', '.join(map(str, frame['generation'].unique()))}); an 11-dataset average only a table that "
        "holds all 11."
    )
    return f"{published} {paired}" if table.options.compare_methods else published


def _generation_note(generations: str) -> str:
    if generations == NO_GENERATION:
        return "reproduces no published-number generation"
    return f"published-number generation {generations}"


def _settings(table: Table) -> tuple[tuple[str, str], ...]:
    s, frame = table.settings, table.frame
    prompts = "; ".join(f"{label}: {p}" for label, p in _prompt_sets(table).items())
    generations = ", ".join(sorted(frame["generation"].unique()))
    failed = int((frame["status"] != "ok").sum())
    protocol = {
        "fewshot": "few-shot, all classes",
        "base2new": "base-to-new (train on base classes, test base and new)",
    }
    rows = [
        ("Backbone", f"{s['backbone']} (architecture {', '.join(sorted(frame['arch'].unique()))})"),
        ("Weights sha256", s["weights_sha256"]),
        ("Preprocessing", f"{s['preprocessing']} ({_generation_note(generations)})"),
        ("Prompt sets", prompts),
        ("Tuning", TUNE_TITLES.get(s["tune"], s["tune"])),
        ("Protocol", protocol.get(s["protocol"], s["protocol"])),
        ("Seeds", ", ".join(map(str, table.seeds))),
        ("Records", f"{len(frame)} ({failed} failed)"),
    ]
    mixed = [f"{k}" for k, v in s.items() if str(v).startswith("mixed: ")]
    if any(str(p).startswith("mixed: ") for p in frame["prompts"]):
        mixed.append("prompts")
    if mixed:
        rows.append(("MIXED", f"cells average over differing {', '.join(mixed)} (--allow-mixed)"))
    return tuple(rows)


def _prompt_sets(table: Table) -> dict[str, str]:
    pairs = table.frame[["label", "prompts"]].drop_duplicates()
    return {label: ", ".join(sorted(pairs.loc[pairs["label"] == label, "prompts"])) for label in table.labels}


def accuracy_table(table: Table, average: pd.DataFrame) -> tuple[pd.DataFrame, tuple]:
    """Rows (method, shots), columns datasets then their average; ``—`` where a cell has no result.

    A method that sees no training images (zero-shot CLIP) is one row at 0 shots when its numbers are
    the same at every shot count. Returns the table and its emphasis (:func:`_emphasis`).
    """
    by_cell = {(r["label"], r["dataset"], r["shots"]): r for r in table.cells.to_dict("records")}
    by_row = {(r["label"], r["shots"]): r for r in average.to_dict("records")}
    present = set(map(tuple, table.frame[["label", "shots"]].drop_duplicates().values))
    columns = ["Method", "Shots", *map(dataset_title, table.datasets), "Average"]
    rows, values = [], []
    for label in table.labels:
        shots = [k for k in sorted(table.frame["shots"].unique()) if (label, k) in present]
        once = is_shot_free(label) and _same_at_every_shot(table, by_cell, label, shots)
        for k in shots[:1] if once else shots:
            row = {"Method": table.display(label), "Shots": "0" if once else str(k)}
            means = {}
            for d in table.datasets:
                cell = by_cell.get((label, d, k))
                row[dataset_title(d)] = table.pm(cell, constant_free=is_shot_free(label)) if cell else "—"
                means[dataset_title(d)] = cell["mean"] if cell else None
            means["Average"] = by_row.get((label, k), {}).get("mean")
            row["Average"] = table.number(means["Average"])
            rows.append(row)
            values.append((None if once else k, means))
    return pd.DataFrame(rows, columns=columns), _emphasis(table, values, columns[2:])


def _same_at_every_shot(table: Table, by_cell: dict, label: str, shots: list[int]) -> bool:
    return all(
        len({round(by_cell[(label, d, k)]["mean"], 9) if (label, d, k) in by_cell else None for k in shots})
        == 1
        for d in table.datasets
    )


def _emphasis(table: Table, values: list[tuple], columns: list[str]) -> tuple[tuple[int, str, str], ...]:
    """Per column, among the rows of one shot count (``None``: a shot-free row, not ranked): best and second."""
    if not table.options.highlight:
        return ()
    marks = []
    for column in columns:
        groups: dict = {}
        for position, (group, means) in enumerate(values):
            if group is not None:
                groups.setdefault(group, []).append((position, means.get(column)))
        marks += [(position, column, kind) for position, kind in emphasis(list(groups.values()))]
    return tuple(sorted(marks))


def _emphasis_note(marks: tuple) -> tuple[str, ...]:
    if not marks:
        return ()
    return (
        "Bold: the best mean in its column among the methods trained with the same shots; underlined: the "
        "second (methods that see no training images, such as zero-shot CLIP, are not ranked).",
    )


def average_block(table: Table, average: pd.DataFrame) -> Block:
    """The shots × method panel of dataset averages (CLIP-Adapter's 'average over 11 datasets')."""
    shots = sorted(table.frame["shots"].unique())
    columns = [f"{k}-shot" for k in shots]
    rows, values = [], []
    for label in table.labels:
        row, means = {"Method": table.display(label)}, {}
        for k, column in zip(shots, columns, strict=True):
            found = average[(average["label"] == label) & (average["shots"] == k)]
            row[column] = _average_cell(table, found.iloc[0], label) if len(found) else "—"
            means[column] = (
                found.iloc[0]["mean"] if len(found) and found.iloc[0]["complete_datasets"] else None
            )
        rows.append(row)
        values.append((None if is_shot_free(label) else 0, means))
    n = len(table.datasets)
    which = (
        "the 11 datasets"
        if set(table.datasets) == set(STANDARD_DATASETS)
        else f"{n} dataset{'s' if n != 1 else ''} ({', '.join(map(dataset_title, table.datasets))})"
    )
    note = (
        "Mean of the cell means; ± is taken over the seeds every dataset has, of the per-seed average over "
        "datasets. — where a dataset of the table has no result."
    )
    marks = _emphasis(table, values, columns)
    return Block(
        f"Average over {which}",
        3,
        (),
        (note, *_emphasis_note(marks)),
        pd.DataFrame(rows, columns=["Method", *columns]),
        marks,
    )


def _average_cell(table: Table, row, label: str) -> str:
    if not row["complete_datasets"]:
        return "—"
    per_seed = row["per_seed"]
    if not per_seed:
        return table.number(row["mean"])
    values = {**spread(pd.Series(per_seed).to_numpy()), "mean": row["mean"]}
    values["n_seeds"] = min(len(per_seed), int(row["min_seeds"]))
    return table.pm(values, constant_free=is_shot_free(label))


def _average_payload(average: pd.DataFrame) -> list[dict]:
    out = []
    for r in average.to_dict("records"):
        values = spread(pd.Series(r["per_seed"]).to_numpy()) if r["per_seed"] else {}
        out.append(
            {
                "label": r["label"],
                "shots": int(r["shots"]),
                "mean": _round(r["mean"]),
                "std": _round(values.get("std")),
                "n_seeds_common": len(r["per_seed"]),
                "n_datasets": int(r["n_datasets"]),
                "complete": bool(r["complete_datasets"]),
            }
        )
    return out


def _holes_block(missing: list[str], failed: list[str]) -> Block:
    notes = []
    if missing:
        notes.append(f"Missing cells ({len(missing)}): " + ", ".join(missing))
    if failed:
        notes.append(f"Failed cells ({len(failed)}): " + ", ".join(failed))
    return Block("Holes", 2, (), tuple(notes) or ("None: every cell of every table has all its seeds.",))


def _round(value, digits: int = 2):
    return None if value is None or pd.isna(value) else round(float(value), digits)


def _records(long: pd.DataFrame, kind: str) -> list[dict]:
    frame = long[long["kind"] == kind].drop(columns=["kind"])
    return frame.astype(object).where(frame.notna(), None).to_dict(orient="records")


def _csv_table(long: pd.DataFrame, tables: list[dict], options: ReportOptions) -> pd.DataFrame:
    if options.compare_methods:
        return sections.methods_csv(tables)
    return long.drop(columns=["kind"])
