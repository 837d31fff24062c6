"""The hyperparameters tuning chose, per dataset × shots: ``bench report --params alpha``.

The CLIP-Adapter paper's α ablation (§4.2.4) as a table built from result records: rows are
(method, parameter, shots), columns datasets, a cell is the median of the chosen value over
seeds with its range. One table per backbone, tuning mode and trial budget; oracle tables
say they were tuned on the test split.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence

import pandas as pd

from bench.errors import BenchError
from bench.reports.aggregate import record_keys
from bench.results import RunResult

PARAM_TABLE_KEYS = [
    "backbone",
    "weights_sha256",
    "tune",
    "trials",
]  # a tuned table also splits by trial budget
CELL_KEYS = [*PARAM_TABLE_KEYS, "method", "param", "dataset", "shots"]
FORMATS = ("markdown", "csv", "json")
MODE_LABELS = {
    "val": "tuned on the few-shot validation split",
    "oracle": "ORACLE — tuned on the test split, not an honest few-shot choice",
}


def params_frame(results: list[RunResult], names: Sequence[str]) -> pd.DataFrame:
    """One row per (ok tuned record, requested parameter it chose); the latest record of a cell wins."""
    rows = []
    for r in results:
        best = r.tuning.best_params or {}
        rows += [
            {**record_keys(r), "param": name, "value": best[name]} for name in names if r.ok and name in best
        ]
    frame = pd.DataFrame(rows, columns=[*CELL_KEYS, "seed", "value", "finished_at"])
    frame = frame.sort_values("finished_at").drop_duplicates([*CELL_KEYS, "seed"], keep="last")
    return frame.sort_values([*CELL_KEYS, "seed"]).reset_index(drop=True)


def summarise(values: Sequence) -> dict:
    """Numbers: median, min, max. Other values (categorical choices): the most common one."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        series = pd.Series(values, dtype=float)
        return {
            "median": float(series.median()),
            "min": float(series.min()),
            "max": float(series.max()),
            "n_seeds": len(values),
        }
    value, count = Counter(json.dumps(v) for v in values).most_common(1)[0]
    return {"most_common": json.loads(value), "count": count, "n_seeds": len(values)}


def render_params(frame: pd.DataFrame, fmt: str = "markdown") -> str:
    """The chosen-parameter tables of a :func:`params_frame` in ``fmt``."""
    if fmt not in FORMATS:
        raise BenchError(
            f"unknown report format {fmt!r}", where="--format", fix=f"use one of: {', '.join(FORMATS)}"
        )
    if frame.empty:
        raise BenchError(
            "no tuned result records chose these parameters",
            where="--params",
            fix="run `bench run --tune val --trials N` first, or check the names (e.g. alpha)",
        )
    cells = [
        {
            **dict(zip(CELL_KEYS, key, strict=True)),
            **summarise(group["value"].tolist()),
            "seeds": sorted(group["seed"].tolist()),
        }
        for key, group in frame.groupby(CELL_KEYS, sort=True)
    ]
    if fmt == "csv":
        return pd.DataFrame(cells).to_csv(index=False)
    if fmt == "json":
        return json.dumps({"params": cells}, indent=2, allow_nan=False, default=_plain) + "\n"
    return _markdown(pd.DataFrame(cells))


def _plain(value):
    """numpy scalars (group keys) as Python numbers."""
    return value.item() if hasattr(value, "item") else str(value)


def _cell_text(row) -> str:
    if "median" in row and pd.notna(row["median"]):
        spread = f" [{row['min']:.2f}–{row['max']:.2f}]" if row["n_seeds"] > 1 else ""
        return f"{row['median']:.2f}{spread}"
    return f"{row['most_common']} ({int(row['count'])}/{int(row['n_seeds'])})"


def _markdown(cells: pd.DataFrame) -> str:
    parts = [
        "# Tuned hyperparameters",
        "",
        "The value each tuned cell chose, median over seeds [min–max]; categorical choices show the most "
        "common value (seeds that chose it / seeds).",
        "",
    ]
    for (backbone, weights, tune, trials), table in cells.groupby(PARAM_TABLE_KEYS, sort=True):
        seeds = sorted({s for row in table["seeds"] for s in row})
        parts += [
            f"## {backbone} · tuning: {tune} · {trials} trials",
            "",
            f"Backbone `{backbone}` (weights sha256 `{weights}`), {MODE_LABELS.get(tune, tune)}, "
            f"seeds: {', '.join(map(str, seeds))}.",
            "",
        ]
        datasets = sorted(table["dataset"].unique())
        rows = []
        for (method, param, shots), group in table.groupby(["method", "param", "shots"], sort=True):
            row = {
                "Method": f"{method} (oracle)" if tune == "oracle" else method,
                "Param": param,
                "Shots": shots,
            }
            by_dataset = {r["dataset"]: r for _, r in group.iterrows()}
            row.update({d: _cell_text(by_dataset[d]) if d in by_dataset else "—" for d in datasets})
            rows.append(row)
        columns = ["Method", "Param", "Shots", *datasets]
        parts += [pd.DataFrame(rows, columns=columns).to_markdown(index=False, disable_numparse=True), ""]
    return "\n".join(parts)
