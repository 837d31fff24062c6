"""One cell: read its features, tune and fit the method, score it, write its record.

This is the only module that loads a test split: a method gets :class:`FewShotData` (support set
+ few-shot val); test features are read after ``fit`` returns (or handed to the tuner in oracle
mode, labelled), once, to score the classifier through the cell's protocol (:mod:`bench.protocols`).
"""

from __future__ import annotations

import functools
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from bench import tuning
from bench.backbone import Backbone
from bench.datasets.spec import DatasetSpec, DatasetSplits
from bench.datasets.splits import (
    load_or_create_fewshot,
    split_protocol,
)
from bench.datasets.subsets import class_columns
from bench.errors import BenchError
from bench.features import ImageFeatureKey
from bench.images import CENTER, ViewSpec
from bench.methods.base import FeatureSet, FewShotData, FitContext, ImageSource
from bench.progress import Step
from bench.protocols import get_protocol
from bench.provenance import cluster_ids, environment, utc_now
from bench.records import backbone_record, data_record, jsonable, peak_memory, prompts_record, relative
from bench.results import (
    RunResult,
    write_result,
)
from bench.scoring import RestrictedClassifier
from bench.seeding import derive_seed
from bench.session import PlannedCell, Session, is_done
from bench.spec import RunSpec

log = logging.getLogger(__name__)


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
    _reset_peak_memory(session)
    try:
        result = _result(cell, session, _execute(cell, session, step), started, time.perf_counter() - t0)
        _write_record(cell.path, result)
        return result
    except BenchError:
        raise
    except tuning.FinalFitElsewhere:
        log.info("cell %s: another worker closed its study and writes its record", cell.spec.name)
        return None
    except Exception as exc:  # a bug, an OOM or a diverged fit in one cell must not stop the grid
        return _failed(cell, session, exc, started, time.perf_counter() - t0)


def run_cells_together(
    cells: list[PlannedCell],
    session: Session,
    fit_many: Callable,
    *,
    step: Step | None = None,
    on_done: Callable[[PlannedCell, RunResult], None] | None = None,
) -> list[RunResult]:
    """Run cells that differ only in seed (untuned, one config) with one ``fit_many`` call (the method's
    ``batched_fit``, ``bench run --batch-seeds``), then score and write each as :func:`run_cell` does.

    Each record says it was trained so (``diagnostics.batched_fit``: the seeds trained together, the
    shared fit's seconds); its ``timing_s.fit`` is its share of that fit, so the cells' totals add up to
    the wall time. If reading the features or the shared fit fails on anything but a user error, the
    cells run one at a time instead, each with its own outcome, as without the option. ``on_done`` hears of
    each cell as soon as its record is written (a Slurm task preempted mid-group must not redo those).
    """
    done = on_done or (lambda cell, result: None)
    started, t0 = utc_now(), time.perf_counter()
    _reset_peak_memory(session)
    try:
        works = [_prepare(cell, session, step) for cell in cells]
        classifiers = _fit_together(works, fit_many)
    except BenchError:
        raise
    except Exception:
        log.warning(
            "seeds %s trained together failed; running them one at a time", cells[0].spec.name, exc_info=True
        )
        results = []
        for cell in cells:
            results.append(run_cell(cell, session, step=step))
            done(cell, results[-1])
        return results
    shared = (time.perf_counter() - t0 - sum(w.seconds for w in works)) / len(cells)
    results = []
    for w, classifier in zip(works, classifiers, strict=True):
        results.append(_finish_together(w, session, classifier, started, shared))
        done(w.cell, results[-1])
    return results


def _fit_together(works: list[CellWork], fit_many: Callable) -> list[Any]:
    """The cells' classifiers from one ``fit_many`` call; each record gets its share of the fit time."""
    t = time.perf_counter()
    classifiers = fit_many([w.data for w in works], works[0].cell.config, [w.ctx for w in works])
    seconds = time.perf_counter() - t
    if len(classifiers) != len(works):
        raise RuntimeError(f"fit_many returned {len(classifiers)} classifiers for {len(works)} cells")
    seeds = [w.cell.spec.seed for w in works]
    for w in works:
        w.timing["fit"] = seconds / len(works)
        w.diagnostics["batched_fit"] = {"seeds": seeds, "fit_s": round(seconds, 4)}
    return classifiers


