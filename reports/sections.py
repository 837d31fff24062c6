"""The optional parts of a table's section: distribution shift, base-to-new, published
numbers, paired method comparison, and the long (one row per cell and metric) tables that
CSV and JSON carry. Each takes a :class:`~bench.reports.tables.Table`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.errors import BenchError
from bench.reports.aggregate import TABLE_KEYS, TRANSFER_PREFIX, aggregate, spread
from bench.reports.blocks import (
    STANDARD_DATASETS,
    Block,
    dataset_sort_key,
    dataset_title,
    is_shot_free,
    method_sort_key,
    signed,
)
from bench.reports.paper import AVERAGE, PaperNumbers, compare
from bench.reports.stats import format_p, paired_differences, summarize

_LONG_COLUMNS = [
    "kind",
    *TABLE_KEYS,
    "oracle",
    "arch",
    "generation",
    "label",
    "method_name",
    "prompts",
    "dataset",
    "eval_set",
    "shots",
    "metric",
    "mean",
    "std",
    "ci95",
    "ci95_t",
    "n_seeds",
    "n_expected",
    "complete",
    "seeds",
]


def empty_long() -> pd.DataFrame:
    return pd.DataFrame(columns=_LONG_COLUMNS)


def _long(table, cells: pd.DataFrame, metric: str, kind: str, eval_set: str | None = None) -> pd.DataFrame:
    if cells.empty:
        return empty_long()
    out = cells.copy()
    out["kind"], out["metric"], out["oracle"] = kind, metric, table.oracle
    out["eval_set"] = eval_set if eval_set else out["dataset"]
    out["n_expected"] = len(table.seeds)
    out["complete"] = out["n_seeds"] >= len(table.seeds)
    for column in ("mean", "std", "ci95", "ci95_t"):
        out[column] = out[column].astype(float).round(2)
    out["seeds"] = out["seeds"].apply(lambda s: " ".join(map(str, s)))
    return out[_LONG_COLUMNS]


def long_averages(table, average: pd.DataFrame) -> pd.DataFrame:
    """The average over the table's datasets per (label, shots), as rows with ``dataset = "average"``;
    its spread is over the per-seed averages (the seeds every dataset has), as in the average panel."""
    complete = average[average["complete_datasets"].astype(bool)] if len(average) else average
    if complete.empty:
        return empty_long()
    info = table.cells.drop_duplicates("label").set_index("label")
    rows = []
    for r in complete.to_dict("records"):
        values = (
            spread(np.asarray(r["per_seed"], dtype=float))
            if r["per_seed"]
            else {"std": np.nan, "ci95": np.nan, "ci95_t": np.nan, "n_seeds": 0}
        )
        rows.append(
            {
                **{k: r[k] for k in TABLE_KEYS},
                **{k: info.loc[r["label"], k] for k in ("arch", "generation", "method_name", "prompts")},
                "label": r["label"],
                "dataset": "average",
                "shots": r["shots"],
                "mean": r["mean"],
                **{k: values[k] for k in ("std", "ci95", "ci95_t", "n_seeds")},
                "seeds": r["seeds"],
            }
        )
    return _long(table, pd.DataFrame(rows), table.options.metric, "average", "average")


def long_cells(table) -> pd.DataFrame:
    """The table's cells for the report metric, one row each."""
    return _long(table, table.cells, table.options.metric, "cell")


def _transfer_columns(table) -> list[str]:
    frame = table.frame[table.frame["status"] == "ok"]
    columns = [c for c in frame.columns if c.startswith(TRANSFER_PREFIX) and frame[c].notna().any()]
    return sorted(columns, key=lambda c: dataset_sort_key(c[len(TRANSFER_PREFIX) :]))


def long_transfer(table) -> pd.DataFrame:
    parts = [
        _long(table, aggregate(table.frame, c), f"{c}/top1", "transfer", c[len(TRANSFER_PREFIX) :])
        for c in _transfer_columns(table)
    ]
    return pd.concat(parts, ignore_index=True) if parts else empty_long()


def long_base2new(table) -> pd.DataFrame:
    parts = [
        _long(table, aggregate(table.frame, m), m, "base2new")
        for m in ("base_top1", "new_top1", "harmonic_mean")
    ]
    return pd.concat(parts, ignore_index=True)


