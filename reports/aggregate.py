"""Result records -> a flat DataFrame -> mean ± std over seeds, dataset averages, holes.

Cells are grouped into *tables* by everything that must not be averaged together:
backbone id and weights hash, tuning mode, and preprocessing. Inside a table a *row key*
is (method label, shots) and a *column* is a dataset; the method label carries explicit
config overrides (``clip_adapter[alpha=0.5]``) so variants never mix.
"""

from __future__ import annotations

import json

import pandas as pd

from bench.results import RunResult

TABLE_KEYS = ["backbone", "weights_sha256", "tune", "preprocessing"]
CELL_KEYS = [*TABLE_KEYS, "method", "dataset", "shots"]


def method_label(spec: dict) -> str:
    overrides = spec.get("overrides") or {}
    if not overrides:
        return spec["method"]
    inner = ",".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in sorted(overrides.items()))
    return f"{spec['method']}[{inner}]"


def _preprocessing_label(data: dict) -> str:
    prep = data.get("preprocessing") or {}
    if not prep:
        return "?"
    return f"{prep.get('resize')} {prep.get('image_size')}px {prep.get('interpolation')}"


def results_frame(results: list[RunResult]) -> pd.DataFrame:
    """One row per record: identity columns, ``status``, ``top1`` in percent, ``finished_at``.

    Where several records describe the same (table, method, dataset, shots, seed) cell (a
    method version changed, a cell was re-run), only the latest finished one is kept.
    """
    rows = []
    for r in results:
        rows.append({
            "backbone": r.backbone.get("id", r.spec.get("backbone")),
            "weights_sha256": (r.backbone.get("weights_sha256") or "?")[:12],
            "tune": r.spec.get("tune", "none"),
            "preprocessing": _preprocessing_label(r.data),
            # base2new top-1 (base classes) and miniature data must never average with the real protocol's numbers
            "method": method_label(r.spec) + ("" if r.spec.get("protocol", "fewshot") == "fewshot"
                                               else f" ({r.spec['protocol']})"),
            "dataset": r.spec["dataset"] + (" (miniature)" if r.data.get("miniature") else ""),
            "shots": int(r.spec["shots"]),
            "seed": int(r.spec["seed"]),
            "status": r.status,
            "top1": 100.0 * r.metrics["top1"] if r.ok and r.metrics.get("top1") is not None else None,
            "prompts": (r.prompts or {}).get("set"),
            "finished_at": r.provenance.get("finished_at", ""),
            "error": (r.error or {}).get("message"),
        })
    columns = [*CELL_KEYS, "seed", "status", "top1", "prompts", "finished_at", "error"]
    frame = pd.DataFrame(rows, columns=columns)
    if frame.empty:
        return frame
    frame = frame.sort_values("finished_at").drop_duplicates([*CELL_KEYS, "seed"], keep="last")
    # A failed record from a run that has no identity yet (no backbone loaded) still belongs to its table.
    return frame.sort_values([*CELL_KEYS, "seed"]).reset_index(drop=True)


def aggregate(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and population std (``np.std``, as CoOp's ``parse_test_res.py``) of top-1 over seeds.

    Returns one row per cell key with ``mean``, ``std``, ``n_seeds`` and ``seeds``; cells whose
    every seed failed have ``n_seeds = 0`` and no mean.
    """
    ok = frame[frame["status"] == "ok"]
    grouped = ok.groupby(CELL_KEYS, sort=True)["top1"]
    out = grouped.agg(mean="mean", std=lambda s: float(s.std(ddof=0)), n_seeds="count").reset_index()
    seeds = ok.groupby(CELL_KEYS)["seed"].apply(lambda s: sorted(s.tolist())).reset_index(name="seeds")
    return out.merge(seeds, on=CELL_KEYS, how="left")


def expected_seeds(frame: pd.DataFrame) -> dict[tuple, list[int]]:
    """Per table, the seeds any record of it used: the grid a complete table would have."""
    return {key: sorted(group["seed"].unique().tolist()) for key, group in frame.groupby(TABLE_KEYS)}


def holes(frame: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(missing, failed) cells as ``method/dataset/kK/sS`` strings, per table.

    A table's full grid is the product of the methods, datasets, shots and seeds that appear in
    it; a cell of that grid without an ok record is missing, or failed if its record failed.
    """
    missing, failed = [], []
    for _, group in frame.groupby(TABLE_KEYS):
        present = {tuple(r) for r in group[group["status"] == "ok"][["method", "dataset", "shots", "seed"]].values}
        failures = {tuple(r) for r in group[group["status"] != "ok"][["method", "dataset", "shots", "seed"]].values}
        for m in sorted(group["method"].unique()):
            for d in sorted(group["dataset"].unique()):
                for k in sorted(group["shots"].unique()):
                    for s in sorted(group["seed"].unique()):
                        cell = (m, d, k, s)
                        name = f"{m}/{d}/k{k}/s{s}"
                        if cell in failures:
                            failed.append(name)
                        elif cell not in present:
                            missing.append(name)
    return missing, failed
