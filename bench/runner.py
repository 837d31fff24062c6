"""The runner: plans cells, skips finished ones, runs the rest and writes one record per cell.

This is the only module that loads a test split. A method gets :class:`FewShotData`
(support set + few-shot val); test features are read after ``fit`` returns, once, to
score the classifier.
"""

from __future__ import annotations

import functools
import logging
import time
import traceback
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from bench import tuning
from bench._locks import try_lock
from bench.backbone import Backbone, BackboneRef, load_backbone, resolve_device, resolve_precision
from bench.datasets import dataset_registry, read_dataset
from bench.datasets.spec import DatasetSpec, DatasetSplits
from bench.datasets.splits import (
    load_or_create_fewshot,
    split_protocol,
)
from bench.datasets.subsets import class_columns
from bench.errors import BenchError
from bench.features import ExtractOptions, FeatureCache, ImageFeatureKey
from bench.fileio import canonical_json, ensure_writable_dir, sha256_json
from bench.images import CENTER, ViewSpec
from bench.methods import method_registry
from bench.methods.base import FeatureSet, FewShotData, FitContext, ImageSource
from bench.progress import GridProgress, Step
from bench.protocols import check_shift, get_protocol
from bench.provenance import cluster_ids, environment, utc_now
from bench.records import backbone_record, data_record, jsonable, peak_memory, prompts_record, relative
from bench.registry import Registry, import_target
from bench.results import (
    ExtractionPass,
    RunResult,
    append_extraction_pass,
    read_result,
    result_path,
    write_result,
)
from bench.scoring import RestrictedClassifier, score
from bench.seeding import derive_seed
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


@dataclass(frozen=True)
class PlannedCell:
    """A validated cell: its spec, resolved method config, run id and record path."""

    spec: RunSpec
    config: Any
    run_id: str
    path: Path
    study: str | None = None  # the Optuna study name of a tuned cell


@dataclass
class RunSummary:
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (cell, error)
    deferred: list[str] = field(default_factory=list)  # tuned cells another worker finishes
    busy: list[str] = field(default_factory=list)  # cells another live runner holds the lock of


class Session:
    """Per-process state shared by cells: registries, loaded backbones, dataset lists, the feature cache."""

    def __init__(self, options: RunOptions, methods: Registry | None = None, datasets: Registry | None = None):
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
        config = apply_overrides(method.default_config(spec.dataset, spec.shots), spec.overrides, method=spec.method)
        tuning.check_tuning(spec, method)
        searched = spec.tune != "none" and tuning.searchable(method)
        if spec.tune != "none" and not searched:
            spec = replace(spec, trials=0)  # nothing to search: one record serves every trial budget
        identity = {"method_version": method.version, "dataset_version": dataset.version,
                    "backbone_identity": session.backbone_identity(spec.backbone), "precision": session.precision,
                    "split_protocol": split_protocol(dataset, session.options.sampling), "data_sha256": _data_sha256(spec, session),
                    "tuning_protocol": tuning.tuning_protocol(spec.tune) if searched else None}
        run_id = spec.run_id(**identity)
        path = result_path(session.options.results_root, BackboneRef.parse(spec.backbone).slug, spec.dataset,
                           spec.method, spec.shots, spec.seed, run_id)
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
    real = sorted({(b, d) for b, d in pairs if not session.dataset_spec(d).generator and not session.splits(d).miniature})
    for backbone, dataset in real:
        log.warning("%s has random weights: its numbers on %s are meaningless; pass real weights, e.g. "
                    "--backbone RN50/openai (see `bench weights`)", backbone, dataset)


def _data_sha256(spec: RunSpec, session: Session) -> str:
    """Identity of the data a cell reads (its split file or listing, and its shift sets'), read once here."""
    check_shift(session.dataset_spec(spec.dataset), tuple(session.dataset_spec(t) for t in spec.shift), spec.protocol,
                spec.name)
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
        return (result.ok and result.run_id == cell.run_id
                and canonical_json({k: result.spec.to_json().get(k) for k in expected}) == canonical_json(expected))
    except (BenchError, ValueError):  # unreadable, or a NaN where the spec has numbers
        return False


def lock_path(cell: PlannedCell) -> Path:
    """The cell's lock file: hidden, beside its record (reports never read it)."""
    return cell.path.with_name(f".{cell.path.stem}.lock")


