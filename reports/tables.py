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
    METRIC_TITLES,
    STANDARD_DATASETS,
    TUNE_TITLES,
    Block,
    Report,
    dataset_sort_key,
    dataset_title,
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
        return f"{label} (oracle)" if self.oracle else label

    def pm(self, values: dict) -> str:
        """``mean ± spread`` of one :func:`~bench.reports.aggregate.spread` dict, marked when incomplete."""
        half = {None: values["std"], "coop": values["ci95"], "t": values["ci95_t"]}[self.options.ci]
        return mean_pm(values["mean"], half, int(values["n_seeds"]), len(self.seeds))


def render(frame: pd.DataFrame, fmt: str = "markdown", options: ReportOptions | None = None) -> str:
    """The report of a :func:`~bench.reports.aggregate.results_frame` in ``fmt``."""
    if fmt not in FORMATS:
        raise BenchError(f"unknown report format {fmt!r}", where="--format", fix=f"use one of: {', '.join(FORMATS)}")
    return render_report(build_report(frame, options or ReportOptions()), fmt)


def build_report(frame: pd.DataFrame, options: ReportOptions) -> Report:
    """Sections for every table of ``frame`` (filtered, mixed as allowed), with the JSON/CSV payload."""
    frame = prepare(frame, options)
    paper = load_paper_numbers(options.paper_file, sources=options.paper_sources) if options.compare_paper else None
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
    payload = {"report": "bench-report", "version": 1, "metric": options.metric, "units": "percent",
               "spread": SPREAD_TEXT[options.ci], "n_records": len(frame), "tables": tables,
               "cells": _records(long, "cell"), "transfer": _records(long, "transfer"),
               "base2new": _records(long, "base2new"), "missing": missing, "failed": failed}
    return Report(title=f"Few-shot results: {METRIC_TITLES[options.metric].lower()}", intro=_intro(options),
                  blocks=tuple(blocks), payload=payload, long=_csv_table(long, tables, options))


def prepare(frame: pd.DataFrame, options: ReportOptions) -> pd.DataFrame:
    """Check the options, keep the records the filters select, merge the settings ``allow_mixed`` names."""
    _check(frame, options)
    return mix_settings(filter_frame(frame, options.filters), options.allow_mixed)


def _check(frame: pd.DataFrame, options: ReportOptions) -> None:
    if frame.empty:
        raise BenchError("no result records found", where="--results", fix="run `bench run` first")
    if options.metric not in METRIC_TITLES:
        raise BenchError(f"unknown metric {options.metric!r}", where="--metric", fix=f"use one of: {', '.join(METRIC_TITLES)}")
    if options.ci not in (None, *CI_CHOICES):
        raise BenchError(f"unknown interval {options.ci!r}", where="--ci", fix=f"use one of: {', '.join(CI_CHOICES)}")
    if options.compare_paper and options.metric != "top1":
        raise BenchError("published numbers are top-1 accuracies", where="--compare paper", fix="drop --metric or use top1")


def _titles(frame: pd.DataFrame) -> dict[tuple, str]:
    """Table key -> heading; tables whose short heading collides also name weights and preprocessing."""
    short = {}
    for key in table_keys(frame):
        s = table_settings(key)
        protocol = "" if s["protocol"] == "fewshot" else f" · protocol: {s['protocol']}"
        short[key] = f"{s['backbone']} · tuning: {s['tune']}{protocol}"
    counts = pd.Series(list(short.values())).value_counts()
    return {key: title if counts[title] == 1 else
            f"{title} · weights {table_settings(key)['weights_sha256']} · {table_settings(key)['preprocessing']}"
            for key, title in short.items()}


def _intro(options: ReportOptions) -> tuple[str, ...]:
    f = options.filters
    chosen = [f"--{name} {','.join(map(str, value))}" for name, value in
              (("methods", f.methods), ("datasets", f.datasets), ("shots", f.shots), ("backbone", f.backbones),
               ("tune", f.tune), ("seeds", f.seeds)) if value]
    lines = [f"{METRIC_TITLES[options.metric]} (%) on the test split: mean over seeds {SPREAD_TEXT[options.ci]}. "
             "A cell with fewer seeds than its table is marked (n/m seeds); (oracle) marks cells tuned on the test "
             "split. Averages over datasets are the means of the cell means and need every dataset of the table."]
    if chosen:
        lines.append("Records selected with " + " ".join(chosen) + ".")
    if options.allow_mixed:
        lines.append(f"--allow-mixed {','.join(sorted(options.allow_mixed))}: cells that differ in these settings "
                     "are averaged together; the settings below say which values were mixed.")
    return tuple(lines)


def _section(table: Table, paper) -> tuple[list[Block], dict, pd.DataFrame]:
    settings = _settings(table)
    payload = {**table.settings, "arch": sorted(table.frame["arch"].unique().tolist()), "seeds": list(table.seeds),
               "datasets": table.datasets, "prompts": _prompt_sets(table), "n_records": len(table.frame)}
    long = sections.long_cells(table)
    if table.settings["protocol"] == "base2new":
        main, b2n = sections.base2new_block(table, settings)
        blocks, payload["base2new"] = [main], b2n
        long = pd.concat([long, sections.long_base2new(table)], ignore_index=True)
    else:
        average = dataset_average(table.frame, table.cells, table.options.metric)
        blocks = [Block(table.title, 2, settings, (), accuracy_table(table, average)), average_block(table, average)]
        payload["averages"] = _average_payload(average)
        long = pd.concat([long, sections.long_averages(table, average)], ignore_index=True)
    shift = sections.transfer_block(table)
    if shift is not None:
        blocks.append(shift)
        long = pd.concat([long, sections.long_transfer(table)], ignore_index=True)
    if table.settings["protocol"] != "fewshot":
        if paper is not None or table.options.compare_methods:
            blocks.append(Block("Comparisons", 3, (), ("Published numbers and the paired comparison cover the few-shot "
                                                       "protocol only; these cells are not compared.",)))
        return blocks, payload, long
    if paper is not None:
        block, long = sections.paper_block(table, long, paper)
        blocks.append(block)
    if table.options.compare_methods:
        block, payload["method_comparison"] = sections.methods_block(table)
        if block is not None:
            blocks.append(block)
    return blocks, payload, long


