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
from typing import Any

from bench._locks import try_lock
from bench.backbone import BackboneRef
from bench.cell import feature_key, run_cell, run_cells_together, support_view
from bench.datasets.splits import (
    load_or_create_fewshot,
)
from bench.errors import BenchError
from bench.fileio import canonical_json
from bench.images import CENTER, ViewSpec
from bench.progress import GridProgress
from bench.provenance import utc_now
from bench.results import (
    ExtractionPass,
    RunResult,
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
    design (:mod:`bench.tuning`). With ``options.batch_seeds`` the unfinished cells of a
    :func:`seed_groups` group train in one call when the loop reaches the first of them.

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
    groups = seed_groups(pending, session) if options.batch_seeds else {}
    if options.batch_seeds and len(pending) > 1 and not groups:
        log.warning(
            "--batch-seeds: no cells here can train together (it needs several seeds of one untuned cell "
            "of a method with batched_fit, e.g. coop or clip_adapter on cached views); running them one at a time"
        )
    prepared: set[str] = set()
    handled: set[str] = set()  # run ids of the seed groups already run
    loop = _CellLoop(
        session, options, RunSummary(), GridProgress(len(cells), len(pending), bars=options.progress), on_ran
    )
    for cell in cells:
        if cell.run_id in handled:
            continue
        if finished(cell):
            loop.summary.skipped.append(cell.spec.name)
            loop.progress.skip()
            continue
        if prepare and cell.spec.backbone not in prepared:  # right before its cells: one backbone in memory
            prepared.add(cell.spec.backbone)
            _prepare_or_defer([c for c in pending if c.spec.backbone == cell.spec.backbone], session)
        group = groups.get(cell.run_id)
        if group is None:
            loop.one(cell)
            continue
        handled.update(c.run_id for c in group.cells)
        loop.group(group)
    loop.progress.close()
    return loop.summary


@dataclass(frozen=True)
class SeedGroup:
    """Cells that differ only in seed, and the method's function that trains them in one call."""

    fit_many: Callable
    cells: list[PlannedCell]


def seed_groups(cells: list[PlannedCell], session: Session) -> dict[str, SeedGroup]:
    """``--batch-seeds``: the cells of ``cells`` that differ only in seed (one method config, dataset, shots,
    backbone, protocol; untuned or with a fixed config), by run id, where their method's ``batched_fit``
    trains that config's cells together (:mod:`bench.methods.base`). Other cells are absent: they run one
    at a time."""
    members: dict[str, list[PlannedCell]] = {}
    for cell in cells:
        key = seedless_key(cell)
        if key is not None and all(c.run_id != cell.run_id for c in members.get(key, ())):
            members.setdefault(key, []).append(cell)
    groups: dict[str, SeedGroup] = {}
    for group_cells in members.values():
        first = group_cells[0]
        fit_many = batched_fit(first, session.method(first.spec.method)) if len(group_cells) > 1 else None
        if fit_many is not None:
            groups.update({c.run_id: SeedGroup(fit_many, group_cells) for c in group_cells})
    return groups


def seedless_key(cell: PlannedCell) -> str | None:
    """What a cell's seed group shares: everything but the seed; None for a tuned cell (its config is its
    study's best, its own). Also how a Slurm sweep keeps a seed group in one array task (``--batch-seeds``)."""
    if cell.study is not None:
        return None
    return canonical_json({**cell.spec.to_json(), "seed": None}) + repr(cell.config)


def batched_fit(cell: PlannedCell, method: Any) -> Callable | None:
    """``method``'s ``batched_fit`` for ``cell``'s config: what trains its seed group in one call, or None
    (no hook, or a config whose cells cannot share steps). Also how a Slurm sweep plans its array tasks."""
    hook = getattr(method, "batched_fit", None)
    return hook(cell.config) if hook is not None else None


@dataclass
class _CellLoop:
    """What :func:`run_planned` does with a cell or a seed group it reaches: lock, look again, run, count."""

    session: Session
    options: RunOptions
    summary: RunSummary
    progress: GridProgress
    on_ran: Callable[[PlannedCell], None] | None

    def one(self, cell: PlannedCell) -> None:
        lock = None if cell.study else try_lock(lock_path(cell))
        if lock is None and not cell.study:
            self._busy(cell)
            return
        try:
            if self._done_meanwhile(cell):
                return
            result = self._run(cell)
        finally:
            if lock is not None:
                lock.release()
        self._count(cell, result)

    def group(self, group: SeedGroup) -> None:
        """The group's cells this runner can lock and that are still unfinished, trained together."""
        locks: list = []
        try:
            todo = [cell for cell in group.cells if self._claim(cell, locks)]
            if len(todo) > 1:
                self._together(todo, group.fit_many)  # each cell counted as its record is written
            else:
                for cell in todo:
                    self._count(cell, self._run(cell))
        finally:
            for lock in locks:
                lock.release()

    def _claim(self, cell: PlannedCell, locks: list) -> bool:
        lock = try_lock(lock_path(cell))
        if lock is None:
            self._busy(cell)
            return False
        locks.append(lock)
        return not self._done_meanwhile(cell)

    def _run(self, cell: PlannedCell) -> RunResult | None:
        t0 = time.perf_counter()
        result = run_cell(cell, self.session, step=self.progress.start(cell.spec.name))
        self.progress.finish(cell.spec.name, result, time.perf_counter() - t0)
        return result

    def _together(self, cells: list[PlannedCell], fit_many: Callable) -> None:
        step = self.progress.start(f"{cells[0].spec.name} and {len(cells) - 1} more seeds")

        def done(cell: PlannedCell, result: RunResult) -> None:
            self.progress.finish(cell.spec.name, result, result.timing_s.total or 0.0)
            self._count(cell, result)

        run_cells_together(cells, self.session, fit_many, step=step, on_done=done)

    def _done_meanwhile(self, cell: PlannedCell) -> bool:
        """Another runner finished the cell before we got its lock."""
        if self.options.force or not is_done(cell):
            return False
        self.summary.skipped.append(cell.spec.name)
        self.progress.skip()
        return True

    def _busy(self, cell: PlannedCell) -> None:
        self.summary.busy.append(cell.spec.name)
        self.progress.skip()

    def _count(self, cell: PlannedCell, result: RunResult | None) -> None:
        if self.on_ran is not None:
            self.on_ran(cell)
        if result is None:
            self.summary.deferred.append(cell.spec.name)
        elif result.ok:
            self.summary.ran.append(cell.spec.name)
        else:
            self.summary.failed.append((cell.spec.name, result.error.message))


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
