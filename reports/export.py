"""``bench export --to wandb|mlflow|tensorboard``: result records into an experiment tracker, offline.

Reads the JSON records only (like ``bench report``) and writes what the tracker's own tools open:

- ``tensorboard``: event files under ``OUT/<run>/`` (``tensorboard --logdir OUT``), with the config as
  hyperparameters;
- ``wandb``: offline run folders under ``OUT/wandb/`` (``wandb sync OUT/wandb/offline-run-*`` uploads them);
- ``mlflow``: a local file store at ``OUT`` (``mlflow ui --backend-store-uri OUT``).

``--per cell`` (default): one run per record, named ``method/dataset/kK/sS``, grouped by backbone and
tuning mode; its config is the record's spec, method config, backbone and prompt set; its metrics the
record's scores (fractions, as stored) and timings; its curves the per-epoch lists the method recorded
in ``diagnostics`` (e.g. ``val_top1_by_epoch``). ``--per sweep``: one run per table of the report, its
metrics the per-cell means over seeds (percent) and its curves accuracy against shots per method and
dataset (step = shots), the dataset average included.

Each tracker is an optional extra (``pip install 'clip-fewshot-bench[tensorboard]'``, ``[wandb]``,
``[mlflow]``); a missing one is a one-line error naming the extra.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import BenchError

TARGETS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # target -> extra to install
PER = ("cell", "sweep")


@dataclass(frozen=True)
class TrackedRun:
    """One tracker run: ``config`` flat (str, int, float, bool), ``metrics`` scalars, ``curves`` name ->
    [(step, value), ...]."""

    name: str
    group: str
    config: dict[str, Any]
    metrics: dict[str, float]
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)


def _flat(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict):
        out = {}
        for key, inner in value.items():
            out.update(_flat(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, (list, tuple)):
        return {prefix: json.dumps(value)}
    return (
        {prefix: value}
        if value is None or isinstance(value, (str, int, float, bool))
        else {prefix: str(value)}
    )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def cell_run(record: dict) -> TrackedRun:
    """The run of one record (its ``to_json()`` form)."""
    spec = record["spec"]
    backbone = record.get("backbone") or {}
    config = {
        **_flat(spec, "spec"),
        **_flat(record.get("config") or {}, "config"),
        **_flat({k: backbone.get(k) for k in ("id", "arch", "weights_sha256", "precision")}, "backbone"),
        "prompts": (record.get("prompts") or {}).get("set"),
        "run_id": record.get("run_id"),
    }
    numbers = {**_flat(record.get("metrics") or {}, ""), **_flat(record.get("timing_s") or {}, "timing_s")}
    metrics = {k: v for k, v in ((k, _number(v)) for k, v in numbers.items()) if v is not None}
    curves, diagnostics = {}, record.get("diagnostics") or {}
    for name, value in diagnostics.items():
        if isinstance(value, list) and len(value) > 1 and all(_number(v) is not None for v in value):
            curves[f"diagnostics/{name}"] = [(step, float(v)) for step, v in enumerate(value, start=1)]
        elif _number(value) is not None:
            metrics[f"diagnostics/{name}"] = float(value)
    overrides = spec.get("overrides") or {}
    label = spec["method"] + (
        f"[{','.join(f'{k}={v}' for k, v in sorted(overrides.items()))}]" if overrides else ""
    )
    name = f"{label}/{spec['dataset']}/k{spec['shots']}/s{spec['seed']}"
    group = (
        f"{backbone.get('id', spec.get('backbone'))} · tune {spec.get('tune', 'none')}"
        f" · {spec.get('protocol') or 'fewshot'}"
    )
    return TrackedRun(name, group, {k: v for k, v in config.items() if v is not None}, metrics, curves)


def sweep_runs(records: list, title: str) -> list[TrackedRun]:
    """One run per report table: per-cell means over seeds (percent) and accuracy-vs-shots curves."""
    from bench.reports.aggregate import (
        aggregate,
        dataset_average,
        in_table,
        results_frame,
        table_keys,
        table_settings,
    )

    frame = results_frame(records)
    cells = aggregate(frame)
    averages = dataset_average(frame, cells)
    runs = []
    for key in table_keys(frame):
        settings = table_settings(key)
        table = in_table(cells, key)
        metrics, curves = {}, {}
        for r in table.to_dict("records"):
            metrics[f"top1/{r['label']}/{r['dataset']}/k{r['shots']}"] = float(r["mean"])
            curves.setdefault(f"top1_by_shots/{r['label']}/{r['dataset']}", []).append(
                (int(r["shots"]), float(r["mean"]))
            )
        for r in in_table(averages, key).to_dict("records"):
            if r["complete_datasets"]:
                curves.setdefault(f"top1_by_shots/{r['label']}/average", []).append(
                    (int(r["shots"]), float(r["mean"]))
                )
        config = {
            **{k: str(v) for k, v in settings.items()},
            "records": int(len(in_table(frame, key))),
            "methods": ",".join(sorted(table["label"].unique())),
            "datasets": ",".join(sorted(table["dataset"].unique())),
            "shots": ",".join(map(str, sorted(table["shots"].unique()))),
        }
        name = f"{title} · {settings['backbone']} · tune {settings['tune']} · {settings['protocol']}"
        runs.append(TrackedRun(name, title, config, metrics, {k: sorted(v) for k, v in curves.items()}))
    return runs


# -- writers -----------------------------------------------------------------------------------


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def _import(target: str):
    try:
        if target == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            return SummaryWriter
        return __import__(target)
    except ImportError:
        raise BenchError(
            f"{target} is not installed",
            where="--to",
            fix=f"pip install 'clip-fewshot-bench[{TARGETS[target]}]'",
        ) from None


def write_tensorboard(runs: list[TrackedRun], out: Path, project: str) -> list[Path]:
    """Event files under ``out/<group>/<run>``: summary scalars at step 0, curves at their steps, the
    config as hyperparameters (the HPARAMS tab) with the run's top-1."""
    writer_class = _import("tensorboard")
    folders = []
    for run in runs:
        folder = (
            out / _safe(project) / _safe(run.group) / _safe(f"{run.name}-{run.config.get('run_id', '')[:8]}")
        )
        writer = writer_class(log_dir=str(folder))
        for name, value in sorted(run.metrics.items()):
            writer.add_scalar(name, value, 0)
        for name, points in sorted(run.curves.items()):
            for step, value in points:
                writer.add_scalar(name, value, step)
        hparams = {k: v for k, v in run.config.items() if isinstance(v, (str, int, float, bool))}
        writer.add_hparams(
            hparams,
            {f"hparams/{k}": v for k, v in run.metrics.items() if k in ("top1", "val_top1")},
            run_name=".",
        )
        writer.close()
        folders.append(folder)
    return folders


