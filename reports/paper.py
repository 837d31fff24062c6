"""Published numbers (``reports/data/paper_numbers.json``) and their comparison with ours.

A published value matches a cell of ours by (method, dataset, shots, backbone architecture)
and must belong to the same preprocessing *generation* (``coop_v2``: short-side resize +
centre crop; ``coop_v1``: squash to 224×224), since the two differ by several points, and to
the same evaluation *protocol* (``fewshot``: every class; ``base2new``: CoCoOp's base-to-new,
whose values are base accuracy, new accuracy and their harmonic mean, each a *part* matched
only by the same part of ours). A few-shot number never matches a base-to-new cell, nor the
other way round. Among matching values the one whose prompt set equals ours wins, then the
better marker (V verified > R secondary > ~ digitised), then file order. A prompt-set mismatch
is kept and noted rather than hidden.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pandas as pd

from bench.errors import BenchError
from bench.protocols import PROTOCOLS

MARKERS = ("V", "R", "~")
GENERATIONS = ("coop_v1", "coop_v2")
DEFAULT_PROTOCOL = "fewshot"  # a series without "protocol"
PARTS = {"fewshot": ("top1",), "base2new": ("base", "new", "hm")}  # what one published value is, by protocol
AVERAGE = "average"  # the values' key of a mean over the 11 standard datasets, as the source prints it
HM_SLACK = 0.1  # points a printed H may differ from 2·base·new/(base + new) of the printed base and new


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
    protocol: str = DEFAULT_PROTOCOL  # fewshot | base2new (bench.protocols)
    part: str = "top1"  # top1 (fewshot); base, new or hm (base2new)


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
    protocol = series.get("protocol", DEFAULT_PROTOCOL)
    if protocol not in PARTS or protocol not in PROTOCOLS:
        raise BenchError(
            f"unknown protocol {protocol!r}",
            where=where,
            fix=f"use one of {', '.join(p for p in PARTS if p in PROTOCOLS)} (the protocols bench runs)",
        )
    shots = series.get("shots")
    if shots is None and protocol != DEFAULT_PROTOCOL:
        raise BenchError(
            f"a {protocol} series without 'shots'",
            where=where,
            fix="give the shot count(s) the values were trained with",
        )
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
        for k, v in points:
            for part, value in _parts(v, protocol, where=f"{where}: {dataset}"):
                out.append(
                    PaperValue(
                        series["source"],
                        series["method"],
                        series["arch"],
                        dataset,
                        k,
                        value,
                        series["generation"],
                        prompts,
                        series["marker"],
                        series.get("note"),
                        protocol,
                        part,
                    )
                )
    return out


def _parts(value, protocol: str, *, where: str) -> list[tuple[str, float]]:
    """(part, number) of one published value: a number (fewshot) or {"base", "new", "hm"} (base2new)."""
    parts = PARTS[protocol]
    if parts == ("top1",):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BenchError(
                f"{value!r} is not a number", where=where, fix="a few-shot value is one top-1 accuracy"
            )
        return [("top1", float(value))]
    if not isinstance(value, dict) or set(value) != set(parts):
        raise BenchError(
            f"{value!r} is not {{{', '.join(repr(p) for p in parts)}}}",
            where=where,
            fix=f"a {protocol} value gives base, new and hm (their harmonic mean) as printed",
        )
    if any(isinstance(value[p], bool) or not isinstance(value[p], (int, float)) for p in parts):
        raise BenchError(f"{value!r} holds a non-number", where=where, fix="give numbers in percent")
    base, new, hm = (float(value[p]) for p in parts)
    if abs(hm - (2 * base * new / (base + new) if base + new else 0.0)) > HM_SLACK:
        raise BenchError(
            f"hm {hm} is not the harmonic mean of base {base} and new {new}",
            where=where,
            fix="check the numbers against the source (H = 2·base·new/(base + new))",
        )
    return [("base", base), ("new", new), ("hm", hm)]


def best_match(
    paper: PaperNumbers,
    *,
    method: str,
    arch: str,
    dataset: str,
    shots: int,
    generation: str,
    prompts: str | None,
    protocol: str = DEFAULT_PROTOCOL,
    part: str = "top1",
) -> PaperValue | None:
    """The published value for one cell of ours, or None (see the module docstring for the order).

    ``protocol`` is the cell's (``fewshot`` or ``base2new``); ``part`` what its number is: ``top1``
    for a few-shot cell, ``base``, ``new`` or ``hm`` for a base-to-new one.
    """
    candidates = [
        v
        for v in paper.values
        if v.method == method
        and v.arch == arch
        and v.dataset == dataset
        and v.shots in (None, shots)
        and v.generation == generation
        and v.protocol == protocol
        and v.part == part
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
            names the split scored (the dataset itself, a shift set for transfer rows, or
            ``average`` for a mean over the 11 standard datasets); optional ``protocol``
            (default ``fewshot``) and ``part`` (default ``top1``; ``base``, ``new`` or ``hm`` for
            base-to-new rows) say which published values may match.
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
            protocol=getattr(cell, "protocol", DEFAULT_PROTOCOL),
            part=getattr(cell, "part", "top1"),
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