def _generation_note(generations: str) -> str:
    if generations == NO_GENERATION:
        return "reproduces no published-number generation"
    return f"published-number generation {generations}"


def _settings(table: Table) -> tuple[tuple[str, str], ...]:
    s, frame = table.settings, table.frame
    prompts = "; ".join(f"{label}: {p}" for label, p in _prompt_sets(table).items())
    generations = ", ".join(sorted(frame["generation"].unique()))
    failed = int((frame["status"] != "ok").sum())
    protocol = {"fewshot": "few-shot, all classes", "base2new": "base-to-new (train on base classes, test base and new)"}
    rows = [("Backbone", f"{s['backbone']} (architecture {', '.join(sorted(frame['arch'].unique()))})"),
            ("Weights sha256", s["weights_sha256"]),
            ("Preprocessing", f"{s['preprocessing']} ({_generation_note(generations)})"),
            ("Prompt sets", prompts), ("Tuning", TUNE_TITLES.get(s["tune"], s["tune"])),
            ("Protocol", protocol.get(s["protocol"], s["protocol"])),
            ("Seeds", ", ".join(map(str, table.seeds))),
            ("Records", f"{len(frame)} ({failed} failed)")]
    mixed = [f"{k}" for k, v in s.items() if str(v).startswith("mixed: ")]
    if any(str(p).startswith("mixed: ") for p in frame["prompts"]):
        mixed.append("prompts")
    if mixed:
        rows.append(("MIXED", f"cells average over differing {', '.join(mixed)} (--allow-mixed)"))
    return tuple(rows)


def _prompt_sets(table: Table) -> dict[str, str]:
    pairs = table.frame[["label", "prompts"]].drop_duplicates()
    return {label: ", ".join(sorted(pairs.loc[pairs["label"] == label, "prompts"]))
            for label in table.labels}


def accuracy_table(table: Table, average: pd.DataFrame) -> pd.DataFrame:
    """Rows (method, shots), columns datasets then their average; ``—`` where a cell has no result."""
    by_cell = {(r["label"], r["dataset"], r["shots"]): r for r in table.cells.to_dict("records")}
    by_row = {(r["label"], r["shots"]): r for r in average.to_dict("records")}
    present = set(map(tuple, table.frame[["label", "shots"]].drop_duplicates().values))
    rows = []
    for label in table.labels:
        for shots in sorted(table.frame["shots"].unique()):
            if (label, shots) not in present:
                continue
            row = {"Method": table.display(label), "Shots": str(shots)}
            for d in table.datasets:
                cell = by_cell.get((label, d, shots))
                row[dataset_title(d)] = table.pm(cell) if cell else "—"
            row["Average"] = number(by_row.get((label, shots), {}).get("mean"))
            rows.append(row)
    return pd.DataFrame(rows, columns=["Method", "Shots", *map(dataset_title, table.datasets), "Average"])


def average_block(table: Table, average: pd.DataFrame) -> Block:
    """The shots × method panel of dataset averages (CLIP-Adapter's 'average over 11 datasets')."""
    shots = sorted(table.frame["shots"].unique())
    rows = []
    for label in table.labels:
        row = {"Method": table.display(label)}
        for k in shots:
            found = average[(average["label"] == label) & (average["shots"] == k)]
            row[f"{k}-shot"] = _average_cell(table, found.iloc[0]) if len(found) else "—"
        rows.append(row)
    n = len(table.datasets)
    which = "the 11 datasets" if set(table.datasets) == set(STANDARD_DATASETS) else \
        f"{n} dataset{'s' if n != 1 else ''} ({', '.join(map(dataset_title, table.datasets))})"
    note = ("Mean of the cell means; ± is taken over the seeds every dataset has, of the per-seed average over "
            "datasets. — where a dataset of the table has no result.")
    return Block(f"Average over {which}", 3, (), (note,),
                 pd.DataFrame(rows, columns=["Method", *[f"{k}-shot" for k in shots]]))


def _average_cell(table: Table, row) -> str:
    if not row["complete_datasets"]:
        return "—"
    per_seed = row["per_seed"]
    if not per_seed:
        return number(row["mean"])
    values = {**spread(pd.Series(per_seed).to_numpy()), "mean": row["mean"]}
    values["n_seeds"] = min(len(per_seed), int(row["min_seeds"]))
    return table.pm(values)


def _average_payload(average: pd.DataFrame) -> list[dict]:
    out = []
    for r in average.to_dict("records"):
        values = spread(pd.Series(r["per_seed"]).to_numpy()) if r["per_seed"] else {}
        out.append({"label": r["label"], "shots": int(r["shots"]), "mean": _round(r["mean"]),
                    "std": _round(values.get("std")), "n_seeds_common": len(r["per_seed"]),
                    "n_datasets": int(r["n_datasets"]), "complete": bool(r["complete_datasets"])})
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
