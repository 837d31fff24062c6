"""A run's session and plan: where things live, what each cell is, and whether it is done.

:class:`RunOptions` (folders, device, precision; nothing that defines a number), :class:`Session`
(registries, loaded backbones, dataset lists, the feature cache, shared by a process's cells),
:func:`plan_cells` (every cell validated and given its run id and record path before any work) and
:func:`is_done` (an ok record of exactly this cell exists).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench import tuning
from bench.backbone import Backbone, BackboneRef, load_backbone, resolve_device, resolve_precision
from bench.datasets import dataset_registry, read_dataset
from bench.datasets.spec import DatasetSpec, DatasetSplits
from bench.datasets.splits import (
    split_protocol,
)
from bench.errors import BenchError
from bench.features import ExtractOptions, FeatureCache
from bench.fileio import canonical_json, ensure_writable_dir, sha256_json
from bench.methods import method_registry
from bench.methods.base import FeatureSet
from bench.protocols import check_shift
from bench.registry import Registry, import_target
from bench.results import (
    read_result,
    result_path,
)
from bench.scoring import score
from bench.spec import RunSpec, apply_overrides

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    """Where things live and how cells run (everything that does not define a number)."""

    data_root: Path = Path("data")
    cache_root: Path = Path("cache")
    results_root: Path = Path("results")
    device: str = "auto"
    precision: str = "auto"
    extract: ExtractOptions = ExtractOptions()
    force: bool = False
    progress: bool = True
    eval_batch_size: int = 8192
    storage: str | None = None  # Optuna study storage (URL or journal:PATH); None: SQLite in results_root
    # few-shot sampling (bench.datasets.splits.SAMPLINGS): it defines the subsets, so it enters every
    # run id and record through the split protocol it names
    sampling: str = "dassl"
    # --batch-seeds: cells differing only in seed train in one call of their method's batched_fit
    # (bench.runner); the same numbers to float rounding, so not part of the run id; the record says so
    batch_seeds: bool = False
    # --trial-batch: a tuned cell asks for (and trains together) this many trials at once where its method
    # has fit_trials (bench.tuning.trial_batch_for); another search, so part of those cells' run ids
    trial_batch: int = 1


@dataclass(frozen=True)
class PlannedCell:
    """A validated cell: its spec, resolved method config, run id and record path."""

    spec: RunSpec
    config: Any
    run_id: str
    path: Path
    study: str | None = None  # the Optuna study name of a tuned cell


class Session:
    """Per-process state shared by cells: registries, loaded backbones, dataset lists, the feature cache."""

    def __init__(
        self, options: RunOptions, methods: Registry | None = None, datasets: Registry | None = None
    ):
        self.options = options
        self.methods = methods or method_registry()
        self.datasets = datasets or dataset_registry()
        self.cache = FeatureCache(options.cache_root)
        self.device = resolve_device(options.device)
        self.precision = resolve_precision(options.precision, self.device)
        self._backbones: dict[str, Backbone] = {}
        self._splits: dict[str, DatasetSplits] = {}
        self._identities: dict[str, str] = {}

    def method(self, name: str) -> Any:
        return self.methods.get(name)()

    def dataset_spec(self, name: str) -> DatasetSpec:
        return self.datasets.get(name)

    def splits(self, name: str) -> DatasetSplits:
        if name not in self._splits:
            spec = self.dataset_spec(name)
            folder = Path(self.options.data_root) / spec.folder
            if spec.generator and not (folder / spec.split_file).is_file():
                ensure_writable_dir(folder, purpose="data")
                import_target(spec.generator)(folder)
            self._splits[name] = read_dataset(spec, self.options.data_root)
        return self._splits[name]

    def score(self, classifier, data: FeatureSet) -> dict[str, float | None]:
        """:func:`bench.scoring.score` on this session's device."""
        return score(classifier, data, self.device, self.options.eval_batch_size)

    def backbone_identity(self, name: str) -> str:
        if name not in self._identities:
            self._identities[name] = BackboneRef.parse(name).identity()
        return self._identities[name]

    def backbone(self, name: str) -> Backbone:
        if name not in self._backbones:
            self._backbones.clear()  # one backbone in memory at a time; cells are ordered by backbone
            self._backbones[name] = load_backbone(BackboneRef.parse(name), self.device, self.precision)
        return self._backbones[name]


