"""Published numbers (``reports/data/paper_numbers.json``) and their comparison with ours.

A published value matches a cell of ours by (method, dataset, shots, backbone architecture)
and must belong to the same preprocessing *generation* (``coop_v2``: short-side resize +
centre crop; ``coop_v1``: squash to 224×224), since the two differ by several points.
Among matching values the one whose prompt set equals ours wins, then the better marker
(V verified > R secondary > ~ digitised), then file order. A prompt-set mismatch is kept and
noted rather than hidden.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pandas as pd

from bench.errors import BenchError

MARKERS = ("V", "R", "~")
GENERATIONS = ("coop_v1", "coop_v2")


@dataclass(frozen=True)
class PaperValue:
    """One published number: top-1 in percent, with where it comes from."""

    source: str
    method: str
    arch: str
    dataset: str
    shots: int | None  # None: does not depend on shots (zero-shot)
    value: float
    generation: str
    prompts: str | None
    marker: str
    note: str | None = None


@dataclass(frozen=True)
class PaperNumbers:
    values: tuple[PaperValue, ...]
    sources: dict  # source id -> {"citation", "where", ...}
    path: str


def default_path() -> Path:
    return Path(str(resources.files("bench.reports") / "data" / "paper_numbers.json"))


def load_paper_numbers(path: Path | None = None, *, sources: tuple[str, ...] | None = None) -> PaperNumbers:
    """Read and check a paper-numbers file (the shipped one by default), keeping only ``sources`` if given."""
    path = Path(path) if path else default_path()
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BenchError(
            f"cannot read published numbers ({exc})",
            where=str(path),
            fix="pass a JSON file in the format of bench's reports/data/paper_numbers.json",
        ) from exc
    known = doc.get("sources") or {}
    if sources:
        unknown = sorted(set(sources) - set(known))
        if unknown:
            raise BenchError(
                f"unknown paper source(s) {', '.join(unknown)}",
                where="--paper-source",
                fix=f"sources in {path.name}: {', '.join(sorted(known))}",
            )
    values = []
    for i, series in enumerate(doc.get("series") or []):
        values += _series_values(series, where=f"{path}: series[{i}]", sources=known)
    if sources:
        values = [v for v in values if v.source in sources]
    return PaperNumbers(tuple(values), known, str(path))


def _series_values(series: dict, *, where: str, sources: dict) -> list[PaperValue]:
    required = ("source", "method", "arch", "generation", "marker", "values")
    missing = [k for k in required if k not in series]
    if missing:
        raise BenchError(
            f"series lacks {', '.join(missing)}", where=where, fix="add the fields (see 'fields' in the file)"
        )
    if series["source"] not in sources:
        raise BenchError(
            f"source {series['source']!r} is not listed under 'sources'",
            where=where,
            fix="add it with its citation",
        )
    if series["marker"] not in MARKERS:
        raise BenchError(
            f"marker {series['marker']!r} is not one of {', '.join(MARKERS)}",
            where=where,
            fix="unverified numbers ([?]) do not belong in this file",
        )
    if series["generation"] not in GENERATIONS:
        raise BenchError(
            f"unknown generation {series['generation']!r}", where=where, fix=f"use {' or '.join(GENERATIONS)}"
        )
    shots = series.get("shots")
    out = []
    for dataset, raw in series["values"].items():
        raw_list = raw if isinstance(raw, list) else [raw]
        if shots is None and isinstance(raw, list):
            raise BenchError(
                f"{dataset}: a list of values but no 'shots'",
                where=where,
                fix="give 'shots' for per-shot values, or one number for a zero-shot series",
            )
        if shots is not None and len(raw_list) != len(shots):
            raise BenchError(
                f"{dataset}: {len(raw_list)} values for {len(shots)} shot counts",
                where=where,
                fix="give one value per entry of 'shots'",
            )
        points = [(None, raw)] if shots is None else list(zip(shots, raw_list, strict=True))
        prompts = (series.get("prompts_by_dataset") or {}).get(dataset, series.get("prompts"))
        out += [
            PaperValue(
                series["source"],
                series["method"],
                series["arch"],
                dataset,
                k,
                float(v),
                series["generation"],
                prompts,
                series["marker"],
                series.get("note"),
            )
            for k, v in points
        ]
    return out


def best_match(
    paper: PaperNumbers,
    *,
    method: str,
    arch: str,
    dataset: str,
    shots: int,
    generation: str,
    prompts: str | None,
) -> PaperValue | None:
    """The published value for one cell of ours, or None (see the module docstring for the order)."""
    candidates = [
        v
        for v in paper.values
        if v.method == method
        and v.arch == arch
        and v.dataset == dataset
        and v.shots in (None, shots)
        and v.generation == generation
    ]
    if not candidates:
        return None
    order = {id(v): i for i, v in enumerate(paper.values)}
    return min(
        candidates,
        key=lambda v: (v.prompts is not None and v.prompts != prompts, MARKERS.index(v.marker), order[id(v)]),
    )


def compare(cells: pd.DataFrame, paper: PaperNumbers, *, tolerance: float) -> pd.DataFrame:
    """Our cells beside the published numbers.

    Args:
        cells: rows with ``method_name``, ``arch``, ``dataset``, ``shots``, ``generation``,
            ``prompts``, ``mean`` (percent) and any identity columns to keep; ``eval_set``
            names the split scored (the dataset itself, or a shift set for transfer rows).
        tolerance: |Δ| in points beyond which a cell is flagged.

    Returns:
        ``cells`` plus ``paper``, ``delta`` (ours − paper), ``within`` (bool),
        ``paper_source``, ``paper_marker``, ``paper_prompts``, ``paper_note`` and ``note``
        (what differs between the two settings); NaN/None where nothing was published.
    """
    rows = []
    for cell in cells.itertuples(index=False):
        ours_prompts = None if cell.prompts == "n/a" else cell.prompts
        match = best_match(
            paper,
            method=cell.method_name,
            arch=cell.arch,
            dataset=cell.eval_set,
            shots=cell.shots,
            generation=cell.generation,
            prompts=ours_prompts,
        )
        extra = {
            "paper": None,
            "delta": None,
            "within": None,
            "paper_source": None,
            "paper_marker": None,
            "paper_prompts": None,
            "paper_note": None,
            "note": "",
        }
        if match is not None:
            # both sides as printed (2 decimals), so the flag agrees with the numbers a reader sees
            delta = round(cell.mean - match.value, 2)
            mismatch = match.prompts is not None and match.prompts != ours_prompts
            extra.update(
                paper=match.value,
                delta=delta,
                within=abs(delta) <= tolerance + 1e-9,
                paper_source=match.source,
                paper_marker=match.marker,
                paper_prompts=match.prompts,
                paper_note=match.note,
                note=f"prompts differ (paper: {match.prompts}, ours: {ours_prompts})" if mismatch else "",
            )
        rows.append({**cell._asdict(), **extra})
    return pd.DataFrame(rows)
