"""RunResult: the versioned record of one cell, one JSON file each, written atomically.

Reports read these records and nothing else. Layout::

    <results>/<backbone slug>/<dataset>/<method>/k<shots:02d>-s<seed>-<run_id[:8]>.json

``run_id`` hashes everything that defines the cell before it runs (spec, method and dataset
versions, backbone identity, split protocol), so a changed method version or checkpoint
lands in a new file instead of being mistaken for a finished cell.

Schema v1 sections: ``spec`` (what was asked), ``backbone`` (id, weights sha256, precision),
``data`` (split file + its sha256, few-shot index sha256, split protocol, sizes,
preprocessing, augmentation), ``prompts`` (set name, templates, sha256), ``config`` (the
final method config), ``tuning`` (mode, trials, best params, val score), ``metrics``
(fractions in [0, 1]), ``diagnostics`` (method observables), ``timing_s``, ``memory``,
``provenance`` (versions, git, device, Slurm ids, UTC times), and ``error`` for failed cells.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from bench._io import atomic_write_json
from bench.errors import BenchError

SCHEMA_VERSION = 1
SPEC_KEYS = ("method", "dataset", "shots", "seed", "backbone")  # what places a record in a report


@dataclass(frozen=True)
class RunResult:
    schema_version: int
    run_id: str
    status: str  # "ok" | "failed"
    spec: dict
    backbone: dict
    data: dict
    config: dict
    tuning: dict
    metrics: dict
    timing_s: dict
    memory: dict
    provenance: dict
    prompts: dict | None = None
    diagnostics: dict = field(default_factory=dict)
    error: dict | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, record: dict, *, source: str = "record") -> RunResult:
        if not isinstance(record, dict):
            raise BenchError(f"a result record is a JSON object, not {type(record).__name__}", where=source,
                             fix="delete it and re-run the cell")
        version = record.get("schema_version")
        if version != SCHEMA_VERSION:
            raise BenchError(f"result schema version {version!r} is not supported (this bench reads {SCHEMA_VERSION})",
                             where=source, fix="re-run the cell with this version of bench, or use the bench that wrote it")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(record) - known)
        if unknown:
            raise BenchError(f"unknown result fields {unknown}", where=source, fix="this file was not written by bench v1")
        try:
            result = cls(**record)
        except TypeError as exc:
            raise BenchError(f"incomplete result record ({exc})", where=source, fix="delete it and re-run the cell") from exc
        result.check(source)
        return result

    def check(self, source: str) -> None:
        """The structure reports rely on: object sections, the spec's cell keys, an ok record's top-1."""
        def bad(what: str) -> BenchError:
            return BenchError(what, where=source, fix="delete it and re-run the cell (bench run rewrites it)")

        for name in ("spec", "backbone", "data", "config", "tuning", "metrics", "timing_s", "memory", "provenance",
                     "diagnostics"):
            if not isinstance(getattr(self, name), dict):
                raise bad(f"field {name!r} must be a JSON object")
        if self.status not in ("ok", "failed"):
            raise bad(f"field 'status' is {self.status!r}, expected 'ok' or 'failed'")
        missing = [k for k in SPEC_KEYS if k not in self.spec]
        if missing:
            raise bad(f"spec lacks {', '.join(missing)}")
        for key in SPEC_KEYS:
            kind = int if key in ("shots", "seed") else str
            if type(self.spec[key]) is not kind:
                raise bad(f"spec.{key} is {self.spec[key]!r}, not {'an integer' if kind is int else 'a string'}")
        wrong = sorted(k for k, v in self.metrics.items() if not (v is None or isinstance(v, dict) or (
            isinstance(v, (int, float)) and not isinstance(v, bool))))  # dicts: per shift set (transfer)
        if wrong:
            raise bad(f"metrics.{wrong[0]} is {self.metrics[wrong[0]]!r}, not a number")
        top1 = self.metrics.get("top1")
        if self.ok and not (isinstance(top1, (int, float)) and not isinstance(top1, bool) and 0 <= top1 <= 1):
            raise bad(f"an ok record needs metrics.top1 as a fraction in [0, 1], found {top1!r}")


def result_path(results_root: Path, backbone_slug: str, dataset: str, method: str, shots: int, seed: int,
                run_id: str) -> Path:
    return Path(results_root) / backbone_slug / dataset / method / f"k{shots:02d}-s{seed}-{run_id[:8]}.json"


def write_result(path: Path, result: RunResult) -> None:
    atomic_write_json(path, result.to_json())


def read_result(path: Path) -> RunResult:
    try:
        record = json.loads(Path(path).read_text())
    except ValueError as exc:
        raise BenchError(f"not valid JSON ({exc})", where=str(path), fix="delete it and re-run the cell") from exc
    except OSError as exc:  # a folder, a dangling link, no permission: one line naming it
        raise BenchError(f"cannot read this record ({exc.strerror or type(exc).__name__})", where=str(path),
                         fix="remove it, or make it a readable record file") from exc
    return RunResult.from_json(record, source=str(path))


def load_results(results_root: Path) -> list[RunResult]:
    """Every record under ``results_root`` (hidden temporary files are skipped)."""
    root = Path(results_root)
    if not root.is_dir():
        raise BenchError("results folder not found", where=str(root), fix="run `bench run` first or pass --results")
    return [read_result(p) for p in sorted(root.rglob("k*-s*-*.json")) if not p.name.startswith(".")]
