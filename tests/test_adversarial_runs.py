"""Issue 16, numbers, records, crashes and concurrency (items 1-4, 9, 12): one test per finding.

Each test failed on the code before the fix: non-finite values gave ``ok`` records, ``--force``
lost an ok record, one unserialisable record stopped the grid, a misplaced record marked a cell
done, a killed extraction restarted from zero, and two runners did every cell twice.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import socket
import stat
import subprocess
import sys
import time

import pytest
import torch

from bench import fileio
from bench.datasets.catalog import SYNTHETIC
from bench.datasets.splits import read_split_file
from bench.errors import BenchError, NonFiniteError
from bench.features import ExtractOptions, FeatureCache, ImageFeatureKey
from bench.images import CENTER
from bench.methods.base import FeatureSet
from bench.methods.zero_shot import ZeroShot
from bench.registry import Registry
from bench.results import read_result
from bench.runner import RunOptions, Session, is_done, lock_path, plan_cells, prepare_features, run_cells
from bench.scoring import score
from bench.spec import expand_grid

from .conftest import TINY

FAST = {"coop": (("epochs", 2),), "clip_adapter": (("epochs", 2),)}


def _grid(methods=("zero_shot",), shots=(1,), seeds=(1,), overrides=None):
    return expand_grid(
        list(methods),
        ["synthetic"],
        list(shots),
        list(seeds),
        [TINY],
        overrides={m: o for m, o in (overrides or {}).items() if m in methods},
    )


def _records(results_root):
    return {p.name: read_result(p) for p in results_root.rglob("k*-s*-*.json")}


# -- item 1: non-finite values never become an ok record ----------------------------------------


def test_non_finite_features_fail_the_cell_naming_the_image(run_options, monkeypatch):
    session = Session(run_options)
    backbone = session.backbone(TINY)
    encode = backbone.encode_images

    def one_nan_per_batch(images):
        out = encode(images).clone()
        out[0, 0] = float("nan")
        return out

    monkeypatch.setattr(backbone, "encode_images", one_nan_per_batch)
    methods = ("zero_shot", "linear_probe", "clip_adapter", "coop")
    summary = run_cells(_grid(methods, overrides=FAST), run_options, session)
    assert not summary.ran and len(summary.failed) == 4
    for name, message in summary.failed:
        assert "non-finite features for image" in message and str(run_options.data_root) in message, name
    assert all(r.status == "failed" for r in _records(run_options.results_root).values())


def test_nan_in_a_cached_shard_fails_when_loaded_naming_the_file(run_options):
    run_cells(_grid(), run_options)
    (shard_file,) = (run_options.cache_root / "features").rglob("test-*/shard-*.pt")
    shard = torch.load(shard_file, weights_only=True)
    shard["features"][0, 5, 0] = float("inf")
    torch.save(shard, shard_file)
    summary = run_cells(
        _grid(seeds=(2,)), run_options, Session(run_options)
    )  # a fresh process reads the shard
    ((_, message),) = summary.failed
    assert str(shard_file) in message and shard["paths"][5] in message


def test_features_beyond_float16_are_stored_as_float32(run_options, monkeypatch):
    session = Session(run_options)
    backbone = session.backbone(TINY)
    encode = backbone.encode_images
    monkeypatch.setattr(backbone, "encode_images", lambda images: encode(images) * 1e6)  # |x| > 65504
    summary = run_cells(_grid(), run_options, session)
    assert summary.ran and not summary.failed
    for shard_file in (run_options.cache_root / "features").rglob("shard-*.pt"):
        features = torch.load(shard_file, weights_only=True)["features"]
        assert features.dtype == torch.float32 and torch.isfinite(features).all()


def test_diverged_training_is_a_failed_record_not_ok(run_options):
    summary = run_cells(_grid(("coop",), overrides={"coop": (("epochs", 12), ("lr", 1e6))}), run_options)
    ((_, message),) = summary.failed
    assert message.startswith("diverged at epoch ")
    (record,) = _records(run_options.results_root).values()
    assert record.status == "failed" and record.error.type == "NonFiniteError"


def test_non_finite_logits_are_refused_before_scoring():
    features = torch.randn(1, 8, 4)
    labels = torch.zeros(8, dtype=torch.int64)  # a NaN row's argmax is 0: it would count as correct

    def classifier(x):
        logits = x @ torch.eye(4)
        logits[0] = float("nan")
        return logits

    with pytest.raises(NonFiniteError, match="non-finite logits"):
        score(classifier, FeatureSet(features, labels), torch.device("cpu"))


def test_set_refuses_non_finite_values(run_options):
    for value in (float("nan"), float("inf")):
        with pytest.raises(BenchError, match="not a finite number"):
            plan_cells(_grid(("coop",), overrides={"coop": (("lr", value),)}), Session(run_options))


# -- item 2: --force keeps the ok record when the redo fails ------------------------------------


def test_force_keeps_the_ok_record_when_the_redo_fails(run_options, monkeypatch):
    run_cells(_grid(), run_options)
    ((name, before),) = ((p, p.read_bytes()) for p in run_options.results_root.rglob("k*.json"))

    def broken(self, data, cfg, ctx):
        raise RuntimeError("redo broke")

    monkeypatch.setattr(ZeroShot, "fit", broken)
    summary = run_cells(_grid(), dataclasses.replace(run_options, force=True))
    ((_, message),) = summary.failed
    assert "redo broke" in message and "earlier ok record is kept" in message
    assert name.read_bytes() == before


# -- item 3: an unserialisable record fails its cell, and the grid goes on ----------------------


class InfiniteDiagnostic(ZeroShot):
    """Zero-shot whose record holds a value JSON cannot write."""

    def fit(self, data, cfg, ctx):
        ctx.record("condition_number", float("inf"))
        return super().fit(data, cfg, ctx)


def test_an_unserialisable_record_fails_its_cell_and_the_grid_goes_on(run_options):
    methods = Registry(
        "method",
        {
            "zero_shot": "bench.methods.zero_shot:ZeroShot",
            "infinite": "tests.test_adversarial_runs:InfiniteDiagnostic",
        },
        plugins=[],
    )
    summary = run_cells(_grid(("infinite", "zero_shot")), run_options, Session(run_options, methods=methods))
    assert summary.ran == ["zero_shot/synthetic/k1/s1"]
    ((name, message),) = summary.failed
    assert name == "infinite/synthetic/k1/s1" and "cannot be written" in message
    statuses = sorted((r.spec.method, r.status) for r in _records(run_options.results_root).values())
    assert statuses == [("infinite", "failed"), ("zero_shot", "ok")]


# -- item 4: a record is done only for its own cell ---------------------------------------------


def test_a_record_counts_as_done_only_for_its_own_cell(run_options):
    run_cells(_grid(), run_options)
    seed1, seed2 = plan_cells(_grid(seeds=(1, 2)), Session(run_options))
    assert is_done(seed1) and not is_done(seed2)
    seed2.path.parent.mkdir(parents=True, exist_ok=True)
    seed2.path.write_bytes(seed1.path.read_bytes())  # copied to another seed's path
    assert not is_done(seed2)
    record = json.loads(seed1.path.read_text())
    for field, value in (("shots", "four"), ("shots", 1.0), ("seed", True)):
        seed1.path.write_text(json.dumps({**record, "spec": {**record["spec"], field: value}}))
        assert not is_done(seed1), (field, value)
    summary = run_cells(_grid(seeds=(1, 2)), run_options)
    assert sorted(summary.ran) == ["zero_shot/synthetic/k1/s1", "zero_shot/synthetic/k1/s2"]


# -- item 9: extraction resumes; leftovers are cleaned; folders are fsynced ---------------------


def test_a_killed_extraction_resumes_from_its_shards_with_identical_features(
    tmp_path, data_root, tiny_backbone, monkeypatch
):
    splits = read_split_file(SYNTHETIC, data_root)
    paths = splits.test.paths
    key = ImageFeatureKey.of(
        tiny_backbone,
        dataset="synthetic",
        dataset_version="1",
        split_sha256=splits.source_sha256,
        split="test",
        view=CENTER,
    )
    options = ExtractOptions(batch_size=8, progress=False, shard_batches=3)
    whole = FeatureCache(tmp_path / "whole").image_features(
        key, tiny_backbone, splits.image_root, paths, options
    )

    encode, calls = tiny_backbone.encode_images, []

    def killed_in_batch_six(images):
        calls.append(len(images))
        if len(calls) == 6:
            raise KeyboardInterrupt  # the job's time is up
        return encode(images)

    monkeypatch.setattr(tiny_backbone, "encode_images", killed_in_batch_six)
    with pytest.raises(KeyboardInterrupt):
        FeatureCache(tmp_path / "killed").ensure_image_features(
            key, tiny_backbone, splits.image_root, paths, options
        )
    monkeypatch.setattr(tiny_backbone, "encode_images", encode)
    rerun = FeatureCache(tmp_path / "killed")
    resumed = rerun.image_features(key, tiny_backbone, splits.image_root, paths, options)
    assert rerun.images_encoded == len(paths) - 3 * 8  # the first shard (3 batches of 8) was kept
    assert torch.equal(resumed, whole)


def test_temp_files_of_killed_writers_are_removed_and_folders_fsynced(tmp_path, monkeypatch):
    with subprocess.Popen([sys.executable, "-c", "pass"]) as gone:
        pass
    here = socket.gethostname()
    dead = tmp_path / f".a.json.tmp@{here}@{gone.pid}@x1.tmp"  # SIGKILLed between write and rename
    alive = tmp_path / f".b.json.tmp@{here}@{os.getpid()}@x2.tmp"  # a writer still at work
    elsewhere = tmp_path / ".c.json.tmp@other-host@1@x3.tmp"  # cannot tell: kept until old
    old = tmp_path / ".d.json.k3j2.tmp"  # named before writers signed their temp files
    for leftover in (dead, alive, elsewhere, old):
        leftover.write_bytes(b"half")
    week_ago = time.time() - 7 * 24 * 3600
    os.utime(old, (week_ago, week_ago))

    fsynced_folders = []
    real_fsync = os.fsync

    def spy(fd):
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            fsynced_folders.append((info.st_dev, info.st_ino))
        real_fsync(fd)

    monkeypatch.setattr(fileio.os, "fsync", spy)
    fileio.atomic_write_json(tmp_path / "e.json", {"ok": True})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, elsewhere.name, "e.json"])
    assert (tmp_path.stat().st_dev, tmp_path.stat().st_ino) in fsynced_folders


# -- item 12: concurrent runners share the cells ------------------------------------------------


class SlowZeroShot(ZeroShot):
    """Zero-shot that takes long enough for two runners to meet on every cell."""

    def fit(self, data, cfg, ctx):
        time.sleep(0.5)
        return super().fit(data, cfg, ctx)


SLOW = {"slow": "tests.test_adversarial_runs:SlowZeroShot"}
SLOW_GRID = {"methods": ("slow",), "shots": (1, 2), "seeds": (1, 2, 3)}


def _options(tmp, data_root) -> RunOptions:
    return RunOptions(
        data_root=data_root,
        cache_root=tmp / "cache",
        results_root=tmp / "results",
        device="cpu",
        extract=ExtractOptions(batch_size=64, progress=False),
        progress=False,
    )


def _runner(tmp, data_root, barrier, out) -> None:
    options = _options(tmp, data_root)
    session = Session(options, methods=Registry("method", SLOW, plugins=[]))
    plan_cells(_grid(**SLOW_GRID), session)  # imports and dataset reading before the start line
    barrier.wait()
    summary = run_cells(_grid(**SLOW_GRID), options, session)
    out.put((summary.ran, summary.busy, summary.skipped))


@pytest.mark.timeout(300)
def test_two_runners_on_one_results_folder_run_each_cell_once(tmp_path, data_root):
    session = Session(_options(tmp_path, data_root), methods=Registry("method", SLOW, plugins=[]))
    prepare_features(
        plan_cells(_grid(**SLOW_GRID), session), session
    )  # both runners then only read the cache
    spawn = multiprocessing.get_context("spawn")
    barrier, out = spawn.Barrier(2), spawn.Queue()
    runners = [spawn.Process(target=_runner, args=(tmp_path, data_root, barrier, out)) for _ in range(2)]
    for runner in runners:
        runner.start()
    reports = [out.get(timeout=240) for _ in runners]
    for runner in runners:
        runner.join(timeout=60)
    ran = [name for report in reports for name in report[0]]
    assert len(ran) == len(set(ran)) == 6  # every cell run, none twice
    records = _records(tmp_path / "results")
    assert len(records) == 6 and all(r.ok for r in records.values())
    assert not list((tmp_path / "results").rglob("*.lock"))  # released


def test_a_dead_runners_lock_is_taken_over_and_a_live_ones_respected(run_options):
    (cell,) = plan_cells(_grid(), Session(run_options))
    lock = lock_path(cell)
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}))
    assert run_cells(_grid(), run_options).busy == [cell.spec.name] and not cell.path.exists()
    with subprocess.Popen([sys.executable, "-c", "pass"]) as gone:
        pass
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": gone.pid, "time": time.time()}))
    assert run_cells(_grid(), run_options).ran == [cell.spec.name] and not lock.exists()
