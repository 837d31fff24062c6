"""Result records -> a flat DataFrame -> mean ± spread over seeds, holes.

Cells are grouped into *tables* by everything that must not be averaged together:
backbone id and weights hash, tuning mode, preprocessing and protocol (few-shot or
base-to-new). Inside a table a *row* is a ``label``: the method with its explicit config
overrides (``clip_adapter[alpha=0.5]``) and, when one method ran with several prompt sets,
the prompt set (``zero_shot (prompts: ensemble)``), and likewise, when one tuned method ran
with several trial budgets, the budget (``clip_adapter (50 trials)``), so a row never averages
over differing prompts or budgets. A *column* is a dataset. :func:`mix_settings` lifts these walls only when asked
(``--allow-mixed``), and says so in the column it merged.

Accuracies are in percent here; records store fractions.
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from bench.errors import BenchError
from bench.results import BackboneInfo, RunResult, Spec, TuningInfo

TABLE_KEYS = ["backbone", "weights_sha256", "tune", "preprocessing", "protocol"]
CELL_KEYS = [*TABLE_KEYS, "label", "dataset", "shots"]
_DEDUP_KEYS = [*TABLE_KEYS, "method", "prompts", "trials", "dataset", "shots", "seed"]
METRICS = ("top1", "top5", "mean_per_class_recall", "val_top1")
BASE2NEW_METRICS = ("base_top1", "new_top1", "harmonic_mean")
TRANSFER_PREFIX = "transfer/"
MINIATURE_SUFFIX = (
    " (miniature)"  # on the dataset of a miniature's records (never averaged with the real set)
)
NO_PROMPTS = "n/a"  # methods without prompts (linear probe); a string so groupby keeps the rows
MIXABLE = ("backbone", "weights", "preprocessing", "prompts")
_MIX_COLUMNS = {
    "backbone": ["backbone", "arch", "weights_sha256"],
    "weights": ["weights_sha256"],
    "preprocessing": ["preprocessing", "generation"],
    "prompts": ["prompts"],
}
OPENAI_NORM = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


def method_label(spec: Spec) -> str:
    """``clip_adapter``, or ``clip_adapter[alpha=0.5]`` for a cell with ``--set`` overrides."""
    if not spec.overrides:
        return spec.method
    inner = ",".join(
        f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in sorted(spec.overrides.items())
    )
    return f"{spec.method}[{inner}]"


def preprocessing_label(prep: dict | None) -> str:
    """``"shortest 224px bicubic"``; a non-OpenAI normalisation is spelled out, since it changes numbers."""
    if not prep:
        return "?"
    label = f"{prep.get('resize')} {prep.get('image_size')}px {prep.get('interpolation')}"
    if not _openai_normalisation(prep):
        mean, std = _normalisation(prep)
        label += f" mean={list(mean)} std={list(std)}"
    return label


def _normalisation(prep: dict) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of ``prep``; an absent one is CLIP's."""
    return tuple(prep.get("mean") or OPENAI_NORM[0]), tuple(prep.get("std") or OPENAI_NORM[1])


def _openai_normalisation(prep: dict) -> bool:
    return all(
        math.isclose(a, b, rel_tol=1e-6)
        for got, ref in zip(_normalisation(prep), OPENAI_NORM, strict=True)
        for a, b in zip(got, ref, strict=True)
    )


NO_GENERATION = "none"


def generation(prep: dict | None) -> str:
    """The published-number generation this preprocessing reproduces (see reports/data/paper_numbers.json):
    ``coop_v2`` (short side + centre crop) or ``coop_v1`` (squash), both bicubic with CLIP's normalisation;
    anything else reproduces none (:data:`NO_GENERATION`) and is compared with no published number."""
    prep = prep or {}
    if prep.get("interpolation") != "bicubic" or not _openai_normalisation(prep):
        return NO_GENERATION
    return {"shortest": "coop_v2", "squash": "coop_v1"}.get(prep.get("resize"), NO_GENERATION)


def _percent(value) -> float | None:
    return None if value is None else 100.0 * float(value)


