"""Render aggregated results as markdown, CSV or JSON."""

from __future__ import annotations

import json

import pandas as pd

from bench.errors import BenchError
from bench.reports.aggregate import TABLE_KEYS, aggregate, expected_seeds, holes

FORMATS = ("markdown", "csv", "json")


def render(frame: pd.DataFrame, fmt: str = "markdown") -> str:
    """The report of a :func:`~bench.reports.aggregate.results_frame` in ``fmt``."""
    if fmt not in FORMATS:
        raise BenchError(f"unknown report format {fmt!r}", where="--format", fix=f"use one of: {', '.join(FORMATS)}")
    if frame.empty:
        raise BenchError("no result records found", where="--results", fix="run `bench run` first")
    cells = aggregate(frame)
    missing, failed = holes(frame)
    if fmt == "csv":
        return _long(cells).to_csv(index=False)
    if fmt == "json":
        payload = {"cells": _long(cells).to_dict(orient="records"), "missing": missing, "failed": failed}
        return json.dumps(payload, indent=2, allow_nan=False, default=_nan_to_none) + "\n"
    return _markdown(frame, cells, missing, failed)


def _nan_to_none(value):
    return None


def _long(cells: pd.DataFrame) -> pd.DataFrame:
    out = cells.copy()
    out["mean"] = out["mean"].round(2)
    out["std"] = out["std"].round(2)
    out["seeds"] = out["seeds"].apply(lambda s: " ".join(map(str, s)))
    return out.astype(object).where(out.notna(), None)


def _fmt(mean: float, std: float, n: int, n_expected: int) -> str:
    mark = "" if n >= n_expected else f" ({n}/{n_expected} seeds)"
    return f"{mean:.2f} ± {std:.2f}{mark}"


def _markdown(frame: pd.DataFrame, cells: pd.DataFrame, missing: list[str], failed: list[str]) -> str:
    seeds_by_table = expected_seeds(frame)
    parts = ["# Few-shot results", "",
             "Top-1 accuracy (%) on the test split, mean ± std over seeds (population std, as CoOp's "
             "`parse_test_res.py`). A row's average is over datasets and needs every dataset of the table.", ""]
    for key, table in cells.groupby(TABLE_KEYS, sort=True):
        backbone, weights, tune, prep = key
        n_expected = len(seeds_by_table[key])
        label = {"none": "none (paper defaults)", "val": "few-shot validation split",
                 "oracle": "ORACLE — tuned on the test split, not an honest few-shot number"}.get(tune, tune)
        parts += [f"## {backbone} · tuning: {tune}", "",
                  f"Backbone `{backbone}` (weights sha256 `{weights}`), preprocessing: {prep}, tuning: {label}, "
                  f"seeds: {', '.join(map(str, seeds_by_table[key]))}.", ""]
        parts += [_pivot(table, n_expected, oracle=tune == "oracle").to_markdown(index=False, disable_numparse=True), ""]
    if missing:
        parts += [f"**Missing cells ({len(missing)}):** " + ", ".join(missing), ""]
    if failed:
        parts += [f"**Failed cells ({len(failed)}):** " + ", ".join(failed), ""]
    return "\n".join(parts)


def _pivot(table: pd.DataFrame, n_expected: int, *, oracle: bool) -> pd.DataFrame:
    datasets = sorted(table["dataset"].unique())
    rows = []
    for (method, shots), group in table.groupby(["method", "shots"], sort=True):
        by_dataset = {r.dataset: r for r in group.itertuples()}
        row = {"Method": f"{method} (oracle)" if oracle else method, "Shots": shots}
        means = []
        for d in datasets:
            r = by_dataset.get(d)
            if r is None or r.n_seeds == 0:
                row[d] = "—"
            else:
                row[d] = _fmt(r.mean, r.std, r.n_seeds, n_expected)
                means.append(r.mean)
        row["Average"] = f"{sum(means) / len(means):.2f}" if len(means) == len(datasets) else "—"
        rows.append(row)
    return pd.DataFrame(rows, columns=["Method", "Shots", *datasets, "Average"])