def run_cells(specs: list[RunSpec], options: RunOptions, session: Session | None = None) -> RunSummary:
    """Plan ``specs`` and run every cell that has no ok record (all of them with ``options.force``)."""
    session = session or Session(options)
    return run_planned(plan_cells(specs, session), session, options)


def run_planned(cells: list[PlannedCell], session: Session, options: RunOptions | None = None, *,
                done_before: Collection[str] = (), prepare: bool = True,
                on_ran: Callable[[PlannedCell], None] | None = None) -> RunSummary:
    """The cell loop of every runner: ``bench run`` in-process and each Slurm array task.

    Finished cells are skipped; features are extracted right before a backbone's first cell
    (``prepare``; a Slurm task's feature job did it already). A cell runs under its lock file
    (:mod:`bench._locks`), so runners started together on one results folder run each cell once: a
    cell another live runner holds is left to it (``busy``), and a cell finished while this runner
    waited for it is skipped. Tuned cells take no lock: their workers fill one study together by
    design (:mod:`bench.tuning`).

    Args:
        options: ``force`` and ``progress`` for this run (default: the session's).
        done_before: run ids an earlier attempt of this task finished (a requeued Slurm task): skipped
            even with ``--force``.
        on_ran: told of every cell this loop ran (whatever its outcome).
    """
    options = options or session.options

    def finished(cell: PlannedCell) -> bool:
        return cell.run_id in done_before or (not options.force and is_done(cell))

    pending = [c for c in cells if not finished(c)]
    prepared: set[str] = set()
    summary = RunSummary()
    progress = GridProgress(len(cells), len(pending), bars=options.progress)  # bars, ETA, or a line per cell
    for cell in cells:
        if finished(cell):
            summary.skipped.append(cell.spec.name)
            progress.skip()
            continue
        if prepare and cell.spec.backbone not in prepared:  # right before its cells: one backbone in memory
            prepared.add(cell.spec.backbone)
            _prepare_or_defer([c for c in pending if c.spec.backbone == cell.spec.backbone], session)
        lock = None if cell.study else try_lock(lock_path(cell))
        if lock is None and not cell.study:
            summary.busy.append(cell.spec.name)
            progress.skip()
            continue
        try:
            if not options.force and is_done(cell):  # another runner finished it before we got the lock
                summary.skipped.append(cell.spec.name)
                progress.skip()
                continue
            t0 = time.perf_counter()
            result = run_cell(cell, session, step=progress.start(cell.spec.name))
            progress.finish(cell.spec.name, result, time.perf_counter() - t0)
        finally:
            if lock is not None:
                lock.release()
        if on_ran is not None:
            on_ran(cell)
        if result is None:
            summary.deferred.append(cell.spec.name)
            continue
        (summary.ran if result.ok else summary.failed).append(
            cell.spec.name if result.ok else (cell.spec.name, result.error.message))
    progress.close()
    return summary


def prepare_features(cells: list[PlannedCell], session: Session) -> int:
    """Encode every image ``cells`` will read, in one pass per (backbone, dataset, split, view).

    That is the union over cells of the support views each method asks for, the few-shot val
    images, and the whole test split. Cells then only read the cache. The same cells always
    encode the same images in the same batches, so a grid gives bit-identical numbers whether it
    runs in-process or as cluster jobs (batch composition moves fp32 features in the last bits).
    Features are only stored here, never returned: a cell still reads its test features after
    ``fit``, as before.

    Returns:
        the number of images pushed through the image encoder (0 when everything was cached).
    """
    before = session.cache.images_encoded
    groups: dict[tuple[str, str], list[PlannedCell]] = {}
    for cell in cells:
        groups.setdefault((cell.spec.backbone, cell.spec.dataset), []).append(cell)
    for (backbone_name, dataset_name), group in groups.items():
        t0, encoded = time.perf_counter(), session.cache.images_encoded
        dataset, splits = session.dataset_spec(dataset_name), session.splits(dataset_name)
        wanted: dict[tuple[str, ViewSpec], set[int]] = {}
        for cell in group:
            fewshot = load_or_create_fewshot(splits, dataset, cell.spec.shots, cell.spec.seed, session.options.cache_root,
                                             session.options.sampling)
            needs = session.method(cell.spec.method).needs(cell.config)
            view = _train_view(needs.train_views, needs.augment_scale)
            wanted.setdefault(("train", view), set()).update(fewshot.train)
            wanted.setdefault(("val", CENTER), set()).update(fewshot.val)
        wanted[("test", CENTER)] = set(range(len(splits.test)))
        backbone = session.backbone(backbone_name)
        for (split, view), indices in wanted.items():
            images = splits.split(split).subset(tuple(sorted(indices)))
            session.cache.ensure_image_features(_feature_key(backbone, dataset, splits, split, view), backbone,
                                                splits.image_root, images.paths, session.options.extract)
        _record_extraction(group, session, time.perf_counter() - t0, session.cache.images_encoded - encoded)
    return session.cache.images_encoded - before