def _finish_together(
    work: CellWork, session: Session, classifier: Any, started: str, shared: float
) -> RunResult:
    """One cell of :func:`run_cells_together` after the shared fit: scored and written as :func:`run_cell`'s."""
    t0 = time.perf_counter()
    cell = work.cell
    try:
        config, tuning_record = _tuned(work, session)
        record = _finish(work, session, classifier, config, tuning_record)
        result = _result(cell, session, record, started, work.seconds + shared + time.perf_counter() - t0)
        _write_record(cell.path, result)
        return result
    except BenchError:
        raise
    except Exception as exc:
        return _failed(cell, session, exc, started, work.seconds + shared + time.perf_counter() - t0)


def _reset_peak_memory(session: Session) -> None:
    if session.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(session.device)


def _failed(cell: PlannedCell, session: Session, exc: Exception, started: str, seconds: float) -> RunResult:
    """The failed record of ``cell``, written unless it would replace an earlier ok record."""
    log.exception("cell %s failed", cell.spec.name)
    error = {
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback_tail": "".join(traceback.format_exc().splitlines(True)[-15:]),
    }
    keep = is_done(cell)
    if keep:
        error["message"] += f" (this redo failed; the earlier ok record is kept: {cell.path})"
        log.warning("cell %s: the redo failed; its earlier ok record is kept", cell.spec.name)
    result = _result(cell, session, _bare_record(cell, session), started, seconds, error)
    if not keep:
        write_result(cell.path, result)
    return result


def _result(
    cell: PlannedCell, session: Session, record: dict, started: str, seconds: float, error: dict | None = None
) -> RunResult:
    """The cell's record with its timing (``seconds`` in all), memory and provenance sections; failed when
    ``error`` is given."""
    record["timing_s"]["total"] = round(seconds, 4)
    record["memory"] = peak_memory(session.device)
    record["provenance"] = {
        **environment(session.device),
        **cluster_ids(),
        "started_at": started,
        "finished_at": utc_now(),
    }
    return RunResult.build(
        {"run_id": cell.run_id, "status": "failed" if error else "ok", "error": error, **record},
        source=str(cell.path),
    )


def _write_record(path: Path, result: RunResult) -> None:
    try:
        write_result(path, result)
    except ValueError as exc:  # json refuses NaN and infinities
        raise ValueError(
            f"the record cannot be written ({exc}): a NaN or infinite value in its config, "
            "backbone or diagnostics"
        ) from exc


def _bare_record(cell: PlannedCell, session: Session) -> dict:
    # what defines the cell is known before it fails: a failed record says which subsets it would have used
    data = {
        "split_protocol": split_protocol(session.dataset_spec(cell.spec.dataset), session.options.sampling),
        "protocol": cell.spec.protocol,
    }
    return {
        "spec": _spec_record(cell, session),
        "backbone": {"id": cell.spec.backbone},
        "data": data,
        "config": jsonable(asdict(cell.config)),
        "tuning": {"mode": cell.spec.tune},
        "metrics": {},
        "timing_s": {},
        "memory": {},
        "provenance": {},
        "prompts": None,
        "diagnostics": {},
    }


def _spec_record(cell: PlannedCell, session: Session) -> dict:
    method = session.method(cell.spec.method)
    return {
        **cell.spec.to_json(),
        "method_version": method.version,
        "dataset_version": session.dataset_spec(cell.spec.dataset).version,
    }


