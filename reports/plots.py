"""Accuracy-vs-shots curves, one figure per dataset, one for the average, and all of them in one figure
(the average first, then a panel per dataset: CoOp's Figure 3, CLIP-Adapter's Figure 3), in the style of
CoOp's ``draw_curves.py``: grey panel, white vertical grid, one line per method with its own colour and
marker in every figure (the linear probe dotted), and the methods that do not use the support set
(zero-shot CLIP, whatever its prompts) drawn as a star at 0 shots. A band of ± the report's spread over
seeds surrounds each line that has more than one seed. Single panels are drawn at one column's width
with 8 pt text, so they read at that size in print; the combined figure spans the page.

Figures are built with :class:`matplotlib.figure.Figure` directly (Agg canvas, no pyplot
state) and saved as PNG, SVG and PDF.
"""

from __future__ import annotations

import io
import re
import zlib
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from bench.fileio import atomic_write_bytes
from bench.reports.aggregate import (
    aggregate,
    dataset_average,
    in_table,
    spread,
    table_keys,
    table_settings,
)
from bench.reports.blocks import (
    METHOD_NAMES,
    METRIC_TITLES,
    dataset_sort_key,
    dataset_title,
    display_name,
    is_shot_free,
    method_sort_key,
)

PANEL = "#EBEBEB"
X_LABEL = "Number of labeled training examples per class"


def _half_width(values: dict, ci: str | None) -> float:
    half = {None: values["std"], "coop": values["ci95"], "t": values["ci95_t"]}[ci]
    return 0.0 if half is None or np.isnan(half) else float(half)


# One colour and marker per method in every figure (Okabe-Ito colours, readable in grey and by the
# colour-blind); variants of a method (--set overrides, prompt sets) share them and differ in line style.
METHOD_STYLES = {
    "zero_shot": ("#000000", "*"),
    "linear_probe": ("#56B4E9", "o"),
    "coop": ("#0072B2", "s"),
    "clip_adapter": ("#D55E00", "^"),
    "clip_adapter_hyper": ("#E69F00", "v"),
    "tip_adapter": ("#009E73", "D"),
    "tip_adapter_f": ("#CC79A7", "P"),
    "lp_pp": ("#8C564B", "X"),
    "clap": ("#7F7F7F", "p"),
    "linear_probe_zs": ("#BCBD22", "h"),
}
_OTHER_COLOURS = ("#17BECF", "#9467BD", "#2CA02C", "#FF7F0E", "#1F77B4", "#E377C2", "#BCBD22", "#8C564B")
_OTHER_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "h")
_VARIANT_LINES = ("-", "--", "-.", (0, (5, 1, 1, 1)))
COLUMN_INCHES = 3.3  # one column of a two-column paper: figures are drawn at this size, so fonts stay 8 pt
FONT = {
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
}