def _record_extraction(group: list[PlannedCell], session: Session, seconds: float, encoded: int) -> None:
    """Issue 23: the pre-pass time of one backbone x dataset, which no cell's ``timing_s`` holds, appended to
    ``<results>/<backbone slug>/<dataset>/extraction.json`` (:class:`bench.results.ExtractionPass`)."""
    if encoded == 0:  # everything was cached: nothing this grid paid for
        return
    spec = group[0].spec
    entry = ExtractionPass(backbone=spec.backbone, dataset=spec.dataset, seconds=round(seconds, 4),
                           images_encoded=encoded, images_per_s=round(encoded / max(seconds, 1e-9), 2),
                           finished_at=utc_now(), run_ids=sorted({cell.run_id for cell in group}))
    append_extraction_pass(session.options.results_root, BackboneRef.parse(spec.backbone).slug, entry)


def _prepare_or_defer(cells: list[PlannedCell], session: Session) -> None:
    """:func:`prepare_features`; if it breaks on something other than user input, each cell
    extracts its own features and records its own failure, as without the pre-pass."""
    try:
        prepare_features(cells, session)
    except BenchError:
        raise
    except Exception:  # an OOM here must not stop the grid: the cells report it one by one
        log.warning("feature pre-pass failed; cells extract their own features", exc_info=True)


def run_cell(cell: PlannedCell, session: Session, *, step: Step | None = None) -> RunResult | None:
    """Run one cell and write its record. User errors (:class:`BenchError`) propagate; other
    exceptions become a ``failed`` record so the rest of the grid goes on. ``None``: a tuned cell
    whose study another worker finished; that worker does the final fit and writes the record.

    Writing the ok record is part of the cell: a value JSON cannot hold (a NaN logit scale, an
    infinite diagnostic) makes it a failed record too. A failed redo (``--force``) never replaces an
    ok record: the failure is returned and reported, and the earlier record stays. ``step`` receives
    the cell's epochs and tuning trials (:class:`bench.progress.GridProgress`).
    """
    started, t0 = utc_now(), time.perf_counter()
    if session.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(session.device)
    try:
        result = _result(cell, session, _execute(cell, session, step), started, t0)
        _write_record(cell.path, result)
        return result
    except BenchError:
        raise
    except tuning.FinalFitElsewhere:
        log.info("cell %s: another worker closed its study and writes its record", cell.spec.name)
        return None
    except Exception as exc:  # a bug, an OOM or a diverged fit in one cell must not stop the grid
        log.exception("cell %s failed", cell.spec.name)
        error = {"type": type(exc).__name__, "message": str(exc),
                 "traceback_tail": "".join(traceback.format_exc().splitlines(True)[-15:])}
    keep = is_done(cell)
    if keep:
        error["message"] += f" (this redo failed; the earlier ok record is kept: {cell.path})"
        log.warning("cell %s: the redo failed; its earlier ok record is kept", cell.spec.name)
    result = _result(cell, session, _bare_record(cell, session), started, t0, error)
    if not keep:
        write_result(cell.path, result)
    return result


def _result(cell: PlannedCell, session: Session, record: dict, started: str, t0: float,
            error: dict | None = None) -> RunResult:
    """The cell's record with its timing, memory and provenance sections; failed when ``error`` is given."""
    record["timing_s"]["total"] = round(time.perf_counter() - t0, 4)
    record["memory"] = peak_memory(session.device)
    record["provenance"] = {**environment(session.device), **cluster_ids(), "started_at": started,
                            "finished_at": utc_now()}
    return RunResult.build({"run_id": cell.run_id, "status": "failed" if error else "ok", "error": error, **record},
                           source=str(cell.path))