def transfer_block(table) -> Block | None:
    """Rows (method, shots, training set): its own test top-1, each shift set, their average."""
    columns = _transfer_columns(table)
    if not columns:
        return None
    source = {
        (r["label"], r["dataset"], r["shots"]): r for r in aggregate(table.frame, "top1").to_dict("records")
    }
    shifted = {
        c: {(r["label"], r["dataset"], r["shots"]): r for r in aggregate(table.frame, c).to_dict("records")}
        for c in columns
    }
    keys = sorted(
        {k for by in shifted.values() for k in by},
        key=lambda k: (method_sort_key(k[0]), dataset_sort_key(k[1]), k[2]),
    )
    names = [dataset_title(c[len(TRANSFER_PREFIX) :]) for c in columns]
    rows = []
    for label, dataset, shots in keys:
        row = {"Method": table.display(label), "Shots": str(shots), "Trained on": dataset_title(dataset)}
        own = source.get((label, dataset, shots))
        row["Source"] = table.pm(own, constant_free=is_shot_free(label)) if own else "—"
        means = []
        for column, name in zip(columns, names, strict=True):
            cell = shifted[column].get((label, dataset, shots))
            row[name] = table.pm(cell, constant_free=is_shot_free(label)) if cell else "—"
            means.append(cell["mean"] if cell else np.nan)
        row["Average (shift sets)"] = table.number(np.mean(means)) if not np.isnan(means).any() else "—"
        rows.append(row)
    note = (
        "Top-1 (%) of the classifier trained on the source dataset's few-shot split, scored on each shift set's "
        "test images; Source is its own test split."
    )
    return Block(
        "Distribution shift",
        3,
        (),
        (note,),
        pd.DataFrame(
            rows, columns=["Method", "Shots", "Trained on", "Source", *names, "Average (shift sets)"]
        ),
    )


def _harmonic(base: float, new: float) -> float:
    if pd.isna(base) or pd.isna(new) or base + new == 0:
        return float("nan")
    return 2 * base * new / (base + new)


def base2new_block(table, settings) -> tuple[Block, list[dict]]:
    """Rows (method, shots), per dataset ``base / new / H``; H is the harmonic mean of the mean base and
    mean new accuracy (CoCoOp's tables), the average column likewise from the averaged base and new."""
    base = {
        (r["label"], r["dataset"], r["shots"]): r["mean"]
        for r in aggregate(table.frame, "base_top1").to_dict("records")
    }
    new = {
        (r["label"], r["dataset"], r["shots"]): r["mean"]
        for r in aggregate(table.frame, "new_top1").to_dict("records")
    }
    rows, payload = [], []
    for label in table.labels:
        for shots in sorted(table.frame.loc[table.frame["label"] == label, "shots"].unique()):
            row = {"Method": table.display(label), "Shots": str(shots)}
            bs, ns = [], []
            for d in table.datasets:
                b, n = base.get((label, d, shots), np.nan), new.get((label, d, shots), np.nan)
                bs.append(b)
                ns.append(n)
                row[dataset_title(d)] = (
                    f"{table.number(b)} / {table.number(n)} / {table.number(_harmonic(b, n))}"
                )
                payload.append(
                    {
                        "label": label,
                        "dataset": d,
                        "shots": int(shots),
                        "base": _r(b),
                        "new": _r(n),
                        "harmonic_mean": _r(_harmonic(b, n)),
                    }
                )
            mb, mn = np.mean(bs), np.mean(ns)
            row["Average"] = f"{table.number(mb)} / {table.number(mn)} / {table.number(_harmonic(mb, mn))}"
            rows.append(row)
    note = (
        "Each cell: base / new / H, means over seeds in percent; H = 2·base·new/(base + new) of those means "
        "(CoCoOp). — for new and H: the method cannot be re-targeted to unseen classes."
    )
    columns = ["Method", "Shots", *map(dataset_title, table.datasets), "Average"]
    return Block(table.title, 2, settings, (note,), pd.DataFrame(rows, columns=columns)), payload


def _r(value):
    return None if pd.isna(value) else round(float(value), 2)


_PART_TITLES = {"base": "base", "new": "new", "hm": "H"}