def write_wandb(runs: list[TrackedRun], out: Path, project: str) -> list[Path]:
    """Offline W&B runs under ``out/wandb``: config, summary metrics, and each curve against its own step."""
    os.environ["WANDB_MODE"] = "offline"  # never the network, whatever the user's settings say
    os.environ.setdefault("WANDB_SILENT", "true")
    wandb = _import("wandb")
    out.mkdir(parents=True, exist_ok=True)
    folders = []
    for run in runs:
        handle = wandb.init(
            project=project,
            name=run.name,
            group=run.group,
            config=run.config,
            dir=str(out),
            mode="offline",
            reinit="create_new",
        )
        for name, points in sorted(run.curves.items()):
            handle.define_metric(name, step_metric=f"{name}/step")
            for step, value in points:
                handle.log({name: value, f"{name}/step": step})
        handle.summary.update(run.metrics)
        folders.append(Path(handle.dir).parent)
        handle.finish()
    return folders


def write_mlflow(runs: list[TrackedRun], out: Path, project: str) -> list[Path]:
    """An MLflow file store at ``out``: experiment ``project``, params (the config), metrics, curves by step."""
    os.environ.setdefault(
        "MLFLOW_ALLOW_FILE_STORE", "true"
    )  # MLflow 3 keeps the file store behind this opt-in
    mlflow = _import("mlflow")
    out.mkdir(parents=True, exist_ok=True)
    client = mlflow.tracking.MlflowClient(tracking_uri=out.resolve().as_uri())
    experiment = client.get_experiment_by_name(project)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(project)
    folders = []
    for run in runs:
        handle = client.create_run(experiment_id, run_name=run.name, tags={"group": run.group})
        run_id = handle.info.run_id
        for key, value in sorted(run.config.items()):
            client.log_param(run_id, _mlflow_key(key), str(value)[:6000])
        for name, value in sorted(run.metrics.items()):
            client.log_metric(run_id, _mlflow_key(name), value, step=0)
        for name, points in sorted(run.curves.items()):
            for step, value in points:
                client.log_metric(run_id, _mlflow_key(name), value, step=step)
        client.set_terminated(run_id)
        folders.append(out / experiment_id / run_id)
    return folders


def _mlflow_key(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-. /:]", "_", name)


WRITERS = {"tensorboard": write_tensorboard, "wandb": write_wandb, "mlflow": write_mlflow}


# -- command -----------------------------------------------------------------------------------


def add_parser(subparsers) -> None:
    from bench.run_config import add_folder_argument

    p = subparsers.add_parser(
        "export",
        help="result records into W&B (offline), MLflow (file store) or TensorBoard event files",
        description="Write result records into an experiment tracker's own files, without network: one run per "
        "cell (config, scores, recorded curves) or per sweep table (means and accuracy-vs-shots "
        "curves). Reads the JSON records only.",
        epilog="examples:\n  bench export --to tensorboard --out runs/ && tensorboard --logdir runs/\n"
        "  bench export --to wandb --per sweep --project fewshot   # then: wandb sync runs/wandb/offline-run-*\n"
        "  bench export --to mlflow --out mlruns/                  # then: mlflow ui --backend-store-uri mlruns/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--to", required=True, choices=tuple(TARGETS), help="the tracker")
    p.add_argument("--per", default="cell", choices=PER, help="one run per cell (default) or per sweep table")
    p.add_argument(
        "--project", default="clip-fewshot-bench", help="W&B project, MLflow experiment, TensorBoard folder"
    )
    p.add_argument(
        "--out", type=Path, default=Path("runs"), help="where the tracker's files go (default: ./runs)"
    )
    add_folder_argument(p, "results", "results folder")
    p.set_defaults(func=run)


def run(args) -> int:
    from bench.results import load_results

    records = load_results(args.results)
    ok = [r for r in records if r.ok]
    if not ok:
        raise BenchError("no ok result records found", where=str(args.results), fix="run `bench run` first")
    if args.per == "cell":
        runs = [cell_run(r.to_json()) for r in ok]
    else:
        runs = sweep_runs(ok, args.project)
    folders = WRITERS[args.to](runs, args.out, args.project)
    skipped = len(records) - len(ok)
    sys.stderr.write(
        f"wrote {len(folders)} {args.to} run(s) under {args.out}"
        + (f"; {skipped} failed record(s) left out" if skipped else "")
        + "\n"
    )
    return 0