def paper_arch(backbone: BackboneInfo) -> str:
    """The architecture published numbers are matched by (``RN50`` for ``RN50/openai``,
    ``RN50-quickgelu/openai`` and OpenAI's ``RN50.pt``). A build no published number was made with
    (GELU-built OpenAI weights, other tags, random init) keeps its name with a mark, so it matches none.
    Records written before the activation was recorded keep their architecture."""
    arch = backbone.arch or backbone.id.split("/")[0]
    if backbone.activation is None:
        return arch
    if backbone.paper_arch:
        return backbone.paper_arch
    mark = {"none": "random init", "other": backbone.weights}.get(
        backbone.weights_origin
    ) or backbone.activation
    return f"{arch} ({mark})"


DEFAULT_SAMPLING = "dassl"


def sampling_suffix(split_protocol: str | None) -> str:
    """``" (sampling: dassl_full_val)"`` for subsets not drawn with the default ``--sampling dassl``
    (other subsets, or another selection split); ``""`` otherwise and for records that predate it.
    ImageNet's ``+val_from_train`` is the dataset's, not a choice, so it is left out."""
    drawn = (split_protocol or DEFAULT_SAMPLING).split("+")[0]
    return "" if drawn == DEFAULT_SAMPLING else f" (sampling: {drawn})"


def trial_batch_suffix(tuning: TuningInfo) -> str:
    """``" (trial batch 4)"`` for a study run with ``--trial-batch 4`` (another search, its own run id and
    study); ``""`` for one-at-a-time studies, untuned cells and records that predate the option."""
    batch = (tuning.sampler or {}).get("trial_batch") or 1
    return "" if batch <= 1 else f" (trial batch {batch})"


def record_keys(r: RunResult) -> dict:
    """The columns that place a record in a table (backbone, weights, tuning, method label, cell), shared by
    the results frame and the parameter frame. The method label carries the sampling and the trial batch,
    so records drawn with another ``--sampling`` or tuned with ``--trial-batch N`` are rows of their own,
    never averaged with (or replaced by) the default's."""
    return {
        "backbone": r.backbone.id,
        "weights_sha256": (r.backbone.weights_sha256 or "?")[:12],
        "tune": r.spec.tune,
        "trials": r.spec.trials,
        "method": method_label(r.spec)
        + sampling_suffix(r.data.split_protocol)
        + trial_batch_suffix(r.tuning),
        "dataset": r.spec.dataset,
        "shots": r.spec.shots,
        "seed": r.spec.seed,
        "finished_at": r.provenance.finished_at or "",
    }


def _row(r: RunResult) -> dict:
    prep = r.data.preprocessing
    metrics = r.metrics.to_json() if r.ok else {}
    row = {
        **record_keys(r),
        "arch": paper_arch(r.backbone),
        "preprocessing": preprocessing_label(prep),
        "generation": generation(prep),
        "protocol": r.spec.protocol or "fewshot",
        "method_name": r.spec.method,
        "prompts": r.prompts.set if r.prompts else NO_PROMPTS,
        # a miniature of a real layout must never average with the real dataset's numbers
        "dataset": r.spec.dataset + (" (miniature)" if r.data.miniature else ""),
        "status": r.status,
        "error": r.error.message if r.error else None,
    }
    for name in (*METRICS, *BASE2NEW_METRICS):
        row[name] = _percent(metrics.get(name))
    for shift, scores in sorted((metrics.get("transfer") or {}).items()):
        row[TRANSFER_PREFIX + shift] = _percent((scores or {}).get("top1"))
    return row


def results_frame(results: list[RunResult]) -> pd.DataFrame:
    """One row per record: identity columns, ``status``, metrics in percent, ``finished_at``.

    Where several records describe the same (table, method, prompts, dataset, shots, seed)
    cell (a method version changed, a cell was re-run), only the latest one is kept. A failed
    record written before its backbone loaded has no weights hash or preprocessing; it joins
    the one table of its backbone, tuning and protocol, so it shows as a hole there.
    """
    frame = pd.DataFrame([_row(r) for r in results])
    if frame.empty:
        return frame
    frame = _adopt_orphans(frame)
    frame = frame.sort_values("finished_at", kind="stable").drop_duplicates(_DEDUP_KEYS, keep="last")
    frame = add_labels(frame)
    return frame.sort_values([*CELL_KEYS, "seed"], kind="stable").reset_index(drop=True)