def _base2new_parts(table) -> pd.DataFrame:
    """Our base-to-new numbers as published ones are printed: per cell the mean base and mean new top-1 over
    seeds and H of those two means; per (label, shots) with all 11 standard datasets also their average
    (``dataset = "average"``: mean base, mean new, H of those). One row per part (``base``, ``new``, ``hm``)."""
    base = aggregate(table.frame, "base_top1")
    new = {
        (r["label"], r["dataset"], r["shots"]): r["mean"]
        for r in aggregate(table.frame, "new_top1").to_dict("records")
    }
    rows = []
    for r in base.to_dict("records"):
        b, n = r["mean"], new.get((r["label"], r["dataset"], r["shots"]), np.nan)
        complete = r["n_seeds"] >= len(table.seeds)
        for part, value in (("base", b), ("new", n), ("hm", _harmonic(b, n))):
            if not pd.isna(value):
                rows.append(
                    {**r, "eval_set": r["dataset"], "part": part, "mean": value, "complete": complete}
                )
    frame = pd.DataFrame(rows)
    if frame.empty or set(table.datasets) != set(STANDARD_DATASETS):
        return frame
    averages = []
    for _, group in frame.groupby(["label", "shots"], sort=False):
        base_rows, new_rows = group[group["part"] == "base"], group[group["part"] == "new"]
        if set(base_rows["dataset"]) != set(STANDARD_DATASETS) or set(new_rows["dataset"]) != set(
            STANDARD_DATASETS
        ):
            continue
        mb, mn = base_rows["mean"].mean(), new_rows["mean"].mean()
        first = group.iloc[0].to_dict()
        for part, value in (("base", mb), ("new", mn), ("hm", _harmonic(mb, mn))):
            averages.append(
                {
                    **first,
                    "dataset": AVERAGE,
                    "eval_set": AVERAGE,
                    "part": part,
                    "mean": value,
                    "n_seeds": int(group["n_seeds"].min()),
                    "complete": bool(group["complete"].all()),
                }
            )
    return pd.concat([frame, pd.DataFrame(averages)], ignore_index=True) if averages else frame


def base2new_paper_block(table, paper: PaperNumbers) -> tuple[Block | None, list[dict]]:
    """Our base / new / H beside the published base-to-new numbers (series with ``protocol: base2new``),
    Δ = ours − paper, flagged beyond the tolerance; None where nothing published matches."""
    tolerance = table.options.tolerance
    ours = _base2new_parts(table)
    if ours.empty:
        return None, []
    compared = compare(ours, paper, tolerance=tolerance)
    matched = compared[compared["paper"].notna()]
    if matched.empty:
        return None, []
    order = list(_PART_TITLES)
    matched = matched.iloc[
        sorted(
            range(len(matched)),
            key=lambda i: (*_paper_order(matched.iloc[i]), order.index(matched.iloc[i]["part"])),
        )
    ]
    within = f"Within ±{tolerance:g} pt"
    rows, payload = [], []
    for r in matched.to_dict("records"):
        incomplete = "" if r["complete"] else f" ({r['n_seeds']}/{len(table.seeds)} seeds)"
        rows.append(
            {
                "Method": table.display(r["label"]),
                "Shots": str(r["shots"]),
                "Dataset": "Average" if r["dataset"] == AVERAGE else dataset_title(r["dataset"]),
                "Part": _PART_TITLES[r["part"]],
                "Ours": table.number(r["mean"]) + incomplete,
                "Paper": table.number(r["paper"]),
                "Δ": signed(r["delta"]),
                within: "yes" if r["within"] else "no",
                "Source": f"{r['paper_source']} [{r['paper_marker']}]",
                "Note": r["note"] if isinstance(r["note"], str) else "",
            }
        )
        payload.append(
            {
                "label": r["label"],
                "dataset": r["dataset"],
                "shots": int(r["shots"]),
                "part": r["part"],
                "ours": _r(r["mean"]),
                "paper": r["paper"],
                "delta": r["delta"],
                "within": bool(r["within"]),
                "source": r["paper_source"],
                "marker": r["paper_marker"],
            }
        )
    outside = sum(1 for r in rows if r[within] == "no")
    notes = [
        f"Δ = ours − paper in points; {len(rows) - outside} of {len(rows)} compared values are within "
        f"±{tolerance:g} pt, {outside} outside. Base and new: mean top-1 over seeds on the base and on the new "
        "classes; H: the harmonic mean of those two means, as CoCoOp and its successors print it; Average: the "
        "mean over the 11 datasets (H of the mean base and mean new), compared only when the table holds all "
        f"11. Without a published base-to-new number: {len(compared) - len(matched)} of our {len(compared)} "
        "values."
    ]
    notes += _source_notes(matched, paper)
    shown = pd.DataFrame(rows)
    if not shown["Note"].astype(bool).any():
        shown = shown.drop(columns=["Note"])
    return Block("Comparison with published base-to-new numbers", 3, (), tuple(notes), shown), payload