def _write_record(path: Path, result: RunResult) -> None:
    try:
        write_result(path, result)
    except ValueError as exc:  # json refuses NaN and infinities
        raise ValueError(f"the record cannot be written ({exc}): a NaN or infinite value in its config, "
                         "backbone or diagnostics") from exc


def _bare_record(cell: PlannedCell, session: Session) -> dict:
    # what defines the cell is known before it fails: a failed record says which subsets it would have used
    data = {"split_protocol": split_protocol(session.dataset_spec(cell.spec.dataset), session.options.sampling),
            "protocol": cell.spec.protocol}
    return {"spec": _spec_record(cell, session), "backbone": {"id": cell.spec.backbone}, "data": data,
            "config": jsonable(asdict(cell.config)), "tuning": {"mode": cell.spec.tune}, "metrics": {}, "timing_s": {},
            "memory": {}, "provenance": {}, "prompts": None, "diagnostics": {}}


def _spec_record(cell: PlannedCell, session: Session) -> dict:
    method = session.method(cell.spec.method)
    return {**cell.spec.to_json(), "method_version": method.version,
            "dataset_version": session.dataset_spec(cell.spec.dataset).version}


def _execute(cell: PlannedCell, session: Session, step: Step | None = None) -> dict:
    spec, config = cell.spec, cell.config
    method = session.method(spec.method)
    dataset = session.dataset_spec(spec.dataset)
    splits = session.splits(spec.dataset)
    fewshot = load_or_create_fewshot(splits, dataset, spec.shots, spec.seed, session.options.cache_root,
                                     session.options.sampling)
    protocol = get_protocol(spec.protocol)
    classnames, train_idx, val_idx = protocol.classes(splits, fewshot)
    backbone = session.backbone(spec.backbone)
    timing: dict[str, float] = {}

    t = time.perf_counter()
    needs = method.needs(config)
    train_view = _train_view(needs.train_views, needs.augment_scale)
    data = FewShotData(
        dataset=spec.dataset, shots=spec.shots, classnames=classnames, prompts=dataset.prompts,
        train=_features(session, backbone, dataset, splits, "train", train_idx, train_view),
        val=_features(session, backbone, dataset, splits, "val", val_idx, CENTER),
        raw_classnames=(splits.raw_classnames or splits.classnames)[:len(classnames)],  # base2new: the base classes
    )
    timing["features"] = time.perf_counter() - t

    diagnostics: dict[str, Any] = {}
    ctx = FitContext(
        backbone=backbone, device=session.device, seed=derive_seed(spec.seed, spec.dataset, spec.shots, spec.method),
        text_features=lambda templates, classnames: session.cache.text_features(backbone, classnames, templates),
        record=diagnostics.__setitem__, progress=session.options.progress, progress_step=step,
    )
    load_test = functools.partial(_features, session, backbone, dataset, splits, "test",
                                  tuple(range(len(splits.test))), CENTER)

    def score_test(classifier, *, test: FeatureSet) -> dict[str, Any]:
        return protocol.score(classifier, test, splits, session.score, ctx=ctx,
                              eval_batch_size=session.options.eval_batch_size)

    t = time.perf_counter()
    config, tuning_record = _tuned(cell, session, method, data, ctx, load_test, score_test)
    if spec.tune != "none":
        timing["tune"] = time.perf_counter() - t

    t = time.perf_counter()
    classifier = method.fit(data, config, ctx)
    timing["fit"] = time.perf_counter() - t

    t = time.perf_counter()
    test = load_test()
    timing["test_features"] = time.perf_counter() - t
    t = time.perf_counter()
    metrics = {**score_test(classifier, test=test), "val_top1": session.score(classifier, data.val)["top1"]}
    if spec.shift:  # the shift sets' features are extracted here too
        metrics["transfer"] = _score_shift(classifier, spec, splits, backbone, session)
    timing["eval"] = time.perf_counter() - t
    return {
        "spec": _spec_record(cell, session),
        "backbone": backbone_record(backbone, session.backbone_identity(spec.backbone)),
        "data": {**data_record(splits, fewshot, data, backbone, train_view, session.options.data_root),
                 **_protocol_record(spec, splits, session)},
        "prompts": prompts_record(config, dataset),
        "config": jsonable(asdict(config)),
        "tuning": jsonable(tuning_record),
        "metrics": metrics,
        "diagnostics": jsonable(diagnostics),
        "timing_s": {k: round(v, 4) for k, v in timing.items()},
        "memory": {},
        "provenance": {},
    }