def _adopt_orphans(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    orphan = frame["weights_sha256"].eq("?") & frame["preprocessing"].eq("?")
    known = frame[~orphan]
    for index in frame.index[orphan]:
        row = frame.loc[index]
        same = known[
            (known["backbone"] == row["backbone"])
            & (known["tune"] == row["tune"])
            & (known["protocol"] == row["protocol"])
        ]
        tables = same[["weights_sha256", "preprocessing", "generation"]].drop_duplicates()
        if len(tables) == 1:
            frame.loc[index, ["weights_sha256", "preprocessing", "generation"]] = tables.iloc[0].tolist()
            prompts = same.loc[same["method"] == row["method"], "prompts"].unique()
            if len(prompts) == 1:
                frame.loc[index, "prompts"] = prompts[0]
    return frame


def add_labels(frame: pd.DataFrame) -> pd.DataFrame:
    """Set ``label``: the method label, plus the prompt set where the method has several in its table,
    plus the trial budget where it was tuned with several (the latest budget must not hide the others)."""
    frame = frame.copy()
    n_prompts = frame.groupby([*TABLE_KEYS, "method"])["prompts"].transform("nunique")
    n_budgets = frame.groupby([*TABLE_KEYS, "method", "prompts"])["trials"].transform("nunique")
    frame["label"] = [
        m + ("" if n <= 1 else f" (prompts: {p})") + ("" if b <= 1 else f" ({t} trials)")
        for m, p, n, t, b in zip(
            frame["method"], frame["prompts"], n_prompts, frame["trials"], n_budgets, strict=True
        )
    ]
    return frame


def mix_settings(frame: pd.DataFrame, allowed: frozenset[str]) -> pd.DataFrame:
    """Merge tables (or, for ``prompts``, rows) that differ only in the ``allowed`` settings.

    A merged column reads ``"mixed: a + b"``, so every header says what was averaged together.
    Two records of the same seed that now fall in one cell keep only the latest.
    """
    unknown = sorted(set(allowed) - set(MIXABLE))
    if unknown:
        raise BenchError(
            f"cannot mix {', '.join(unknown)}",
            where="--allow-mixed",
            fix=f"use some of: {', '.join(MIXABLE)}",
        )
    if frame.empty or not allowed:
        return frame
    frame = frame.copy()
    columns = [c for name in MIXABLE if name in allowed for c in _MIX_COLUMNS[name]]
    keep = [c for c in TABLE_KEYS if c not in columns]
    for column in columns:
        by = [*keep, "method"] if column == "prompts" else keep
        frame[column] = frame.groupby(by, dropna=False)[column].transform(_mixed_value)
    frame = frame.sort_values("finished_at", kind="stable").drop_duplicates(_DEDUP_KEYS, keep="last")
    return add_labels(frame).sort_values([*CELL_KEYS, "seed"], kind="stable").reset_index(drop=True)


def _mixed_value(values: pd.Series) -> str:
    distinct = sorted({str(v) for v in values})
    return distinct[0] if len(distinct) == 1 else "mixed: " + " + ".join(distinct)


@dataclass(frozen=True)
class Filters:
    """Which records a report covers; ``None`` keeps everything. Patterns are fnmatch patterns."""

    methods: tuple[str, ...] | None = None
    datasets: tuple[str, ...] | None = None
    shots: tuple[int, ...] | None = None
    backbones: tuple[str, ...] | None = None
    tune: tuple[str, ...] | None = None
    seeds: tuple[int, ...] | None = None


def filter_frame(frame: pd.DataFrame, filters: Filters) -> pd.DataFrame:
    """Rows of ``frame`` that pass every filter; a filter that matches nothing is a user error."""
    checks = [
        ("--methods", filters.methods, ["method_name", "method"]),
        ("--datasets", filters.datasets, ["dataset"]),
        ("--backbone", filters.backbones, ["backbone", "arch"]),
        ("--tune", filters.tune, ["tune"]),
        ("--shots", filters.shots, ["shots"]),
        ("--seeds", filters.seeds, ["seed"]),
    ]
    for flag, wanted, columns in checks:
        if wanted is None or frame.empty:
            continue
        keep = np.zeros(len(frame), dtype=bool)
        for column in columns:
            keep |= frame[column].map(lambda v, w=wanted: _matches(v, w)).to_numpy(dtype=bool)
            if (
                column == "dataset"
            ):  # a miniature's rows read "dtd (miniature)": --datasets dtd selects them too
                names = frame[column].astype(str).str.removesuffix(MINIATURE_SUFFIX)
                keep |= names.map(lambda v, w=wanted: _matches(v, w)).to_numpy(dtype=bool)
        if not keep.any():
            available = sorted({str(v) for v in frame[columns[0]]})
            raise BenchError(
                f"no result records match {','.join(map(str, wanted))}",
                where=flag,
                fix=f"records have: {', '.join(available)}",
            )
        frame = frame[keep]
    return frame.reset_index(drop=True)


def _matches(value, wanted: tuple) -> bool:
    if isinstance(value, (int, np.integer)):
        return int(value) in wanted
    return any(fnmatch.fnmatchcase(str(value), str(w)) for w in wanted)


def aggregate(frame: pd.DataFrame, value: str = "top1") -> pd.DataFrame:
    """Mean and spread of ``value`` over seeds, one row per cell key (:data:`CELL_KEYS`).

    Columns: ``mean``; ``std``, the population std (``np.std``, as CoOp's
    ``parse_test_res.py``); ``ci95`` = 1.96·std/√n (CoOp's ``--ci95``); ``ci95_t`` =
    t(0.975, n−1)·s/√n with the sample std s (NaN for n < 2); ``n_seeds``; ``seeds``; and the
    cell's ``method``, ``method_name``, ``prompts``, ``arch``, ``generation``. Records whose
    ``value`` is absent do not count; cells with no value at all are left out.
    """
    ok = frame[(frame["status"] == "ok") & frame[value].notna()] if value in frame else frame.iloc[0:0]
    columns = [
        *CELL_KEYS,
        "mean",
        "std",
        "ci95",
        "ci95_t",
        "n_seeds",
        "seeds",
        "method",
        "method_name",
        "prompts",
        "arch",
        "generation",
    ]
    if ok.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for key, group in ok.groupby(CELL_KEYS, sort=True):
        values = group[value].to_numpy(dtype=float)
        first = group.iloc[0]
        rows.append(
            {
                **dict(zip(CELL_KEYS, key, strict=True)),
                **spread(values),
                "seeds": sorted(group["seed"].tolist()),
                **{c: first[c] for c in ("method", "method_name", "prompts", "arch", "generation")},
            }
        )
    return pd.DataFrame(rows, columns=columns)


def spread(values: np.ndarray) -> dict:
    """``mean``, ``std`` (population), ``ci95`` (CoOp: 1.96·std/√n), ``ci95_t`` (Student t) and ``n_seeds``."""
    n = len(values)
    std = float(np.std(values))
    ci95_t = float("nan")
    if n >= 2:
        ci95_t = float(stats.t.ppf(0.975, n - 1) * np.std(values, ddof=1) / math.sqrt(n))
    return {
        "mean": float(np.mean(values)),
        "std": std,
        "ci95": 1.96 * std / math.sqrt(n),
        "ci95_t": ci95_t,
        "n_seeds": n,
    }


def expected_seeds(frame: pd.DataFrame, seeds: tuple[int, ...] | None = None) -> dict[tuple, list[int]]:
    """Per table, the seeds a complete cell has: ``seeds`` when given (``--seeds``), else every seed
    any record of the table used."""
    return {
        key: sorted(seeds) if seeds else sorted(group["seed"].unique().tolist())
        for key, group in frame.groupby(TABLE_KEYS)
    }


def holes(frame: pd.DataFrame, seeds: tuple[int, ...] | None = None) -> tuple[list[str], list[str]]:
    """(missing, failed) cells as ``label/dataset/kK/sS`` strings, per table.

    A table's full grid is the product of the labels, datasets, shots and seeds that appear
    in it (or ``seeds``); a cell of that grid without an ok record is missing, or failed if
    its record failed.
    """
    missing, failed = [], []
    expected = expected_seeds(frame, seeds)
    for key, group in frame.groupby(TABLE_KEYS):
        cell = ["label", "dataset", "shots", "seed"]
        present = set(map(tuple, group[group["status"] == "ok"][cell].values))
        failures = set(map(tuple, group[group["status"] != "ok"][cell].values))
        for label in sorted(group["label"].unique()):
            for d in sorted(group["dataset"].unique()):
                for k in sorted(group["shots"].unique()):
                    for s in expected[key]:
                        name = f"{label}/{d}/k{k}/s{s}"
                        if (label, d, k, s) in failures:
                            failed.append(name)
                        elif (label, d, k, s) not in present:
                            missing.append(name)
    return missing, failed


def table_settings(key: tuple) -> dict:
    """``{"backbone": ..., "weights_sha256": ..., ...}`` of a table key."""
    return dict(zip(TABLE_KEYS, key, strict=True))


def table_keys(frame: pd.DataFrame) -> list[tuple]:
    """The tables of ``frame`` in reading order: backbone, weights, honest before oracle, preprocessing,
    few-shot before other protocols."""
    tune_order = {"none": 0, "val": 1, "oracle": 2}
    keys = [key for key, _ in frame.groupby(TABLE_KEYS, sort=True)]
    return sorted(
        keys, key=lambda k: (k[0], k[1], tune_order.get(k[2], 3), k[2], k[3], k[4] != "fewshot", k[4])
    )


def in_table(frame: pd.DataFrame, key: tuple) -> pd.DataFrame:
    """The rows of ``frame`` whose :data:`TABLE_KEYS` equal ``key``."""
    if frame.empty:
        return frame
    mask = np.logical_and.reduce([frame[k].to_numpy() == v for k, v in zip(TABLE_KEYS, key, strict=True)])
    return frame[mask]


def dataset_average(frame: pd.DataFrame, cells: pd.DataFrame, value: str = "top1") -> pd.DataFrame:
    """Per table, label and shots: the average over the table's datasets.

    ``mean`` is the mean of the cells' means and needs every dataset of the table (else NaN
    and ``complete_datasets`` False). ``per_seed`` lists the per-seed averages over the seeds
    every dataset has (the spread of the CLIP-Adapter paper's average panel comes from them), ``seeds``
    those seeds;
    ``min_seeds`` is the fewest seeds any of the cells has.
    """
    columns = [
        *TABLE_KEYS,
        "label",
        "shots",
        "mean",
        "per_seed",
        "seeds",
        "min_seeds",
        "n_datasets",
        "complete_datasets",
    ]
    ok = frame[(frame["status"] == "ok") & frame[value].notna()] if value in frame else frame.iloc[0:0]
    rows = []
    for key, group in frame.groupby(TABLE_KEYS, sort=True):
        datasets = set(group["dataset"])
        table_ok = in_table(ok, key)
        for (label, shots), row_cells in in_table(cells, key).groupby(["label", "shots"], sort=True):
            complete = set(row_cells["dataset"]) == datasets
            seeds = table_ok[(table_ok["label"] == label) & (table_ok["shots"] == shots)]
            per_seed = seeds.pivot_table(
                index="seed", columns="dataset", values=value, aggfunc="mean"
            ).dropna()
            averages = per_seed.mean(axis=1).tolist() if complete else []
            rows.append(
                {
                    **dict(zip(TABLE_KEYS, key, strict=True)),
                    "label": label,
                    "shots": shots,
                    "mean": float(row_cells["mean"].mean()) if complete else float("nan"),
                    "per_seed": averages,
                    "seeds": [int(x) for x in per_seed.index] if complete else [],
                    "min_seeds": int(row_cells["n_seeds"].min()),
                    "n_datasets": len(datasets),
                    "complete_datasets": complete,
                }
            )
    return pd.DataFrame(rows, columns=columns)