def paper_block(table, long: pd.DataFrame, paper: PaperNumbers) -> tuple[Block, pd.DataFrame]:
    """Our top-1 cells beside the published ones, Δ = ours − paper, flagged beyond the tolerance."""
    tolerance = table.options.tolerance
    scored = long["kind"].isin(["cell", "transfer"])
    compared = compare(long[scored].reset_index(drop=True), paper, tolerance=tolerance)
    long = pd.concat([compared, long[~scored]], ignore_index=True)
    matched = compared[compared["paper"].notna()]
    if matched.empty:
        note = (
            f"No published number matches these cells (architecture {', '.join(table.frame['arch'].unique())}, "
            f"generation {', '.join(table.frame['generation'].unique())}, datasets {', '.join(table.datasets)})."
        )
        return Block("Comparison with published numbers", 3, (), (note,)), long
    matched = matched.iloc[sorted(range(len(matched)), key=lambda i: _paper_order(matched.iloc[i]))]
    rows = [_paper_row(table, r, tolerance) for r in matched.to_dict("records")]
    rows += _paper_average_rows(table, compared, tolerance)
    outside = sum(1 for r in rows if r[f"Within ±{tolerance:g} pt"] == "no")
    notes = [
        f"Δ = ours − paper in points; {len(rows) - outside} of {len(rows)} compared values are within "
        f"±{tolerance:g} pt, {outside} outside. Without a published number for their method, dataset, shots, "
        f"architecture and preprocessing generation: {len(compared) - len(matched)} of our {len(compared)} cells."
    ]
    notes += _source_notes(matched, paper)
    columns = [
        "Method",
        "Shots",
        "Dataset",
        "Ours",
        "Paper",
        "Δ",
        f"Within ±{tolerance:g} pt",
        "Source",
        "Note",
    ]
    shown = pd.DataFrame(rows, columns=columns)
    if not shown["Note"].astype(bool).any():
        shown = shown.drop(columns=["Note"])
    return Block("Comparison with published numbers", 3, (), tuple(notes), shown), long


def _paper_order(row) -> tuple:
    return (
        method_sort_key(row["label"]),
        dataset_sort_key(row["dataset"]),
        dataset_sort_key(row["eval_set"]),
        row["shots"],
    )


def _paper_row(table, r: dict, tolerance: float) -> dict:
    dataset = dataset_title(r["eval_set"])
    if r["eval_set"] != r["dataset"]:
        dataset = f"{dataset} (trained on {dataset_title(r['dataset'])})"
    ours = table.number(r["mean"]) + ("" if r["complete"] else f" ({r['n_seeds']}/{r['n_expected']} seeds)")
    return {
        "Method": table.display(r["label"]),
        "Shots": str(r["shots"]),
        "Dataset": dataset,
        "Ours": ours,
        "Paper": table.number(r["paper"]),
        "Δ": signed(r["delta"]),
        f"Within ±{tolerance:g} pt": "yes" if r["within"] else "no",
        "Source": f"{r['paper_source']} [{r['paper_marker']}]",
        "Note": r["note"] if isinstance(r["note"], str) else "",
    }


def _paper_average_rows(table, compared: pd.DataFrame, tolerance: float) -> list[dict]:
    """Rows 'Average' where every dataset of the table has a published value for (method, shots)."""
    cells = compared[compared["kind"] == "cell"]
    rows = []
    if len(table.datasets) < 2:
        return rows
    for (label, shots), group in cells.groupby(["label", "shots"], sort=False):
        if group["paper"].isna().any() or set(group["dataset"]) != set(table.datasets):
            continue
        ours, theirs = group["mean"].mean(), group["paper"].mean()
        delta = ours - theirs
        mark = "" if group["complete"].all() else " (incomplete)"
        rows.append(
            {
                "Method": table.display(label),
                "Shots": str(shots),
                "Dataset": "Average",
                "Ours": table.number(ours) + mark,
                "Paper": table.number(theirs),
                "Δ": signed(delta),
                f"Within ±{tolerance:g} pt": "yes" if abs(delta) <= tolerance + 1e-9 else "no",
                "Source": ", ".join(sorted(set(group["paper_source"]))),
                "Note": "",
            }
        )
    return rows


def _source_notes(matched: pd.DataFrame, paper: PaperNumbers) -> list[str]:
    notes = []
    for source in sorted(matched["paper_source"].unique()):
        info = paper.sources.get(source, {})
        notes.append(f"{source}: {info.get('citation', '?')} ({info.get('where', '?')}).")
        used = matched[matched["paper_source"] == source]
        notes_used = {
            (m, n)
            for m, n in zip(used["method_name"], used["paper_note"], strict=True)
            if isinstance(n, str) and n
        }  # an absent note is None or, after a concat, NaN: never "nan"
        for method, note in sorted(notes_used):
            notes.append(f"{source} / {method}: {note}.")
    notes.append(
        "Markers: [V] verified in the code release or paper, [R] secondary source or derived, "
        "[~] digitised from a figure (about ±0.5 pt)."
    )
    return notes