def method_style(label: str, variant: int = 0) -> dict:
    """Colour, marker and line style of a row label; the same method gets the same ones in every figure.
    ``variant``: the label's rank among the labels of its method in the figure (0 for the plain one)."""
    base = re.split(r"[\[ ]", label, maxsplit=1)[0]
    if base in METHOD_STYLES:
        colour, marker = METHOD_STYLES[base]
    else:  # a plugin method: a stable pick by name, not by position, so it keeps it across figures
        h = zlib.crc32(base.encode())
        colour, marker = _OTHER_COLOURS[h % len(_OTHER_COLOURS)], _OTHER_MARKERS[h // 7 % len(_OTHER_MARKERS)]
    line = ":" if base == "linear_probe" and variant == 0 else _VARIANT_LINES[variant % len(_VARIANT_LINES)]
    return {"color": colour, "marker": marker, "linestyle": line}


def _variants(labels) -> dict[str, int]:
    seen: dict[str, int] = {}
    out = {}
    for label in labels:
        base = re.split(r"[\[ ]", label, maxsplit=1)[0]
        out[label] = seen.get(base, 0)
        seen[base] = out[label] + 1
    return out


def draw_panel(
    ax,
    series: dict[str, pd.DataFrame],
    title: str,
    metric: str = "top1",
    *,
    bold: bool = False,
    names: dict[str, str] | None = None,
    labels: bool = True,
) -> None:
    """One accuracy-vs-shots panel on ``ax``: ``series`` maps a method label to rows with ``shots``,
    ``mean``, ``half`` (band half-width, 0 for none) and ``n_seeds``, in points. ``labels``: axis labels."""
    names = METHOD_NAMES if names is None else names
    ax.set_facecolor(PANEL)
    shots = sorted({int(k) for rows in series.values() for k in rows["shots"]})
    star = False
    variants = _variants(series)
    for label, rows in series.items():
        rows = rows.sort_values("shots")
        style = method_style(label, variants[label])
        shown = display_name(label, names)
        if is_shot_free(label):
            ax.plot(
                [0],
                [rows["mean"].mean()],
                marker="*",
                markersize=10,
                color=style["color"],
                linestyle="none",
                label=shown,
                zorder=3,
            )
            star = True
            continue
        ax.plot(rows["shots"], rows["mean"], markersize=4, linewidth=1.2, label=shown, **style)
        if (rows["n_seeds"] > 1).any() and (rows["half"] > 0).any():
            ax.fill_between(
                rows["shots"].to_numpy(dtype=float),
                (rows["mean"] - rows["half"]).to_numpy(dtype=float),
                (rows["mean"] + rows["half"]).to_numpy(dtype=float),
                color=style["color"],
                alpha=0.2,
                linewidth=0,
            )
    ticks = [0, *shots] if star else shots
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.grid(axis="x", color="white", linewidth=1)
    if labels:
        ax.set_xlabel(X_LABEL)
        ax.set_ylabel(f"{METRIC_TITLES.get(metric, metric)} (%)")
    ax.set_title(title, fontweight="bold" if bold else "normal")


def curve_figure(
    series: dict[str, pd.DataFrame],
    title: str,
    metric: str = "top1",
    *,
    bold: bool = False,
    names: dict[str, str] | None = None,
) -> Figure:
    """One panel at column width (:data:`COLUMN_INCHES`), with its legend. Returns the figure (not saved)."""
    with matplotlib.rc_context(FONT):
        fig = Figure(figsize=(COLUMN_INCHES, 2.7))
        ax = fig.add_subplot()
        draw_panel(ax, series, title, metric, bold=bold, names=names)
        if series:
            ax.legend(loc="best")
        fig.tight_layout(pad=0.3)
    return fig


def combined_figure(
    panels: dict[str, tuple[str, dict[str, pd.DataFrame], bool]],
    metric: str = "top1",
    names: dict[str, str] | None = None,
) -> Figure:
    """CoOp's Figure 3 layout: the average first (bold title), then a panel per dataset, four per row at
    page width, one legend under them. ``panels``: name -> (title, series, bold)."""
    n = len(panels)
    ncols = min(4, n)
    nrows = -(-n // ncols)
    with matplotlib.rc_context(FONT):
        fig = Figure(figsize=(2 * COLUMN_INCHES + 0.3, 1.75 * nrows + 0.6), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False)
        handles: dict[str, object] = {}
        for index, (title, series, bold) in enumerate(panels.values()):
            ax = axes[index // ncols][index % ncols]
            draw_panel(ax, series, title, metric, bold=bold, names=names, labels=False)
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                handles.setdefault(label, handle)
        for index in range(n, nrows * ncols):
            axes[index // ncols][index % ncols].set_visible(False)
        fig.supxlabel(X_LABEL, fontsize=8)
        fig.supylabel(f"{METRIC_TITLES.get(metric, metric)} (%)", fontsize=8)
        fig.legend(
            list(handles.values()),
            list(handles),
            loc="outside upper center",
            ncols=min(len(handles), 5),
            frameon=False,
        )
        fig.get_layout_engine().set(h_pad=0.03, w_pad=0.03, hspace=0.04, wspace=0.02)
    return fig


def table_figures(
    frame: pd.DataFrame, metric: str = "top1", ci: str | None = None, names: dict[str, str] | None = None
) -> dict[str, dict[str, Figure]]:
    """Per few-shot table (by folder name): figure name (dataset, ``average``, and ``all`` — every panel in
    one figure) -> figure."""
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
        n = len(datasets)
        panels = {
            "average": (
                f"Average over {n} dataset{'s' if n != 1 else ''}{suffix}",
                _average_series(in_table(averages, key), ci),
                True,
            )
        }
        panels |= {
            d: (dataset_title(d) + suffix, _dataset_series(table_cells, d, ci), False) for d in datasets
        }
        figures = {
            d: curve_figure(series, title, metric, bold=bold, names=names)
            for d, (title, series, bold) in panels.items()
            if d != "average"
        }
        figures["average"] = curve_figure(
            panels["average"][1], panels["average"][0], metric, bold=True, names=names
        )
        figures["all"] = combined_figure(panels, metric, names)
        out[folder] = figures
    return out


def _dataset_series(cells: pd.DataFrame, dataset: str, ci: str | None) -> dict[str, pd.DataFrame]:
    rows = cells[cells["dataset"] == dataset]
    series = {}
    for label in sorted(rows["label"].unique(), key=method_sort_key):
        part = rows[rows["label"] == label]
        series[label] = pd.DataFrame(
            {
                "shots": part["shots"].astype(int),
                "mean": part["mean"].astype(float),
                "half": [_half_width(r, ci) for r in part.to_dict("records")],
                "n_seeds": part["n_seeds"].astype(int),
            }
        )
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
        series[label] = pd.DataFrame(
            {
                "shots": part["shots"].astype(int),
                "mean": part["mean"].astype(float),
                "half": halves,
                "n_seeds": counts,
            }
        )
    return series


def _folders(keys: list[tuple]) -> list[str]:
    names = [_safe(f"{k[0]}-{k[2]}" + ("" if k[4] == "fewshot" else f"-{k[4]}")) for k in keys]
    return [
        name if names.count(name) == 1 else f"{name}-{k[1][:8]}-{i}"
        for i, (name, k) in enumerate(zip(names, keys, strict=True))
    ]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


FILE_FORMATS = {
    ".png": {"Software": None},
    ".svg": {"Date": None},
    ".pdf": {"CreationDate": None, "Producer": None},
}


def write_plots(
    frame: pd.DataFrame,
    out_dir: Path,
    metric: str = "top1",
    ci: str | None = None,
    names: dict[str, str] | None = None,
) -> list[Path]:
    """Save every figure of :func:`table_figures` as ``out_dir/<table>/<name>.png``, ``.svg`` and ``.pdf``
    (``all.*``: every panel in one figure)."""
    written = []
    with matplotlib.rc_context({"svg.hashsalt": "bench-report", "svg.fonttype": "path", "pdf.fonttype": 42}):
        for folder, figures in table_figures(frame, metric, ci, names).items():
            target = Path(out_dir) / folder
            target.mkdir(parents=True, exist_ok=True)
            for name, fig in figures.items():
                for suffix, meta in FILE_FORMATS.items():
                    path = target / f"{name}{suffix}"
                    _save(fig, path, meta)
                    written.append(path)
    return written


def _save(fig: Figure, path: Path, metadata: dict) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix[1:], dpi=200, metadata=metadata)
    atomic_write_bytes(path, buffer.getvalue())
