"""The built-in dataset specs, as data.

Issue-tracked work adds the eleven CoOp datasets here; each entry's prompt sets come
from CoOp's ``CUSTOM_TEMPLATES`` (single template) and published ensembles.
"""

from __future__ import annotations

from bench.datasets.demo_data import CAPTION_TEMPLATES, DIGITS_SPLIT_FILE, FASHION_MNIST_SPLIT_FILE
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

# bench demo's targets (bench.datasets.demo_data): five classes of a real source that the demo CLIP
# was not pretrained on, generated from a Debian package or scikit-learn (no download).
FASHION_MNIST_FEWSHOT = DatasetSpec(
    name="fashion_mnist_fewshot",
    version="1",
    folder="fashion_mnist_fewshot",
    image_dir="images",
    split_file=FASHION_MNIST_SPLIT_FILE,
    prompts={"coop": ("a photo of a {}.",), "ensemble": CAPTION_TEMPLATES},
    generator="bench.datasets.demo_data:generate_fashion_mnist",
    n_classes=5,
)

DIGITS_FEWSHOT = DatasetSpec(
    name="digits_fewshot",
    version="1",
    folder="digits_fewshot",
    image_dir="images",
    split_file=DIGITS_SPLIT_FILE,
    prompts={"coop": ("a photo of a {}.",), "ensemble": CAPTION_TEMPLATES},
    generator="bench.datasets.demo_data:generate_digits",
    n_classes=5,
)