def check_labels(frame: pd.DataFrame, labels: tuple[str, str], metric: str) -> None:
    a, b = labels
    if a == b:
        raise BenchError(
            f"both methods are {a!r}", where="--compare-methods", fix="name two different rows, e.g. A,B"
        )
    paired_differences(frame, a, b, metric)  # raises when a label has no results


def methods_block(table) -> tuple[Block | None, dict]:
    """Per dataset: A, B, Δ over paired seeds; per shot count: wins and the two tests over datasets."""
    a, b = table.options.compare_methods
    payload = {"a": a, "b": b, "pairs": [], "summary": []}
    if a not in table.labels or b not in table.labels:
        return None, payload
    pairs = paired_differences(table.frame, a, b, table.options.metric)
    if pairs.empty:
        return None, payload
    summary = summarize(pairs, a, b)
    order = sorted(
        range(len(pairs)), key=lambda i: (pairs["shots"].iat[i], dataset_sort_key(pairs["dataset"].iat[i]))
    )
    pairs = pairs.iloc[order]
    rows = [
        {
            "Dataset": dataset_title(r["dataset"]),
            "Shots": str(r["shots"]),
            a: table.number(r["a"]),
            b: table.number(r["b"]),
            "Δ": signed(r["delta"]),
            "Paired seeds": str(r["n_pairs"]),
            f"{a} better (seeds)": f"{r['a_wins']}/{r['n_pairs']}",
            "t-test over seeds": "—" if r["t_seeds"].p is None else f"p = {format_p(r['t_seeds'].p)}",
        }
        for r in pairs.to_dict("records")
    ]
    notes = [s["sentence"] for s in summary]
    notes.append(
        f"Δ = {a} − {b} in points, averaged over the seeds both have; the tests over datasets use these "
        "per-dataset Δ (two-sided). The per-dataset t-test pairs seeds."
    )
    payload["pairs"] = [
        {**{k: v for k, v in r.items() if k not in ("table", "t_seeds")}, "t_seeds": r["t_seeds"].to_json()}
        for r in pairs.to_dict("records")
    ]
    payload["summary"] = [
        {
            **{k: v for k, v in s.items() if k not in ("table", "wilcoxon", "t_test")},
            "wilcoxon": s["wilcoxon"].to_json(),
            "t_test": s["t_test"].to_json(),
        }
        for s in summary
    ]
    return Block(f"{a} vs {b}: paired comparison", 3, (), tuple(notes), pd.DataFrame(rows)), payload


_METHODS_CSV_COLUMNS = [
    *TABLE_KEYS,
    "a",
    "b",
    "dataset",
    "shots",
    "mean_a",
    "mean_b",
    "delta",
    "n_pairs",
    "a_wins_seeds",
    "t_seeds_p",
    "a_wins_datasets",
    "n_datasets",
    "wilcoxon_W",
    "wilcoxon_p",
    "t_datasets",
    "t_datasets_p",
]


def methods_csv(tables: list[dict]) -> pd.DataFrame:
    """The paired comparison as one CSV table: a row per (table, dataset, shots) with its shot count's tests."""
    rows = []
    for t in tables:
        comparison = t.get("method_comparison") or {}
        by_shots = {s["shots"]: s for s in comparison.get("summary", [])}
        for p in comparison.get("pairs", []):
            s = by_shots[p["shots"]]
            rows.append(
                {
                    **{k: t[k] for k in TABLE_KEYS},
                    "a": comparison["a"],
                    "b": comparison["b"],
                    "dataset": p["dataset"],
                    "shots": p["shots"],
                    "mean_a": round(p["a"], 2),
                    "mean_b": round(p["b"], 2),
                    "delta": round(p["delta"], 2),
                    "n_pairs": p["n_pairs"],
                    "a_wins_seeds": p["a_wins"],
                    "t_seeds_p": p["t_seeds"]["p"],
                    "a_wins_datasets": s["a_wins"],
                    "n_datasets": s["n_datasets"],
                    "wilcoxon_W": s["wilcoxon"]["statistic"],
                    "wilcoxon_p": s["wilcoxon"]["p"],
                    "t_datasets": s["t_test"]["statistic"],
                    "t_datasets_p": s["t_test"]["p"],
                }
            )
    return pd.DataFrame(rows, columns=_METHODS_CSV_COLUMNS)
