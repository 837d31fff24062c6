"""The runner: plans cells, skips finished ones, runs the rest and writes one record per cell.

This is the only module that loads a test split. A method gets :class:`FewShotData`
(support set + few-shot val); test features are read after ``fit`` returns, once, to
score the classifier.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from bench._io import ensure_writable_dir, sha256_json
from bench.backbone import Backbone, BackboneRef, load_backbone, resolve_device
from bench.datasets import dataset_registry
from bench.datasets.spec import DatasetSpec, DatasetSplits
from bench.datasets.splits import (
    SPLIT_PROTOCOL,
    VAL_SHOTS_CAP,
    FewShotIndices,
    load_or_create_fewshot,
    read_split_file,
)
from bench.errors import BenchError
from bench.features import ExtractOptions, FeatureCache, ImageFeatureKey
from bench.images import CENTER, ViewSpec
from bench.methods import method_registry
from bench.methods.base import FeatureSet, FewShotData, FitContext
from bench.provenance import cluster_ids, environment, peak_host_rss_bytes, utc_now
from bench.registry import Registry, import_target
from bench.results import SCHEMA_VERSION, RunResult, read_result, result_path, write_result
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


@dataclass(frozen=True)
class PlannedCell:
    """A validated cell: its spec, resolved method config, run id and record path."""

    spec: RunSpec
    config: Any
    run_id: str
    path: Path


@dataclass
class RunSummary:
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (cell, error)


class Session:
    """Per-process state shared by cells: registries, loaded backbones, dataset lists, the feature cache."""

    def __init__(self, options: RunOptions, methods: Registry | None = None, datasets: Registry | None = None):
        self.options = options
        self.methods = methods or method_registry()
        self.datasets = datasets or dataset_registry()
        self.cache = FeatureCache(options.cache_root)
        self.device = resolve_device(options.device)
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

    def backbone_identity(self, name: str) -> str:
        if name not in self._identities:
            self._identities[name] = BackboneRef.parse(name).identity()
        return self._identities[name]

    def backbone(self, name: str) -> Backbone:
        if name not in self._backbones:
            self._backbones.clear()  # one backbone in memory at a time; cells are ordered by backbone
            self._backbones[name] = load_backbone(BackboneRef.parse(name), self.device, self.options.precision)
        return self._backbones[name]


def read_dataset(spec: DatasetSpec, data_root: Path) -> DatasetSplits:
    """Image lists of ``spec`` via its reader (CoOp split file by default)."""
    if spec.reader == "split_file":
        return read_split_file(spec, data_root)
    return import_target(spec.reader)(spec, data_root)


def plan_cells(specs: list[RunSpec], session: Session) -> list[PlannedCell]:
    """Validate every cell before any work: names, backbone, config overrides, datasets, results folder."""
    planned = []
    for spec in specs:
        method = session.method(spec.method)
        dataset = session.dataset_spec(spec.dataset)
        session.splits(spec.dataset)
        config = apply_overrides(method.default_config(spec.dataset, spec.shots), spec.overrides, method=spec.method)
        run_id = spec.run_id(method_version=method.version, dataset_version=dataset.version,
                             backbone_identity=session.backbone_identity(spec.backbone), split_protocol=SPLIT_PROTOCOL)
        path = result_path(session.options.results_root, BackboneRef.parse(spec.backbone).slug, spec.dataset,
                           spec.method, spec.shots, spec.seed, run_id)
        planned.append(PlannedCell(spec, config, run_id, path))
    ensure_writable_dir(Path(session.options.results_root), purpose="results")
    return planned


def is_done(cell: PlannedCell) -> bool:
    """A cell is done when its record exists and says ok (failed cells are retried)."""
    if not cell.path.is_file():
        return False
    try:
        return read_result(cell.path).ok
    except BenchError:
        return False


def run_cells(specs: list[RunSpec], options: RunOptions, session: Session | None = None) -> RunSummary:
    """Run every cell that has no ok record (all of them with ``options.force``)."""
    session = session or Session(options)
    cells = plan_cells(specs, session)
    summary = RunSummary()
    bar = tqdm(cells, desc="cells", unit="cell", disable=not options.progress)
    for cell in bar:
        bar.set_postfix_str(cell.spec.name)
        if not options.force and is_done(cell):
            summary.skipped.append(cell.spec.name)
            continue
        result = run_cell(cell, session)
        (summary.ran if result.ok else summary.failed).append(
            cell.spec.name if result.ok else (cell.spec.name, result.error["message"]))
    return summary


def run_cell(cell: PlannedCell, session: Session) -> RunResult:
    """Run one cell and write its record. User errors (:class:`BenchError`) propagate; other
    exceptions become a ``failed`` record so the rest of the grid goes on."""
    started, t0 = utc_now(), time.perf_counter()
    if session.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(session.device)
    try:
        record = _execute(cell, session)
        status, error = "ok", None
    except BenchError:
        raise
    except Exception as exc:  # a bug or an OOM in one cell must not stop the grid
        log.exception("cell %s failed", cell.spec.name)
        record = _bare_record(cell, session)
        status = "failed"
        error = {"type": type(exc).__name__, "message": str(exc),
                 "traceback_tail": "".join(traceback.format_exc().splitlines(True)[-15:])}
    record["timing_s"]["total"] = round(time.perf_counter() - t0, 4)
    record["memory"] = _memory(session.device)
    record["provenance"] = {**environment(), **cluster_ids(), "started_at": started, "finished_at": utc_now()}
    result = RunResult(schema_version=SCHEMA_VERSION, run_id=cell.run_id, status=status, error=error, **record)
    write_result(cell.path, result)
    return result


def _bare_record(cell: PlannedCell, session: Session) -> dict:
    return {"spec": _spec_record(cell, session), "backbone": {"id": cell.spec.backbone}, "data": {},
            "config": asdict(cell.config), "tuning": {"mode": cell.spec.tune}, "metrics": {}, "timing_s": {},
            "memory": {}, "provenance": {}, "prompts": None, "diagnostics": {}}


def _spec_record(cell: PlannedCell, session: Session) -> dict:
    method = session.method(cell.spec.method)
    return {**cell.spec.to_json(), "method_version": method.version,
            "dataset_version": session.dataset_spec(cell.spec.dataset).version}


def _execute(cell: PlannedCell, session: Session) -> dict:
    spec, config = cell.spec, cell.config
    method = session.method(spec.method)
    dataset = session.dataset_spec(spec.dataset)
    splits = session.splits(spec.dataset)
    fewshot = load_or_create_fewshot(splits, dataset, spec.shots, spec.seed, session.options.cache_root)
    backbone = session.backbone(spec.backbone)
    timing: dict[str, float] = {}

    t = time.perf_counter()
    train_view = _train_view(method.needs(config).train_views)
    data = FewShotData(
        dataset=spec.dataset, shots=spec.shots, classnames=splits.classnames, prompts=dataset.prompts,
        train=_features(session, backbone, dataset, splits, "train", fewshot.train, train_view),
        val=_features(session, backbone, dataset, splits, "val", fewshot.val, CENTER),
    )
    timing["features"] = time.perf_counter() - t

    diagnostics: dict[str, Any] = {}
    ctx = FitContext(
        backbone=backbone, device=session.device, seed=derive_seed(spec.seed, spec.dataset, spec.shots, spec.method),
        text_features=lambda templates, classnames: session.cache.text_features(backbone, classnames, templates),
        record=diagnostics.__setitem__, progress=session.options.progress,
    )
    t = time.perf_counter()
    classifier = method.fit(data, config, ctx)
    timing["fit"] = time.perf_counter() - t

    t = time.perf_counter()
    test = _features(session, backbone, dataset, splits, "test", tuple(range(len(splits.test))), CENTER)
    timing["test_features"] = time.perf_counter() - t
    t = time.perf_counter()
    metrics = {**score(classifier, test, session), "val_top1": score(classifier, data.val, session)["top1"]}
    timing["eval"] = time.perf_counter() - t
    return {
        "spec": _spec_record(cell, session),
        "backbone": {"id": backbone.ref.id, "arch": backbone.ref.arch, "weights": backbone.ref.weights,
                     "identity": session.backbone_identity(spec.backbone), "weights_sha256": backbone.weights_sha256,
                     "precision": backbone.precision, "embed_dim": backbone.embed_dim,
                     "logit_scale": round(backbone.logit_scale, 6),
                     **({"checkpoint_meta": backbone.checkpoint_meta} if backbone.checkpoint_meta else {})},
        "data": _data_record(splits, fewshot, backbone, train_view, session.options.data_root),
        "prompts": _prompts_record(config, dataset),
        "config": _jsonable(asdict(config)),
        "tuning": {"mode": spec.tune},
        "metrics": metrics,
        "diagnostics": _jsonable(diagnostics),
        "timing_s": {k: round(v, 4) for k, v in timing.items()},
        "memory": {},
        "provenance": {},
    }


def _train_view(train_views: int) -> ViewSpec:
    return ViewSpec.augment(train_views) if train_views > 0 else CENTER


def _features(session: Session, backbone: Backbone, dataset: DatasetSpec, splits: DatasetSplits, split: str,
              indices: tuple[int, ...], view: ViewSpec) -> FeatureSet:
    images = splits.split(split).subset(indices)
    key = ImageFeatureKey(
        backbone=backbone.ref.id, weights_sha256=backbone.weights_sha256, precision=backbone.precision,
        dataset=dataset.name, dataset_version=dataset.version, split_sha256=splits.source_sha256, split=split,
        preprocessing=backbone.preprocessing, view=view,
    )
    options = session.options.extract
    features = session.cache.image_features(key, backbone, splits.image_root, images.paths, options)
    return FeatureSet(features, torch.tensor(images.labels, dtype=torch.int64))


@torch.no_grad()
def score(classifier, data: FeatureSet, session: Session) -> dict[str, float | None]:
    """top-1, top-5 (None with fewer than 5 classes) and mean per-class recall, as fractions."""
    if isinstance(classifier, torch.nn.Module):
        classifier.eval()
    chunks = []
    for start in range(0, data.features.shape[1], session.options.eval_batch_size):
        batch = data.center[start:start + session.options.eval_batch_size].to(session.device)
        chunks.append(classifier(batch).float().cpu())
    logits, labels = torch.cat(chunks), data.labels
    n_classes = logits.shape[1]
    correct = logits.argmax(1) == labels
    recall = torch.stack([correct[labels == c].double().mean() for c in labels.unique()])
    top5 = None
    if n_classes >= 5:
        top5 = float((logits.topk(5, dim=1).indices == labels[:, None]).any(1).double().mean())
    return {"top1": float(correct.double().mean()), "top5": top5, "mean_per_class_recall": float(recall.mean())}


def _data_record(splits: DatasetSplits, fewshot: FewShotIndices, backbone: Backbone, train_view: ViewSpec,
                 data_root: Path) -> dict:
    source = Path(splits.source)
    relative = source.relative_to(data_root) if source.is_relative_to(data_root) else source
    return {
        "split_file": str(relative), "split_file_sha256": splits.source_sha256,
        "split_protocol": fewshot.protocol, "fewshot_index_sha256": fewshot.sha256,
        "val_shots": min(fewshot.shots, VAL_SHOTS_CAP),
        "n_classes": len(splits.classnames), "n_train": len(fewshot.train), "n_val": len(fewshot.val), "n_test": len(splits.test),
        "preprocessing": asdict(backbone.preprocessing), "train_view": asdict(train_view),
    }


def _prompts_record(config: Any, dataset: DatasetSpec) -> dict | None:
    prompt_set = getattr(config, "prompts", None)
    if prompt_set is None:
        return None
    templates = list(dataset.templates(prompt_set))
    return {"set": prompt_set, "templates": templates, "sha256": sha256_json(templates)}


def _memory(device: torch.device) -> dict:
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"peak_device_bytes": peak, "peak_host_rss_bytes": peak_host_rss_bytes()}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, float) and obj != obj:  # NaN is not JSON
        return None
    return obj
