"""Paired comparison of two methods: per dataset over seeds, then over datasets.

For each table and shot count, a dataset contributes the mean over the seeds both methods
have of (A − B) in accuracy points. Over datasets we report the Wilcoxon signed-rank test
(two-sided; zero differences dropped, as Wilcoxon's original procedure; the exact null
distribution without ties, the normal approximation with ties) and the paired t-test
(two-sided, on the same differences). With few datasets these tests cannot reach small
p-values (Wilcoxon with n datasets: at best 2/2^n), which the report says; a test whose
statistic is undefined (every difference zero, n < 2, or all differences equal for t) is
reported as undefined instead of as a number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from bench.errors import BenchError
from bench.reports.aggregate import TABLE_KEYS


@dataclass(frozen=True)
class TestResult:
    """A named test: ``p`` is None when the test is undefined for these data (``note`` says why)."""

    name: str
    statistic: float | None
    p: float | None
    n: int
    note: str = ""

    def to_json(self) -> dict:
        return {"test": self.name, "statistic": self.statistic, "p": self.p, "n": self.n, "note": self.note}


def paired_differences(frame: pd.DataFrame, a: str, b: str, value: str = "top1") -> pd.DataFrame:
    """One row per (table, dataset, shots) where rows ``a`` and ``b`` share at least one seed.

    Args:
        frame: a results frame (one row per record, ``label`` set, values in percent).
        a, b: row labels (``clip_adapter``, ``clip_adapter[alpha=0.5]``).

    Returns:
        Columns: ``table`` (tuple of the table keys), ``dataset``, ``shots``, ``a``, ``b``
        (means over the paired seeds), ``delta`` (a − b), ``n_pairs``, ``a_wins`` (seeds where
        a > b), ``t_seeds`` (paired t-test over seeds, a :class:`TestResult`).
    """
    ok = frame[(frame["status"] == "ok") & frame[value].notna()] if value in frame else frame.iloc[0:0]
    for label in (a, b):
        if label not in set(ok["label"]):
            raise BenchError(
                f"no results for {label!r}",
                where="--compare-methods",
                fix=f"rows in these results: {', '.join(sorted(set(ok['label'])))}",
            )
    rows = []
    for key, group in ok.groupby([*TABLE_KEYS, "dataset", "shots"], sort=True):
        wide = group[group["label"].isin([a, b])].pivot_table(index="seed", columns="label", values=value)
        if a not in wide or b not in wide:
            continue
        wide = wide[[a, b]].dropna()
        if wide.empty:
            continue
        diffs = (wide[a] - wide[b]).to_numpy()
        rows.append(
            {
                "table": key[: len(TABLE_KEYS)],
                "dataset": key[-2],
                "shots": key[-1],
                "a": float(wide[a].mean()),
                "b": float(wide[b].mean()),
                "delta": float(diffs.mean()),
                "n_pairs": len(diffs),
                "a_wins": int((diffs > 0).sum()),
                "t_seeds": paired_t(diffs),
            }
        )
    return pd.DataFrame(
        rows, columns=["table", "dataset", "shots", "a", "b", "delta", "n_pairs", "a_wins", "t_seeds"]
    )


def wilcoxon(diffs: np.ndarray) -> TestResult:
    """Two-sided Wilcoxon signed-rank test of ``diffs`` (zeros dropped)."""
    name = "Wilcoxon signed-rank"
    nonzero = np.asarray(diffs, dtype=float)
    nonzero = nonzero[np.abs(nonzero) > 1e-12]
    n = len(nonzero)
    if n == 0:
        return TestResult(name, None, None, 0, "undefined: every difference is zero")
    ties = len(np.unique(np.round(np.abs(nonzero), 9))) < n
    method = "asymptotic" if ties or n > 50 else "exact"
    result = stats.wilcoxon(nonzero, method=method)
    notes = ["normal approximation (tied |differences|)" if method == "asymptotic" else "exact"]
    dropped = len(diffs) - n
    if dropped:
        notes.append(f"{dropped} zero difference(s) dropped")
    if method == "exact" and n < 6:
        notes.append(f"with n = {n} the smallest attainable p is {2 / 2**n:.3g}")
    return TestResult(name, float(result.statistic), float(result.pvalue), n, "; ".join(notes))


def paired_t(diffs: np.ndarray) -> TestResult:
    """Two-sided one-sample t-test of ``diffs`` against 0 (= the paired t-test)."""
    name = "paired t-test"
    diffs = np.asarray(diffs, dtype=float)
    n = len(diffs)
    if n < 2:
        return TestResult(name, None, None, n, "undefined: needs at least 2 pairs")
    if np.ptp(diffs) < 1e-12:
        return TestResult(name, None, None, n, "undefined: every difference is the same")
    result = stats.ttest_1samp(diffs, 0.0)
    return TestResult(name, float(result.statistic), float(result.pvalue), n, f"df = {n - 1}")


def summarize(pairs: pd.DataFrame, a: str, b: str) -> list[dict]:
    """Per table and shot count: wins, mean Δ, both tests, and the sentence a paper would print."""
    out = []
    for (table, shots), group in pairs.groupby(["table", "shots"], sort=True):
        diffs = group["delta"].to_numpy()
        w, t = wilcoxon(diffs), paired_t(diffs)
        wins, ties = int((diffs > 1e-12).sum()), int((np.abs(diffs) <= 1e-12).sum())
        out.append(
            {
                "table": table,
                "shots": int(shots),
                "n_datasets": len(diffs),
                "a_wins": wins,
                "ties": ties,
                "mean_delta": float(diffs.mean()),
                "wilcoxon": w,
                "t_test": t,
                "sentence": sentence(a, b, int(shots), wins, ties, len(diffs), float(diffs.mean()), w, t),
            }
        )
    return out


def sentence(
    a: str, b: str, shots: int, wins: int, ties: int, n: int, mean_delta: float, w: TestResult, t: TestResult
) -> str:
    """``"A beats B on 9/11 datasets at 16 shots (mean Δ +2.31 pt); Wilcoxon … p = 0.0098; …"``."""
    tie_text = f", ties on {ties}" if ties else ""
    return (
        f"{a} beats {b} on {wins}/{n} datasets at {shots} shot{'s' if shots != 1 else ''}{tie_text} "
        f"(mean Δ {_signed(mean_delta)} pt); "
        f"{_describe(w, 'W')}; {_describe(t, 't')}."
    )


def _describe(test: TestResult, symbol: str) -> str:
    if test.p is None:
        return f"{test.name}: {test.note}"
    return f"{test.name}: {symbol} = {test.statistic:.3g}, p = {format_p(test.p)} ({test.note})"


def format_p(p: float) -> str:
    """Three significant digits; tiny values in scientific notation."""
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3g}"


def _signed(value: float) -> str:
    return f"{value:+.2f}".replace("-", "−") if not math.isnan(value) else "—"
