"""The sections of a result record that describe what produced the number (see :mod:`bench.results`).

Pure functions of the objects a cell used: the backbone, the data and its few-shot subset, the
prompt set, the device's peak memory; plus :func:`jsonable` for method diagnostics.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from bench.backbone import Backbone
from bench.datasets.spec import DatasetSpec, DatasetSplits
from bench.datasets.splits import FewShotIndices, val_shots
from bench.fileio import sha256_json
from bench.images import ViewSpec
from bench.methods.base import FewShotData
from bench.provenance import peak_host_rss_bytes


def backbone_record(backbone: Backbone, identity: str) -> dict:
    import open_clip

    record = {
        "id": backbone.ref.id,
        "arch": backbone.ref.arch,
        "weights": backbone.ref.weights,
        "identity": identity,
        "weights_sha256": backbone.weights_sha256,
        "precision": backbone.precision,
        **backbone.build,
        "open_clip": open_clip.__version__,
        "embed_dim": backbone.embed_dim,
        "logit_scale": round(backbone.logit_scale, 6),
    }
    if backbone.checkpoint_meta:  # how a checkpoint was made (the demo's pretraining recipe)
        record["checkpoint_meta"] = backbone.checkpoint_meta
    return record


def data_record(
    splits: DatasetSplits,
    fewshot: FewShotIndices,
    data: FewShotData,
    backbone: Backbone,
    train_view: ViewSpec,
    data_root: Path,
) -> dict:
    return {
        "split_file": relative(splits.source, data_root),
        "split_file_sha256": splits.source_sha256,
        "split_protocol": fewshot.protocol,
        "fewshot_index_sha256": fewshot.sha256,
        "val_shots": val_shots(fewshot.shots, data.val.labels.tolist()),  # None: whole val split (n_val)
        "miniature": splits.miniature,
        "n_classes": data.n_classes,
        "n_train": int(data.train.labels.numel()),
        "n_val": int(data.val.labels.numel()),
        "n_test": len(splits.test),
        "preprocessing": asdict(backbone.preprocessing),
        "train_view": asdict(train_view),
    }


def relative(path: Path, root: Path) -> str:
    path = Path(path)
    return str(path.relative_to(root) if path.is_relative_to(root) else path)


def prompts_record(config: Any, dataset: DatasetSpec) -> dict | None:
    prompt_set = getattr(config, "prompts", None)
    if prompt_set is None:
        return None
    templates = list(dataset.templates(prompt_set))
    return {"set": prompt_set, "templates": templates, "sha256": sha256_json(templates)}


def peak_memory(device: torch.device) -> dict:
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"peak_device_bytes": peak, "peak_host_rss_bytes": peak_host_rss_bytes()}


def jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, float) and obj != obj:  # NaN is not JSON
        return None
    return obj