def _score_shift(classifier, spec: RunSpec, splits: DatasetSplits, backbone: Backbone,
                 session: Session) -> dict[str, dict]:
    """Top-1 of the classifier on each shift set, its logits restricted to the set's classes (-A/-R: 200)."""
    out = {}
    for target in spec.shift:
        target_splits = session.splits(target)
        columns = torch.tensor(class_columns(splits.class_ids, target_splits.class_ids, target), device=session.device)
        test = _features(session, backbone, session.dataset_spec(target), target_splits, "test",
                         tuple(range(len(target_splits.test))), CENTER)
        restricted = session.score(RestrictedClassifier(classifier, columns), test)
        out[target] = {"top1": restricted["top1"], "n_test": len(target_splits.test)}
    return out


def _tuned(cell: PlannedCell, session: Session, method: Any, data: FewShotData, ctx: FitContext,
           load_test: Callable[[], FeatureSet], score_test: Callable[..., dict]) -> tuple[Any, dict]:
    """The config to fit and the tuning record: the cell's config untuned, else its study's best.

    ``val`` scores trials on the few-shot val split. ``oracle`` is the one place where test
    features reach model selection: loaded here, handed to the objective, labelled ``scored_on: test``;
    a trial is scored by the same ``score_test`` as the final record (base2new: its base-class top-1).
    """
    spec = cell.spec
    if spec.tune == "none":
        return cell.config, {"mode": "none"}
    if cell.study is None:
        return cell.config, tuning.untuned_record(spec.tune, spec.method)
    if spec.tune == "oracle":
        test = load_test()
        objective = tuning.Objective("test", lambda classifier: score_test(classifier, test=test)["top1"])
    else:
        objective = tuning.Objective("val", lambda classifier: session.score(classifier, data.val)["top1"])
    ref = tuning.study_ref(spec, cell.study, tuning.storage_url(session.options.storage, session.options.results_root))
    return tuning.tune(method, data, cell.config, ctx, ref, objective)


def _train_view(train_views: int, scale: tuple[float, float] = (0.08, 1.0)) -> ViewSpec:
    return replace(ViewSpec.augment(train_views), scale=tuple(scale)) if train_views > 0 else CENTER


def _features(session: Session, backbone: Backbone, dataset: DatasetSpec, splits: DatasetSplits, split: str,
              indices: tuple[int, ...], view: ViewSpec) -> FeatureSet:
    images = splits.split(split).subset(indices)
    key = _feature_key(backbone, dataset, splits, split, view)
    options = session.options.extract
    features = session.cache.image_features(key, backbone, splits.image_root, images.paths, options)
    source = ImageSource(Path(splits.image_root), tuple(images.paths), backbone.preprocessing)  # issue 19: adapted encoders
    return FeatureSet(features, torch.tensor(images.labels, dtype=torch.int64), source)


def _feature_key(backbone: Backbone, dataset: DatasetSpec, splits: DatasetSplits, split: str,
                 view: ViewSpec) -> ImageFeatureKey:
    return ImageFeatureKey.of(backbone, dataset=dataset.name, dataset_version=dataset.version,
                              split_sha256=splits.source_sha256, split=split, view=view)


def _protocol_record(spec: RunSpec, splits: DatasetSplits, session: Session) -> dict:
    """The protocol's part of the data section, and the data of each shift set."""
    out: dict[str, Any] = get_protocol(spec.protocol).record(splits)
    if spec.shift:
        out["transfer"] = {t: {"source": relative(session.splits(t).source, session.options.data_root),
                               "source_sha256": session.splits(t).source_sha256,
                               "miniature": session.splits(t).miniature, "n_classes": len(session.splits(t).classnames)}
                           for t in spec.shift}
    return out