def plan_cells(specs: list[RunSpec], session: Session, *, dry_run: bool = False) -> list[PlannedCell]:
    """Validate every cell before any work: names, backbone, config overrides, datasets, results folder
    (writable, unless ``dry_run``: a dry run only reads)."""
    planned = []
    for spec in specs:
        method = session.method(spec.method)
        dataset = session.dataset_spec(spec.dataset)
        config = apply_overrides(
            method.default_config(spec.dataset, spec.shots), spec.overrides, method=spec.method
        )
        tuning.check_tuning(spec, method)
        searched = spec.tune != "none" and tuning.searchable(method)
        if spec.tune != "none" and not searched:
            spec = replace(spec, trials=0)  # nothing to search: one record serves every trial budget
        identity = {
            "method_version": method.version,
            "dataset_version": dataset.version,
            "backbone_identity": session.backbone_identity(spec.backbone),
            "precision": session.precision,
            "split_protocol": split_protocol(dataset, session.options.sampling),
            "data_sha256": _data_sha256(spec, session),
            "tuning_protocol": tuning.tuning_protocol(
                spec.tune, tuning.trial_batch_for(method, session.options.trial_batch, config)
            )
            if searched
            else None,
        }
        run_id = spec.run_id(**identity)
        path = result_path(
            session.options.results_root,
            BackboneRef.parse(spec.backbone).slug,
            spec.dataset,
            spec.method,
            spec.shots,
            spec.seed,
            run_id,
        )
        study = tuning.study_name(spec, identity) if searched else None
        planned.append(PlannedCell(spec, config, run_id, path, study))
    _warn_random_weights_on_real_data(specs, session)
    if dry_run:
        return planned
    ensure_writable_dir(Path(session.options.results_root), purpose="results")
    ensure_writable_dir(Path(session.options.cache_root), purpose="cache")
    if any(cell.study for cell in planned):  # a bad storage URL fails before any work
        tuning.open_storage(tuning.storage_url(session.options.storage, session.options.results_root))
    return planned


def _warn_random_weights_on_real_data(specs: list[RunSpec], session: Session) -> None:
    """A random-init backbone on a real dataset (the default backbone left in place) gives meaningless numbers."""
    pairs = {(s.backbone, s.dataset) for s in specs if BackboneRef.parse(s.backbone).weights == "random"}
    real = sorted(
        {
            (b, d)
            for b, d in pairs
            if not session.dataset_spec(d).generator and not session.splits(d).miniature
        }
    )
    for backbone, dataset in real:
        log.warning(
            "%s has random weights: its numbers on %s are meaningless; pass real weights, e.g. "
            "--backbone RN50/openai (see `bench weights`)",
            backbone,
            dataset,
        )


def _data_sha256(spec: RunSpec, session: Session) -> str:
    """Identity of the data a cell reads (its split file or listing, and its shift sets'), read once here."""
    check_shift(
        session.dataset_spec(spec.dataset),
        tuple(session.dataset_spec(t) for t in spec.shift),
        spec.protocol,
        spec.name,
    )
    return sha256_json({name: session.splits(name).source_sha256 for name in (spec.dataset, *spec.shift)})


def is_done(cell: PlannedCell) -> bool:
    """A cell is done when its record exists, says ok, and is this cell's: the run id inside the file
    and the spec (values and JSON types) match the cell, so a record copied to another cell's path
    or edited by hand does not count. Failed cells are retried."""
    if not cell.path.is_file():
        return False
    try:
        result = read_result(cell.path)
        expected = cell.spec.to_json()
        return (
            result.ok
            and result.run_id == cell.run_id
            and canonical_json({k: result.spec.to_json().get(k) for k in expected})
            == canonical_json(expected)
        )
    except (BenchError, ValueError):  # unreadable, or a NaN where the spec has numbers
        return False


def lock_path(cell: PlannedCell) -> Path:
    """The cell's lock file: hidden, beside its record (reports never read it)."""
    return cell.path.with_name(f".{cell.path.stem}.lock")
