import dataclasses
import json
import shutil

import pytest

from bench.errors import BenchError
from bench.registry import Registry
from bench.results import load_results
from bench.runner import Session, run_cells
from bench.spec import expand_grid

from .conftest import TINY

METHODS = {
    "zero_shot": "bench.methods.zero_shot:ZeroShot",
    "linear_probe": "bench.methods.linear_probe:LinearProbe",
    "clip_adapter": "bench.methods.clip_adapter:ClipAdapter",
    "exploding": "tests.plugins:ExplodingMethod",
    "spy": "tests.plugins:SpyMethod",
}


def _grid(methods=("zero_shot", "linear_probe"), shots=(1, 2), seeds=(1,), **kw):
    return expand_grid(list(methods), ["synthetic"], list(shots), list(seeds), [TINY], **kw)


def test_run_writes_one_complete_record_per_cell_then_resumes(run_options):
    session = Session(run_options)
    summary = run_cells(_grid(), run_options, session)
    assert len(summary.ran) == 4 and not summary.failed
    results = load_results(run_options.results_root)
    assert len(results) == 4
    record = next(r for r in results if r.spec["method"] == "linear_probe" and r.spec["shots"] == 2)
    assert record.ok and 0 <= record.metrics["top1"] <= 1
    assert record.backbone["weights_sha256"] == session.backbone(TINY).weights_sha256
    assert record.data["split_protocol"] == "dassl" and len(record.data["split_file_sha256"]) == 64
    assert record.data["n_train"] == 2 * 8 and record.data["n_val"] == 2 * 8 and record.data["n_test"] == 96
    assert record.data["preprocessing"]["resize"] == "shortest"
    assert "chosen_c" in record.diagnostics
    assert record.provenance["torch"] and record.provenance["started_at"].endswith("+00:00")
    assert record.memory["peak_host_rss_bytes"] > 0 and record.timing_s["fit"] >= 0

    encoded_before = session.cache.images_encoded
    again = run_cells(_grid(), run_options, session)
    assert len(again.skipped) == 4 and not again.ran  # resumed: nothing recomputed
    assert session.cache.images_encoded == encoded_before
    forced = run_cells(_grid(), dataclasses.replace(run_options, force=True), session)
    assert len(forced.ran) == 4


def test_features_are_shared_across_methods_shots_and_seeds(run_options):
    session = Session(run_options)
    run_cells(_grid(methods=("zero_shot",), shots=(1,), seeds=(1,)), run_options, session)
    first = session.cache.images_encoded
    run_cells(_grid(methods=("linear_probe",), shots=(1,), seeds=(1,)), run_options, session)
    assert session.cache.images_encoded == first  # same support, val and test images: all cached


def test_prompt_set_and_config_go_into_the_record(run_options):
    specs = _grid(methods=("zero_shot",), shots=(1,), overrides={"zero_shot": (("prompts", "ensemble"),)})
    run_cells(specs, run_options)
    (record,) = load_results(run_options.results_root)
    assert record.prompts["set"] == "ensemble" and len(record.prompts["templates"]) == 3
    assert record.config == {"prompts": "ensemble"}
    assert record.spec["overrides"] == {"prompts": "ensemble"}


def test_a_failing_cell_is_recorded_and_the_grid_goes_on(run_options):
    session = Session(run_options, methods=Registry("method", METHODS, plugins=[]))
    summary = run_cells(_grid(methods=("exploding", "zero_shot"), shots=(1,)), run_options, session)
    assert summary.failed == [("exploding/synthetic/k1/s1", "boom")]
    assert summary.ran == ["zero_shot/synthetic/k1/s1"]
    failed = [r for r in load_results(run_options.results_root) if not r.ok]
    assert failed[0].error["type"] == "RuntimeError" and "boom" in failed[0].error["traceback_tail"]
    assert failed[0].data["split_protocol"] == "dassl"
    # failed cells are retried on the next run
    retry = run_cells(_grid(methods=("exploding", "zero_shot"), shots=(1,)), run_options, session)
    assert retry.skipped == ["zero_shot/synthetic/k1/s1"] and len(retry.failed) == 1


def test_methods_never_see_the_test_split(run_options):
    from tests import plugins

    session = Session(run_options, methods=Registry("method", METHODS, plugins=[]))
    plugins.SpyMethod.seen.clear()
    original = session.cache.image_features
    requested = []

    def spy(key, *args, **kwargs):
        requested.append((key.split, len(plugins.SpyMethod.seen)))
        return original(key, *args, **kwargs)

    session.cache.image_features = spy
    run_cells(_grid(methods=("spy",), shots=(2,)), run_options, session)
    (data,) = plugins.SpyMethod.seen
    assert not hasattr(data, "test")
    assert data.train.features.shape[1] == 16 and data.val.features.shape[1] == 16
    # the test split is read only after fit returned
    assert [split for split, fitted in requested if fitted == 0] == ["train", "val"]
    assert [split for split, fitted in requested if fitted == 1] == ["test"]


def test_unknown_method_and_dataset_fail_before_any_work(run_options):
    from bench.datasets import dataset_registry
    from bench.methods import method_registry

    with pytest.raises(BenchError, match="Did you mean: linear_probe"):
        method_registry().expand("linear_prob")
    with pytest.raises(BenchError, match="unknown dataset 'synthetc'. Did you mean: synthetic"):
        dataset_registry().expand("synthetc")


def test_missing_data_root_gives_a_clear_error(run_options, tmp_path):
    # a dataset the user must bring (no generator)
    datasets = Registry("dataset", {"synthetic": "tests.plugins:REAL_LOOKING"}, plugins=[])
    options = dataclasses.replace(run_options, data_root=tmp_path / "nowhere")
    with pytest.raises(
        BenchError, match=r"nowhere/synthetic/split_zhou_Synthetic\.json: split file .* not found"
    ):
        run_cells(_grid(methods=("zero_shot",), shots=(1,)), options, Session(options, datasets=datasets))
    assert not (run_options.results_root).exists()  # nothing written


def test_unreadable_image_names_the_file(run_options, tmp_path, data_root):
    shutil.copytree(data_root / "synthetic", tmp_path / "data" / "synthetic")
    (tmp_path / "data/synthetic/images/blue_dots/test_000.png").write_bytes(b"not a png")
    options = dataclasses.replace(run_options, data_root=tmp_path / "data")
    with pytest.raises(BenchError, match=r"blue_dots/test_000\.png: cannot decode image"):
        run_cells(_grid(methods=("zero_shot",), shots=(1,)), options)
    assert not list(options.results_root.rglob("*.json"))  # no record for a cell that could not be scored


def test_unwritable_results_folder(run_options, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    options = dataclasses.replace(run_options, results_root=blocker / "results")
    with pytest.raises(BenchError, match="cannot write the results folder"):
        run_cells(_grid(methods=("zero_shot",), shots=(1,)), options)


def test_bad_override_is_rejected_with_the_field_list(run_options):
    specs = _grid(methods=("clip_adapter",), shots=(1,), overrides={"clip_adapter": (("alpah", 0.5),)})
    with pytest.raises(BenchError, match="no config field 'alpah'. Did you mean: alpha"):
        run_cells(specs, run_options)


def test_records_are_valid_json_without_nan(run_options):
    run_cells(_grid(methods=("zero_shot",), shots=(1,)), run_options)

    def refuse(constant):
        pytest.fail(f"{constant} in a result record")

    for path in run_options.results_root.rglob("*.json"):
        json.loads(path.read_text(), parse_constant=refuse)
    assert not list(run_options.results_root.rglob("*.tmp"))
