"""The sweep manifest: what a submission sent where, written into the results folder.

``<results>/.sweeps/<sweep id>/manifest.json`` lists every cell of the grid (with the record
path it will write and the array task that runs it, or none if it was already done), the
feature and array job ids, and the submitit log folder. ``bench status`` reads it back with the
records to show a sweep's progress from any shell; the records stay the only source of numbers.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from bench.errors import BenchError
from bench.fileio import atomic_write_json, sha256_json

MANIFEST_SCHEMA = 1
SWEEPS_FOLDER = ".sweeps"


@dataclass(frozen=True)
class CellEntry:
    """One cell: its name, backbone, record path relative to the results folder, and the index
    of the task that runs it in :attr:`Manifest.tasks` (None: it had an ok record at submission)."""

    name: str
    backbone: str
    record: str
    task: int | None


@dataclass(frozen=True)
class FeatureEntry:
    """The feature job of one (backbone, dataset). ``job_id`` is empty until it is launched;
    ``outcome`` (ended | failed) and ``detail`` are how a local sweep's scheduler saw it end
    (Slurm sweeps ask ``sacct`` instead)."""

    backbone: str
    dataset: str
    job_id: str = ""
    outcome: str = ""
    detail: str = ""


@dataclass(frozen=True)
class TaskEntry:
    """One array task: its cells (indices into :attr:`Manifest.cells`), its feature job (index),
    and job id / outcome / detail as for :class:`FeatureEntry`."""

    cells: tuple[int, ...]
    feature: int
    job_id: str = ""
    outcome: str = ""
    detail: str = ""


@dataclass(frozen=True)
class Manifest:
    sweep_id: str
    created_at: str
    executor: str  # slurm | processes | debug
    force: bool
    results_root: str
    log_folder: str  # submitit folder, with %j
    resources: dict
    cells: tuple[CellEntry, ...]
    features: tuple[FeatureEntry, ...]
    tasks: tuple[TaskEntry, ...]
    schema: int = MANIFEST_SCHEMA
    config: dict | None = None  # the content of the --config file the run was given (not its path)

    @property
    def folder(self) -> Path:
        return sweep_folder(Path(self.results_root), self.sweep_id)

    def updated(self, features: dict[int, dict[str, str]], tasks: dict[int, dict[str, str]]) -> Manifest:
        """A copy with fields of feature jobs and tasks replaced, by index: ``{0: {"job_id": "12"}}``."""
        new_features = tuple(replace(f, **features.get(i, {})) for i, f in enumerate(self.features))
        new_tasks = tuple(replace(t, **tasks.get(i, {})) for i, t in enumerate(self.tasks))
        return replace(self, features=new_features, tasks=new_tasks)


def sweep_folder(results_root: Path, sweep_id: str) -> Path:
    return Path(results_root) / SWEEPS_FOLDER / sweep_id


def new_sweep_id(run_ids: list[str], now: datetime | None = None) -> str:
    """``<UTC time>-<hash of the cells' run ids>``: sorts by submission time."""
    now = now or datetime.now(timezone.utc)
    return f"{now:%Y%m%dT%H%M%SZ}-{sha256_json(run_ids)[:6]}"


def write_manifest(manifest: Manifest) -> Path:
    path = manifest.folder / "manifest.json"
    atomic_write_json(path, asdict(manifest))
    return path


def read_manifest(path: Path) -> Manifest:
    try:
        data = json.loads(Path(path).read_text())
        if data.get("schema") != MANIFEST_SCHEMA:
            raise ValueError(f"schema {data.get('schema')!r}, expected {MANIFEST_SCHEMA}")
        return Manifest(
            **{
                **data,
                "cells": tuple(CellEntry(**c) for c in data["cells"]),
                "features": tuple(FeatureEntry(**f) for f in data["features"]),
                "tasks": tuple(TaskEntry(**{**t, "cells": tuple(t["cells"])}) for t in data["tasks"]),
            }
        )
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise BenchError(
            f"unreadable sweep manifest ({exc})",
            where=str(path),
            fix="delete that sweep folder; the records it produced are kept",
        ) from exc


def find_manifest(results_root: Path, sweep_id: str | None = None) -> Manifest:
    """The manifest of ``sweep_id``, or of the latest sweep submitted into ``results_root``, confined to
    that folder (see :func:`confined`)."""
    root = Path(results_root) / SWEEPS_FOLDER
    if sweep_id:
        path = root / sweep_id / "manifest.json"
        if sweep_id not in list_sweeps(results_root):
            raise BenchError(
                f"no sweep {sweep_id!r}",
                where=str(root),
                fix=f"sweeps there: {', '.join(list_sweeps(results_root)) or 'none'}",
            )
        return confined(read_manifest(path), results_root, path)
    sweeps = list_sweeps(results_root)
    if not sweeps:
        raise BenchError(
            "no sweep was submitted into this results folder",
            where=str(results_root),
            fix="run `bench run --executor slurm ...` first, or pass the --results it used",
        )
    path = root / sweeps[-1] / "manifest.json"
    return confined(read_manifest(path), results_root, path)


def confined(manifest: Manifest, results_root: Path, path: Path) -> Manifest:
    """``manifest``, read from ``path`` in ``results_root``, with its folders taken from where it was found.

    The results folder and log folder it names are ignored (a moved or crafted manifest must not send
    ``bench status`` to read anything elsewhere), and every record path it lists must resolve inside
    the results folder.
    """
    root = Path(results_root).resolve()
    fix = "this manifest was not written by `bench run`: delete its sweep folder (records are kept)"
    if manifest.sweep_id != path.parent.name:
        raise BenchError(f"sweep id {manifest.sweep_id!r} is not its folder's name", where=str(path), fix=fix)
    for cell in manifest.cells:
        if not isinstance(cell.record, str) or not (root / cell.record).resolve().is_relative_to(root):
            raise BenchError(
                f"cell {cell.name!r} has its record outside the results folder ({cell.record!r})",
                where=str(path),
                fix=fix,
            )
    return replace(
        manifest,
        results_root=str(root),
        log_folder=str(sweep_folder(root, manifest.sweep_id) / "logs" / "%j"),
    )


def list_sweeps(results_root: Path) -> list[str]:
    root = Path(results_root) / SWEEPS_FOLDER
    return sorted(p.parent.name for p in root.glob("*/manifest.json")) if root.is_dir() else []
