"""``bench run --batch-seeds``: the seeds of a CoOp or CLIP-Adapter cell trained in one ``fit_many`` call give
the records of one-at-a-time cells (accuracies within 1e-6, the same predictions), each record says it was
trained so, and a partly finished group trains only its missing seeds."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bench.features import ExtractOptions
from bench.results import load_results
from bench.runner import RunOptions, Session, plan_cells, run_cells, seed_groups
from bench.spec import expand_grid

from .conftest import TINY

METHODS = ("coop", "clip_adapter", "zero_shot")  # zero_shot has no batched fit: one cell at a time
OVERRIDES = {"coop": (("epochs", 3), ("n_ctx", 4)), "clip_adapter": (("epochs", 4),)}
METRICS = ("top1", "top5", "mean_per_class_recall", "val_top1")


def _grid(seeds=(1, 2, 3), methods=METHODS, overrides=OVERRIDES, **kw):
    overrides = {m: o for m, o in overrides.items() if m in methods}
    return expand_grid(list(methods), ["synthetic"], [2], list(seeds), [TINY], overrides=overrides, **kw)


class PredictingSession(Session):
    """A session that keeps the predictions of every scoring call (test, then val, cell after cell)."""

    def __init__(self, options):
        super().__init__(options)
        self.predictions: list[torch.Tensor] = []

    def score(self, classifier, data):
        with torch.no_grad():
            self.predictions.append(classifier(data.center.to(self.device)).argmax(1).cpu())
        return super().score(classifier, data)


def _options(root, data_root, **kw) -> RunOptions:
    return RunOptions(
        data_root=data_root,
        cache_root=root / "cache",
        results_root=root / "results",
        device="cpu",
        extract=ExtractOptions(batch_size=64, num_workers=0, progress=False),
        progress=False,
        **kw,
    )


def _by_cell(results_root) -> dict:
    return {(r.spec.method, r.spec.seed): r for r in load_results(results_root)}


@pytest.fixture(scope="module")
def sequential(tmp_path_factory, data_root):
    """The grid run one cell at a time: its records and the predictions of every scoring call."""
    root = tmp_path_factory.mktemp("sequential")
    session = PredictingSession(_options(root, data_root))
    summary = run_cells(_grid(), session.options, session)
    assert len(summary.ran) == 9 and not summary.failed
    return root, _by_cell(root / "results"), session.predictions


def _assert_same_numbers(ours, ref) -> None:
    assert ours.run_id == ref.run_id  # batching is not part of what defines a cell
    for name in METRICS:
        a, b = getattr(ours.metrics, name), getattr(ref.metrics, name)
        assert (a is None and b is None) or a == pytest.approx(b, abs=1e-6), name
    loss, ref_loss = (
        ours.diagnostics.get("train_loss_first_last"),
        ref.diagnostics.get("train_loss_first_last"),
    )
    assert (loss is None) == (ref_loss is None)
    if loss is not None:
        assert loss == pytest.approx(ref_loss, rel=1e-5)


def test_batched_seeds_give_the_sequential_records(sequential, tmp_path, data_root):
    root, reference, predictions = sequential
    options = _options(tmp_path, data_root, batch_seeds=True)
    session = PredictingSession(dataclasses.replace(options, cache_root=root / "cache"))  # features cached
    summary = run_cells(_grid(), session.options, session)
    assert len(summary.ran) == 9 and not summary.failed
    ours = _by_cell(options.results_root)
    assert sorted(ours) == sorted(reference)
    for cell, record in ours.items():
        _assert_same_numbers(record, reference[cell])
        assert "batched_fit" not in reference[cell].diagnostics
        if cell[0] == "zero_shot":
            assert "batched_fit" not in record.diagnostics
        else:
            assert record.diagnostics["batched_fit"]["seeds"] == [1, 2, 3]
            assert record.diagnostics["batched_fit"]["fit_s"] >= record.timing_s.fit >= 0
    assert len(session.predictions) == len(predictions) == 2 * 9  # test and val of every cell, in grid order
    for a, b in zip(session.predictions, predictions, strict=True):
        assert torch.equal(a, b)


def test_a_partly_done_group_trains_only_its_missing_seeds(sequential, tmp_path, data_root):
    root, reference, _ = sequential
    options = dataclasses.replace(_options(tmp_path, data_root, batch_seeds=True), cache_root=root / "cache")
    first = run_cells(_grid(seeds=(2,), methods=("coop",)), options)  # a group of one: trained alone
    assert first.ran == ["coop/synthetic/k2/s2"]
    (done,) = load_results(options.results_root)
    assert "batched_fit" not in done.diagnostics
    (path,) = options.results_root.rglob("k02-s2-*.json")
    before = path.read_bytes()

    again = run_cells(_grid(methods=("coop",)), options)
    assert again.skipped == ["coop/synthetic/k2/s2"]
    assert again.ran == ["coop/synthetic/k2/s1", "coop/synthetic/k2/s3"]
    ours = _by_cell(options.results_root)
    assert path.read_bytes() == before  # the finished cell is not rewritten
    for seed in (1, 3):
        assert ours[("coop", seed)].diagnostics["batched_fit"]["seeds"] == [1, 3]
    for seed in (1, 2, 3):
        _assert_same_numbers(ours[("coop", seed)], reference[("coop", seed)])
    assert not run_cells(_grid(methods=("coop",)), options).ran  # resumed: nothing left


def test_only_cells_of_one_untuned_config_with_a_batched_fit_are_grouped(run_options):
    session = Session(run_options)

    def grouped(specs) -> set[str]:
        return {
            c.spec.name for g in seed_groups(plan_cells(specs, session), session).values() for c in g.cells
        }

    assert grouped(_grid(methods=("coop", "zero_shot"))) == {f"coop/synthetic/k2/s{s}" for s in (1, 2, 3)}
    assert not grouped(
        _grid(methods=("coop",), overrides={"coop": (("csc", True),)})
    )  # class-specific contexts
    assert not grouped(_grid(methods=("clip_adapter",), overrides={"clip_adapter": (("augment", "live"),)}))
    assert not grouped(_grid(seeds=(1,), methods=("coop",)))  # one seed: nothing to share
    assert not grouped(_grid(methods=("coop",), tune="val", trials=2))  # each seed its own tuned config


def test_batch_seeds_with_nothing_to_group_says_so(run_options, caplog):
    import dataclasses
    import logging

    from bench.runner import run_cells

    options = dataclasses.replace(run_options, batch_seeds=True)
    with caplog.at_level(logging.WARNING, logger="bench.runner"):
        run_cells(_grid(methods=("zero_shot",)), options, Session(options))
    assert "--batch-seeds: no cells here can train together" in caplog.text


def test_each_cell_of_a_group_is_reported_as_its_record_is_written(run_options):
    """A Slurm task counts a grouped cell done when its record exists, not when the whole group ends, so a
    task preempted mid-group does not redo the seeds it already wrote."""
    from bench.cell import run_cells_together

    session = Session(run_options)
    group = next(iter(seed_groups(plan_cells(_grid(methods=("coop",)), session), session).values()))
    seen = []
    results = run_cells_together(
        group.cells, session, group.fit_many, on_done=lambda cell, result: seen.append(cell.path.is_file())
    )
    assert len(group.cells) == 3 and seen == [True, True, True] and all(r.ok for r in results)
    assert [r.diagnostics["batched_fit"]["seeds"] for r in results] == [[1, 2, 3]] * 3
