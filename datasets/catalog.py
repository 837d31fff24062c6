"""The built-in dataset specs, as data.

Issue-tracked work adds the eleven CoOp datasets here; each entry's prompt sets come
from CoOp's ``CUSTOM_TEMPLATES`` (single template) and published ensembles.
"""

from __future__ import annotations

from bench.datasets.spec import DatasetSpec

SYNTHETIC = DatasetSpec(
    name="synthetic",
    version="1",
    folder="synthetic",
    image_dir="images",
    split_file="split_zhou_Synthetic.json",
    prompts={
        "coop": ("a photo of a {}.",),
        "ensemble": ("a photo of a {}.", "a picture with {}.", "an image of {} pattern."),
    },
    generator="bench.datasets.synthetic:generate",
    n_classes=8,
)

SYNTHETIC_ALT = DatasetSpec(
    name="synthetic_alt",
    version="1",
    folder="synthetic_alt",
    image_dir="images",
    split_file="split_zhou_SyntheticAlt.json",
    prompts={
        "coop": ("a photo of {}.",),
        "ensemble": ("a photo of {}.", "a picture with {}.", "an image of {} pattern."),
    },
    generator="bench.datasets.synthetic:generate_alt",
    n_classes=6,
)
