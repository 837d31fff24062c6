"""Shared fixtures: a generated CoOp-layout dataset, the tiny random-init backbone, run options."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # an accidental pretrained tag fails fast instead of downloading

from pathlib import Path

import pytest
import torch

from bench.backbone import BackboneRef, load_backbone
from bench.datasets.catalog import SYNTHETIC
from bench.datasets.synthetic import generate
from bench.features import ExtractOptions
from bench.runner import RunOptions

TINY = "bench-tiny/random"


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A data root holding the synthetic dataset (generated once per session; treat as read-only)."""
    root = tmp_path_factory.mktemp("data")
    generate(root / SYNTHETIC.folder)
    return root


@pytest.fixture(scope="session")
def miniature_root(tmp_path_factory) -> Path:
    """A data root with a miniature of every real dataset and shift set (generated once; treat as read-only)."""
    from bench.datasets import dataset_registry
    from bench.datasets.miniature import generate_miniature

    root = tmp_path_factory.mktemp("miniatures")
    registry = dataset_registry()
    for name in registry.names():
        if not registry.get(name).generator:
            generate_miniature(registry.get(name), root)
    return root


@pytest.fixture(scope="session")
def tiny_backbone():
    return load_backbone(BackboneRef.parse(TINY), torch.device("cpu"))


@pytest.fixture
def run_options(tmp_path, data_root) -> RunOptions:
    return RunOptions(
        data_root=data_root,
        cache_root=tmp_path / "cache",
        results_root=tmp_path / "results",
        device="cpu",
        extract=ExtractOptions(batch_size=64, num_workers=0, progress=False),
        progress=False,
    )