@dataclass
class CellWork:
    """A cell read up to its fit (:func:`_prepare`): its data and fit context, what scores it, and the
    seconds spent on it so far."""

    cell: PlannedCell
    method: Any
    data: FewShotData
    ctx: FitContext
    fewshot: Any  # the cell's few-shot index (bench.datasets.splits)
    train_view: ViewSpec
    load_test: Callable[[], FeatureSet]
    score_test: Callable[..., dict]
    timing: dict[str, float] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def _execute(cell: PlannedCell, session: Session, step: Step | None = None) -> dict:
    work = _prepare(cell, session, step)
    t = time.perf_counter()
    config, tuning_record = _tuned(work, session)
    if cell.spec.tune != "none":
        work.timing["tune"] = time.perf_counter() - t

    t = time.perf_counter()
    classifier = work.method.fit(work.data, config, work.ctx)
    work.timing["fit"] = time.perf_counter() - t
    return _finish(work, session, classifier, config, tuning_record)


def _prepare(cell: PlannedCell, session: Session, step: Step | None = None) -> CellWork:
    """The cell's support and val features, its fit context and its test scoring, before any fit."""
    t0 = time.perf_counter()
    spec, config = cell.spec, cell.config
    method = session.method(spec.method)
    dataset = session.dataset_spec(spec.dataset)
    splits = session.splits(spec.dataset)
    fewshot = load_or_create_fewshot(
        splits, dataset, spec.shots, spec.seed, session.options.cache_root, session.options.sampling
    )
    protocol = get_protocol(spec.protocol)
    classnames, train_idx, val_idx = protocol.classes(splits, fewshot)
    backbone = session.backbone(spec.backbone)

    t = time.perf_counter()
    needs = method.needs(config)
    train_view = support_view(needs.train_views, needs.augment_scale)
    data = FewShotData(
        dataset=spec.dataset,
        shots=spec.shots,
        classnames=classnames,
        prompts=dataset.prompts,
        train=read_features(session, backbone, dataset, splits, "train", train_idx, train_view),
        val=read_features(session, backbone, dataset, splits, "val", val_idx, CENTER),
        raw_classnames=(splits.raw_classnames or splits.classnames)[
            : len(classnames)
        ],  # base2new: the base classes
    )
    timing = {"features": time.perf_counter() - t}

    diagnostics: dict[str, Any] = {}
    ctx = FitContext(
        backbone=backbone,
        device=session.device,
        seed=derive_seed(spec.seed, spec.dataset, spec.shots, spec.method),
        text_features=lambda templates, classnames: session.cache.text_features(
            backbone, classnames, templates
        ),
        record=diagnostics.__setitem__,
        progress=session.options.progress,
        progress_step=step,
    )
    load_test = functools.partial(
        read_features, session, backbone, dataset, splits, "test", tuple(range(len(splits.test))), CENTER
    )

    def score_test(classifier, *, test: FeatureSet) -> dict[str, Any]:
        return protocol.score(
            classifier, test, splits, session.score, ctx=ctx, eval_batch_size=session.options.eval_batch_size
        )

    work = CellWork(cell, method, data, ctx, fewshot, train_view, load_test, score_test, timing, diagnostics)
    work.seconds = time.perf_counter() - t0
    return work


def _finish(work: CellWork, session: Session, classifier: Any, config: Any, tuning_record: dict) -> dict:
    """The cell's record (without totals, memory, provenance): ``classifier`` scored on test, val and shift sets."""
    spec, timing = work.cell.spec, work.timing
    splits, backbone = session.splits(spec.dataset), session.backbone(spec.backbone)
    t = time.perf_counter()
    test = work.load_test()
    timing["test_features"] = time.perf_counter() - t
    t = time.perf_counter()
    metrics = {
        **work.score_test(classifier, test=test),
        "val_top1": session.score(classifier, work.data.val)["top1"],
    }
    if spec.shift:  # the shift sets' features are extracted here too
        metrics["transfer"] = _score_shift(classifier, spec, splits, backbone, session)
    timing["eval"] = time.perf_counter() - t
    return {
        "spec": _spec_record(work.cell, session),
        "backbone": backbone_record(backbone, session.backbone_identity(spec.backbone)),
        "data": {
            **data_record(
                splits, work.fewshot, work.data, backbone, work.train_view, session.options.data_root
            ),
            **_protocol_record(spec, splits, session),
        },
        "prompts": prompts_record(config, session.dataset_spec(spec.dataset)),
        "config": jsonable(asdict(config)),
        "tuning": jsonable(tuning_record),
        "metrics": metrics,
        "diagnostics": jsonable(work.diagnostics),
        "timing_s": {k: round(v, 4) for k, v in timing.items()},
        "memory": {},
        "provenance": {},
    }


