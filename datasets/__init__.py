"""Dataset specs and readers, installed as ``bench.datasets``.

Datasets are found by name through :func:`dataset_registry`: built-ins below, third
parties through the ``bench.datasets`` entry-point group (each entry point names a
:class:`~bench.datasets.spec.DatasetSpec` object).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from bench.registry import Registry, import_target

if TYPE_CHECKING:
    from bench.datasets.spec import DatasetSpec, DatasetSplits

BUILTIN: dict[str, str] = {
    "synthetic": "bench.datasets.catalog:SYNTHETIC",
    "synthetic_alt": "bench.datasets.catalog:SYNTHETIC_ALT",
    "imagenet": "bench.datasets.catalog:IMAGENET",
    "caltech101": "bench.datasets.catalog:CALTECH101",
    "oxford_pets": "bench.datasets.catalog:OXFORD_PETS",
    "stanford_cars": "bench.datasets.catalog:STANFORD_CARS",
    "oxford_flowers": "bench.datasets.catalog:OXFORD_FLOWERS",
    "food101": "bench.datasets.catalog:FOOD101",
    "fgvc_aircraft": "bench.datasets.catalog:FGVC_AIRCRAFT",
    "sun397": "bench.datasets.catalog:SUN397",
    "dtd": "bench.datasets.catalog:DTD",
    "eurosat": "bench.datasets.catalog:EUROSAT",
    "ucf101": "bench.datasets.catalog:UCF101",
    # distribution-shift sets: test-only, scored with classifiers trained on imagenet (bench run --shift)
    "imagenet_v2": "bench.datasets.catalog:IMAGENET_V2",
    "imagenet_sketch": "bench.datasets.catalog:IMAGENET_SKETCH",
    "imagenet_a": "bench.datasets.catalog:IMAGENET_A",
    "imagenet_r": "bench.datasets.catalog:IMAGENET_R",
    # the demo's real images (bench demo)
    "fashion_mnist_fewshot": "bench.datasets.demo_data:FASHION_MNIST_FEWSHOT",
    "digits_fewshot": "bench.datasets.demo_data:DIGITS_FEWSHOT",
}


@cache
def dataset_registry() -> Registry:
    """The read-only registry of dataset specs (built once per process)."""
    return Registry("dataset", BUILTIN, group="bench.datasets")


def read_dataset(spec: DatasetSpec, data_root: Path, *, strict: bool = True) -> DatasetSplits:
    """Image lists of ``spec`` under ``data_root`` via its reader (CoOp split file by default).

    ``strict=False`` reads without comparing against the official data (sha256, class count,
    sizes, listed files present), for ``bench data check`` to report every difference.
    """
    from bench.datasets.readers import check_paths_confined

    if spec.reader == "split_file":
        from bench.datasets.splits import read_split_file

        splits = read_split_file(spec, data_root, strict=strict)
    else:
        reader = import_target(spec.reader)
        splits = reader(spec, data_root) if strict else reader(spec, data_root, strict=False)
    check_paths_confined(splits)  # every reader, third parties' too: no image is read from outside its folder
    return splits
