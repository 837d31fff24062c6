"""bench export: records into TensorBoard event files, offline W&B runs and an MLflow file store, read back
with each tracker's own reader.

TensorBoard is the ``tensorboard`` extra that scripts/setup.sh installs (7 small packages). W&B (~26
packages, a Go binary) and MLflow (~35 packages even as mlflow-skinny) are too heavy for the CI's setup
time: their tests run where the ``wandb`` / ``mlflow`` extras are installed and are skipped elsewhere.
"""

import importlib.util
import json

import pytest

from bench.cli import main
from bench.reports.export import cell_run

from .report_fixtures import write_fixture_results

CURVE = [0.30, 0.35, 0.42]


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


@pytest.fixture
def results(tmp_path):
    root = write_fixture_results(tmp_path / "results")
    for path in root.rglob(
        "*.json"
    ):  # a method's recorded per-epoch curve, as CoOp records val_top1_by_epoch
        content = json.loads(path.read_text())
        if content["status"] == "ok" and content["spec"]["method"] == "clip_adapter":
            content["diagnostics"] = {"val_top1_by_epoch": CURVE, "best_epoch": 3}
            path.write_text(json.dumps(content))
    return root


def _n_ok(root) -> int:
    return sum(json.loads(p.read_text())["status"] == "ok" for p in root.rglob("k*-s*-*.json"))


def test_a_cell_run_has_config_metrics_and_curves(results):
    from bench.results import load_results

    record = next(
        r.to_json() for r in load_results(results) if r.ok and r.to_json()["spec"]["method"] == "clip_adapter"
    )
    run = cell_run(record)
    assert run.name.startswith("clip_adapter/") and run.group.startswith(
        f"{record['backbone']['id']} · tune "
    )
    assert (
        run.config["spec.method"] == "clip_adapter" and run.config["backbone.id"] == record["backbone"]["id"]
    )
    assert run.metrics["top1"] == record["metrics"]["top1"] and run.metrics["diagnostics/best_epoch"] == 3
    assert run.curves["diagnostics/val_top1_by_epoch"] == list(enumerate(CURVE, start=1))


@pytest.mark.skipif(not _installed("tensorboard"), reason="the tensorboard extra is not installed")
def test_tensorboard_event_files_per_cell_and_per_sweep(results, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    assert main(["export", "--to", "tensorboard", "--results", str(results), "--out", str(out)]) == 0
    assert "1 failed record(s) left out" in capsys.readouterr().err
    runs = sorted({p.parent for p in out.rglob("events.out.tfevents.*")})
    assert len(runs) == _n_ok(results)
    curve_run = next(r for r in runs if r.name.startswith("clip_adapter_dtd_k16"))
    events = EventAccumulator(str(curve_run))
    events.Reload()
    assert {"top1", "diagnostics/val_top1_by_epoch"} <= set(events.Tags()["scalars"])
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("diagnostics/val_top1_by_epoch")] == list(
        enumerate(CURVE, start=1)
    )

    sweep = tmp_path / "tb-sweep"
    assert (
        main(
            [
                "export",
                "--to",
                "tensorboard",
                "--per",
                "sweep",
                "--results",
                str(results),
                "--out",
                str(sweep),
            ]
        )
        == 0
    )
    table = next(
        p.parent for p in sweep.rglob("events.out.tfevents.*") if "RN50_openai_tune_none_fewshot" in str(p)
    )
    events = EventAccumulator(str(table))
    events.Reload()
    points = [(e.step, round(e.value, 2)) for e in events.Scalars("top1_by_shots/linear_probe/average")]
    assert points == [(1, 42.5), (16, 72.0)]  # accuracy against shots, the dataset average


@pytest.mark.skipif(
    not _installed("wandb"), reason="the wandb extra (~26 packages) is not installed: too heavy for CI"
)
def test_wandb_offline_run_folders(results, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    out = tmp_path / "wb"
    assert (
        main(["export", "--to", "wandb", "--results", str(results), "--out", str(out), "--project", "t"]) == 0
    )
    folders = sorted(out.glob("wandb/offline-run-*"))
    assert len(folders) == _n_ok(results) and all(list(f.glob("run-*.wandb")) for f in folders)


@pytest.mark.skipif(
    not _installed("mlflow"), reason="the mlflow extra (~35 packages) is not installed: too heavy for CI"
)
def test_mlflow_file_store(results, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # the reader below opens the file store too
    out = tmp_path / "mlruns"
    assert (
        main(["export", "--to", "mlflow", "--results", str(results), "--out", str(out), "--project", "t"])
        == 0
    )
    client = MlflowClient(tracking_uri=out.resolve().as_uri())
    experiment = client.get_experiment_by_name("t")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    assert len(runs) == _n_ok(results)
    run = next(r for r in runs if r.info.run_name.startswith("clip_adapter/dtd/k16"))
    assert run.data.params["spec.method"] == "clip_adapter" and "top1" in run.data.metrics
    history = client.get_metric_history(run.info.run_id, "diagnostics/val_top1_by_epoch")
    assert [(m.step, round(m.value, 4)) for m in history] == list(enumerate(CURVE, start=1))


def test_a_missing_tracker_names_its_extra(results, tmp_path, capsys, monkeypatch):
    import builtins

    real = builtins.__import__

    def refuse(name, *args, **kwargs):
        if name.split(".")[0] == "mlflow":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", refuse)
    assert main(["export", "--to", "mlflow", "--results", str(results), "--out", str(tmp_path / "m")]) == 2
    assert "pip install 'clip-fewshot-bench[mlflow]'" in capsys.readouterr().err
