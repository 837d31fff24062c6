"""The runner: runs planned cells, skipping finished ones, one record per cell.

:func:`run_cells` plans and runs a grid in-process; :func:`run_planned` is the cell loop shared with
the Slurm array task (:mod:`bench.slurm.jobs`); :func:`prepare_features` is the extraction pre-pass
(also the Slurm feature job). One cell is :func:`bench.cell.run_cell`; the plan and the session are
:mod:`bench.session`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from bench._locks import try_lock
from bench.backbone import BackboneRef
from bench.cell import feature_key, run_cell, support_view
from bench.datasets.splits import (
    load_or_create_fewshot,
)
from bench.errors import BenchError
from bench.images import CENTER, ViewSpec
from bench.progress import GridProgress
from bench.provenance import utc_now
from bench.results import (
    ExtractionPass,
    append_extraction_pass,
)
from bench.session import PlannedCell, RunOptions, Session, is_done, lock_path, plan_cells
from bench.spec import RunSpec

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (cell, error)
    deferred: list[str] = field(default_factory=list)  # tuned cells another worker finishes
    busy: list[str] = field(default_factory=list)  # cells another live runner holds the lock of


def run_cells(specs: list[RunSpec], options: RunOptions, session: Session | None = None) -> RunSummary:
    """Plan ``specs`` and run every cell that has no ok record (all of them with ``options.force``)."""
    session = session or Session(options)
    return run_planned(plan_cells(specs, session), session, options)


def run_planned(
    cells: list[PlannedCell],
    session: Session,
    options: RunOptions | None = None,
    *,
    done_before: Collection[str] = (),
    prepare: bool = True,
    on_ran: Callable[[PlannedCell], None] | None = None,
) -> RunSummary:
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
            cell.spec.name if result.ok else (cell.spec.name, result.error.message)
        )
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
            fewshot = load_or_create_fewshot(
                splits,
                dataset,
                cell.spec.shots,
                cell.spec.seed,
                session.options.cache_root,
                session.options.sampling,
            )
            needs = session.method(cell.spec.method).needs(cell.config)
            view = support_view(needs.train_views, needs.augment_scale)
            wanted.setdefault(("train", view), set()).update(fewshot.train)
            wanted.setdefault(("val", CENTER), set()).update(fewshot.val)
        wanted[("test", CENTER)] = set(range(len(splits.test)))
        backbone = session.backbone(backbone_name)
        for (split, view), indices in wanted.items():
            images = splits.split(split).subset(tuple(sorted(indices)))
            session.cache.ensure_image_features(
                feature_key(backbone, dataset, splits, split, view),
                backbone,
                splits.image_root,
                images.paths,
                session.options.extract,
            )
        _record_extraction(group, session, time.perf_counter() - t0, session.cache.images_encoded - encoded)
    return session.cache.images_encoded - before


def _record_extraction(group: list[PlannedCell], session: Session, seconds: float, encoded: int) -> None:
    """Issue 23: the pre-pass time of one backbone x dataset, which no cell's ``timing_s`` holds, appended to
    ``<results>/<backbone slug>/<dataset>/extraction.json`` (:class:`bench.results.ExtractionPass`)."""
    if encoded == 0:  # everything was cached: nothing this grid paid for
        return
    spec = group[0].spec
    entry = ExtractionPass(
        backbone=spec.backbone,
        dataset=spec.dataset,
        seconds=round(seconds, 4),
        images_encoded=encoded,
        images_per_s=round(encoded / max(seconds, 1e-9), 2),
        finished_at=utc_now(),
        run_ids=sorted({cell.run_id for cell in group}),
    )
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
