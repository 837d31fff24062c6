"""What cluster jobs run: module-level callables of picklable frozen specs (RunSpec, RunOptions).

- :class:`FeatureTask`: one per (backbone, dataset); fills the feature cache for the sweep's
  cells of that pair, so array tasks only read it. Checkpointable too: a timed-out or preempted
  feature job requeues and goes on from the shards already written, instead of failing and taking
  its dependent array down with it (``afterok``).
- :class:`CellTask`: one array task; runs a group of cells in order, each writing its record
  atomically. It is :class:`submitit.helpers.Checkpointable`: preempted or close to its time
  limit, submitit calls :meth:`CellTask.checkpoint`, which resubmits the task with the list of
  cells it already finished, so the requeued task goes on where it stopped.
"""

from __future__ import annotations

import logging
from typing import Any

import submitit

from bench.runner import RunOptions, Session, plan_cells, prepare_features, run_planned
from bench.spec import RunSpec

log = logging.getLogger(__name__)


class FeatureTask(submitit.helpers.Checkpointable):
    """Encodes every image the cells of ``specs`` will read (:func:`bench.runner.prepare_features`).

    Its checkpoint is the default one (resubmit with the same arguments): the feature cache is
    written in atomic shards, so the requeued job skips what is already encoded.
    """

    def __call__(self, specs: tuple[RunSpec, ...], options: RunOptions) -> dict[str, int]:
        session = Session(options)
        return {
            "cells": len(specs),
            "images_encoded": prepare_features(plan_cells(list(specs), session), session),
        }


class CellTask(submitit.helpers.Checkpointable):
    """Runs cells one after another; a cell's failure is its record's business, the task goes on.

    Attributes:
        finished: run ids of the cells this task has written a record for. It travels with the
            checkpoint, so after a requeue those cells are skipped even with ``options.force``.
    """

    def __init__(self) -> None:
        self.finished: list[str] = []

    def __call__(self, specs: tuple[RunSpec, ...], options: RunOptions) -> dict[str, Any]:
        session = Session(options)
        summary = run_planned(
            plan_cells(list(specs), session),
            session,
            options,
            done_before=set(self.finished),
            prepare=False,
            on_ran=lambda cell: self.finished.append(cell.run_id),
        )
        out = {
            "ran": summary.ran,
            "skipped": summary.skipped,
            "failed": [name for name, _ in summary.failed],
            "deferred": summary.deferred,
            "busy": summary.busy,
        }
        log.info("cell task done: %s", {k: len(v) for k, v in out.items()})
        return out
