"""Accuracy-vs-shots curves, one figure per dataset and one for the average, in the style of
CoOp's few-shot figure (``draw_curves.py``): grey panel, white vertical grid, one line with
round markers per method (the linear probe dotted), and the methods that do not use the
support set (zero-shot CLIP, whatever its prompts) drawn as a star at 0 shots. A band of ± the report's
spread over seeds surrounds each line that has more than one seed.

Figures are built with :class:`matplotlib.figure.Figure` directly (Agg canvas, no pyplot
state) and saved as PNG and SVG.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from bench._io import atomic_write_bytes
from bench.reports.aggregate import (
    aggregate,
    dataset_average,
    in_table,
    spread,
    table_keys,
    table_settings,
)
from bench.reports.blocks import METRIC_TITLES, dataset_sort_key, dataset_title, is_shot_free, method_sort_key

PANEL = "#EBEBEB"
X_LABEL = "Number of labeled training examples per class"


def _half_width(values: dict, ci: str | None) -> float:
    half = {None: values["std"], "coop": values["ci95"], "t": values["ci95_t"]}[ci]
    return 0.0 if half is None or np.isnan(half) else float(half)


def curve_figure(series: dict[str, pd.DataFrame], title: str, metric: str = "top1", *, bold: bool = False) -> Figure:
    """One panel: ``series`` maps a method label to rows with ``shots``, ``mean``, ``half`` (band
    half-width, 0 for none) and ``n_seeds``, in points. Returns the figure (not saved)."""
    fig = Figure(figsize=(5.0, 4.0))
    ax = fig.add_subplot()
    ax.set_facecolor(PANEL)
    shots = sorted({int(k) for rows in series.values() for k in rows["shots"]})
    star = False
    for index, (label, rows) in enumerate(series.items()):
        rows = rows.sort_values("shots")
        color = f"C{index % 10}"
        if is_shot_free(label):
            ax.plot([0], [rows["mean"].mean()], marker="*", markersize=9, color=color, linestyle="none", label=label)
            star = True
            continue
        style = ":" if label.startswith("linear_probe") else "-"
        ax.plot(rows["shots"], rows["mean"], marker="o", markersize=4, color=color, linestyle=style, label=label)
        if (rows["n_seeds"] > 1).any() and (rows["half"] > 0).any():
            ax.fill_between(rows["shots"].to_numpy(dtype=float), (rows["mean"] - rows["half"]).to_numpy(dtype=float),
                            (rows["mean"] + rows["half"]).to_numpy(dtype=float), color=color, alpha=0.2, linewidth=0)
    ticks = [0, *shots] if star else shots
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.grid(axis="x", color="white", linewidth=1)
    ax.set_xlabel(X_LABEL)
    ax.set_ylabel(f"{METRIC_TITLES.get(metric, metric)} (%)")
    ax.set_title(title, fontweight="bold" if bold else "normal")
    if series:
        ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig


def table_figures(frame: pd.DataFrame, metric: str = "top1", ci: str | None = None) -> dict[str, dict[str, Figure]]:
    """Per few-shot table (by folder name): figure name (dataset, or ``average``) -> figure."""
    cells = aggregate(frame, metric)
    averages = dataset_average(frame, cells, metric)
    out = {}
    keys = table_keys(frame)
    for key, folder in zip(keys, _folders(keys), strict=True):
        settings = table_settings(key)
        if settings["protocol"] != "fewshot":
            continue
        suffix = " (ORACLE: tuned on test)" if settings["tune"] == "oracle" else ""
        table_cells, table_frame = in_table(cells, key), in_table(frame, key)
        datasets = sorted(table_frame["dataset"].unique(), key=dataset_sort_key)
        figures = {d: curve_figure(_dataset_series(table_cells, d, ci), dataset_title(d) + suffix, metric)
                   for d in datasets}
        figures["average"] = curve_figure(_average_series(in_table(averages, key), ci),
                                          f"Average over {len(datasets)} dataset{'s' if len(datasets) != 1 else ''}{suffix}", metric, bold=True)
        out[folder] = figures
    return out


def _dataset_series(cells: pd.DataFrame, dataset: str, ci: str | None) -> dict[str, pd.DataFrame]:
    rows = cells[cells["dataset"] == dataset]
    series = {}
    for label in sorted(rows["label"].unique(), key=method_sort_key):
        part = rows[rows["label"] == label]
        series[label] = pd.DataFrame({"shots": part["shots"].astype(int), "mean": part["mean"].astype(float),
                                      "half": [_half_width(r, ci) for r in part.to_dict("records")],
                                      "n_seeds": part["n_seeds"].astype(int)})
    return series


def _average_series(averages: pd.DataFrame, ci: str | None) -> dict[str, pd.DataFrame]:
    complete = averages[averages["complete_datasets"].astype(bool)]
    series = {}
    for label in sorted(complete["label"].unique(), key=method_sort_key):
        part = complete[complete["label"] == label]
        halves, counts = [], []
        for per_seed in part["per_seed"]:
            values = spread(np.asarray(per_seed, dtype=float)) if per_seed else None
            halves.append(_half_width(values, ci) if values else 0.0)
            counts.append(len(per_seed))
        series[label] = pd.DataFrame({"shots": part["shots"].astype(int), "mean": part["mean"].astype(float),
                                      "half": halves, "n_seeds": counts})
    return series


def _folders(keys: list[tuple]) -> list[str]:
    names = [_safe(f"{k[0]}-{k[2]}" + ("" if k[4] == "fewshot" else f"-{k[4]}")) for k in keys]
    return [name if names.count(name) == 1 else f"{name}-{k[1][:8]}-{i}" for i, (name, k) in enumerate(zip(names, keys, strict=True))]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def write_plots(frame: pd.DataFrame, out_dir: Path, metric: str = "top1", ci: str | None = None) -> list[Path]:
    """Save every figure of :func:`table_figures` as ``out_dir/<table>/<name>.png`` and ``.svg``."""
    written = []
    with matplotlib.rc_context({"svg.hashsalt": "bench-report", "svg.fonttype": "path"}):
        for folder, figures in table_figures(frame, metric, ci).items():
            target = Path(out_dir) / folder
            target.mkdir(parents=True, exist_ok=True)
            for name, fig in figures.items():
                for suffix, meta in ((".png", {"Software": None}), (".svg", {"Date": None})):
                    path = target / f"{name}{suffix}"
                    _save(fig, path, meta)
                    written.append(path)
    return written


def _save(fig: Figure, path: Path, metadata: dict) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix[1:], dpi=150, metadata=metadata)
    atomic_write_bytes(path, buffer.getvalue())
