"""Dataset specs and readers, installed as ``bench.datasets``.

Datasets are found by name through :func:`dataset_registry`: built-ins below, third
parties through the ``bench.datasets`` entry-point group (each entry point names a
:class:`~bench.datasets.spec.DatasetSpec` object).
"""

from __future__ import annotations

from functools import cache

from bench.registry import Registry

BUILTIN: dict[str, str] = {
    "synthetic": "bench.datasets.catalog:SYNTHETIC",
    "synthetic_alt": "bench.datasets.catalog:SYNTHETIC_ALT",
    "fashion_mnist_fewshot": "bench.datasets.catalog:FASHION_MNIST_FEWSHOT",
    "digits_fewshot": "bench.datasets.catalog:DIGITS_FEWSHOT",
}


@cache
def dataset_registry() -> Registry:
    """The read-only registry of dataset specs (built once per process)."""
    return Registry("dataset", BUILTIN, group="bench.datasets")