def _score_shift(
    classifier, spec: RunSpec, splits: DatasetSplits, backbone: Backbone, session: Session
) -> dict[str, dict]:
    """Top-1 of the classifier on each shift set, its logits restricted to the set's classes (-A/-R: 200)."""
    out = {}
    for target in spec.shift:
        target_splits = session.splits(target)
        columns = torch.tensor(
            class_columns(splits.class_ids, target_splits.class_ids, target), device=session.device
        )
        test = read_features(
            session,
            backbone,
            session.dataset_spec(target),
            target_splits,
            "test",
            tuple(range(len(target_splits.test))),
            CENTER,
        )
        restricted = session.score(RestrictedClassifier(classifier, columns), test)
        out[target] = {"top1": restricted["top1"], "n_test": len(target_splits.test)}
    return out


def _tuned(work: CellWork, session: Session) -> tuple[Any, dict]:
    """The config to fit and the tuning record: the cell's config untuned, else its study's best.

    ``val`` scores trials on the few-shot val split. ``oracle`` is the one place where test
    features reach model selection: loaded here, handed to the objective, labelled ``scored_on: test``;
    a trial is scored by the same ``score_test`` as the final record (base2new: its base-class top-1).
    """
    cell, data, load_test, score_test = work.cell, work.data, work.load_test, work.score_test
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
    ref = tuning.study_ref(
        spec,
        cell.study,
        tuning.storage_url(session.options.storage, session.options.results_root),
        tuning.trial_batch_for(work.method, session.options.trial_batch, cell.config),
    )
    return tuning.tune(work.method, data, cell.config, work.ctx, ref, objective)


def support_view(train_views: int, scale: tuple[float, float] = (0.08, 1.0)) -> ViewSpec:
    return replace(ViewSpec.augment(train_views), scale=tuple(scale)) if train_views > 0 else CENTER


def read_features(
    session: Session,
    backbone: Backbone,
    dataset: DatasetSpec,
    splits: DatasetSplits,
    split: str,
    indices: tuple[int, ...],
    view: ViewSpec,
) -> FeatureSet:
    images = splits.split(split).subset(indices)
    key = feature_key(backbone, dataset, splits, split, view)
    options = session.options.extract
    features = session.cache.image_features(key, backbone, splits.image_root, images.paths, options)
    source = ImageSource(
        Path(splits.image_root), tuple(images.paths), backbone.preprocessing
    )  # issue 19: adapted encoders
    return FeatureSet(features, torch.tensor(images.labels, dtype=torch.int64), source)


def feature_key(
    backbone: Backbone, dataset: DatasetSpec, splits: DatasetSplits, split: str, view: ViewSpec
) -> ImageFeatureKey:
    return ImageFeatureKey.of(
        backbone,
        dataset=dataset.name,
        dataset_version=dataset.version,
        split_sha256=splits.source_sha256,
        split=split,
        view=view,
    )


def _protocol_record(spec: RunSpec, splits: DatasetSplits, session: Session) -> dict:
    """The protocol's part of the data section, and the data of each shift set."""
    out: dict[str, Any] = get_protocol(spec.protocol).record(splits)
    if spec.shift:
        out["transfer"] = {
            t: {
                "source": relative(session.splits(t).source, session.options.data_root),
                "source_sha256": session.splits(t).source_sha256,
                "miniature": session.splits(t).miniature,
                "n_classes": len(session.splits(t).classnames),
            }
            for t in spec.shift
        }
    return out
