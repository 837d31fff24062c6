"""Real labeled images that need no download, for ``bench demo``: Fashion-MNIST or sklearn digits.

A *source* is ten labeled classes of small grayscale images with a train and a test part:

- ``fashion_mnist``: Debian's ``dataset-fashion-mnist`` (70,000 28×28 product photos, Zalando,
  MIT), read from ``/usr/share/datasets/fashion-mnist`` or ``$BENCH_FASHION_MNIST_DIR``.
- ``digits``: scikit-learn's ``load_digits`` (1,797 8×8 handwritten digits, UCI), the fallback
  where the Debian package is absent; its train/test parts are a seeded per-class split.

Each source's classes are cut in two halves, the way a web-scale CLIP knows some concepts well and
others barely: the demo CLIP (:mod:`bench.tools.demo_clip`) is pretrained on captioned train images of all
ten classes, but of five *rare* classes it sees only ``rare_images`` images each. The few-shot
*target* dataset is the five rare classes, drawn from images the pretraining never saw (test from the
source's test part, train and val from train images held out of pretraining). Its zero-shot accuracy
is thus weak but well above chance, and few-shot methods have something to learn. It is written in
CoOp's layout::

    <dataset_dir>/images/<class folder>/<split>_<i>.png
    <dataset_dir>/split_zhou_<Name>.json   {"train", "val", "test", "source"}

``source`` (ignored by the split reader) names the source files and their sha256, so the split
file's sha256, recorded in every result, pins the pixels as well as the lists.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from bench.datasets.spec import DatasetSpec
from bench.errors import BenchError
from bench.fileio import atomic_write_bytes, sha256_file
from bench.seeding import derive_seed, numpy_generator

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
DATA_SEED = 0
FASHION_MNIST_SPLIT_FILE = "split_zhou_FashionMNISTFewShot.json"
DIGITS_SPLIT_FILE = "split_zhou_DigitsFewShot.json"
# Captions of the demo CLIP's pretraining, and the target's "ensemble" prompt set.
CAPTION_TEMPLATES = (
    "a photo of a {}.",
    "a black and white photo of a {}.",
    "a low resolution photo of a {}.",
    "a photo of the {}.",
    "a grayscale photo of a {}.",
    "a close-up photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
)


@dataclass(frozen=True)
class DemoSource:
    """A ten-class image source and how the demo cuts it.

    Attributes:
        name: ``"fashion_mnist"`` or ``"digits"``.
        classnames: the ten class names, index = the source's label.
        target_classes: source labels of the rare classes, which make the few-shot target dataset.
        rare_images: pretraining images per rare class (every other class gives all its train images).
        per_class: target images per class in the written train / val / test lists.
        pretrain_steps: optimiser steps of the demo CLIP's default recipe.
    """

    name: str
    classnames: tuple[str, ...]
    target_classes: tuple[int, ...]
    rare_images: int
    per_class: tuple[int, int, int]
    pretrain_steps: int


FASHION_MNIST = DemoSource(
    name="fashion_mnist",
    classnames=(
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    # one class from each visual group (tops, trousers, sandals, bags) plus the pullover: rare classes of
    # one group (pullover, coat, shirt) end up with near-identical text embeddings (cosine 0.99), which no
    # method built on the text classifier can pull apart.
    target_classes=(0, 1, 5, 8, 2),
    rare_images=10,
    per_class=(200, 50, 200),
    pretrain_steps=600,
)
DIGITS = DemoSource(
    name="digits",
    classnames=("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
    target_classes=(5, 6, 7, 8, 9),
    rare_images=3,
    per_class=(60, 20, 90),
    pretrain_steps=300,
)
SOURCES = {s.name: s for s in (FASHION_MNIST, DIGITS)}


@dataclass(frozen=True)
class SourceImages:
    """A source's images as arrays: ``*_images`` (N, H, W) uint8, ``*_labels`` (N,) int64 source labels.

    ``files``: :func:`source_files`.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    files: dict[str, str]


def fashion_mnist_dir() -> Path:
    return Path(os.environ.get("BENCH_FASHION_MNIST_DIR", FASHION_MNIST_DIR))


def fashion_mnist_available() -> bool:
    return all((fashion_mnist_dir() / f).is_file() for f in FASHION_MNIST_FILES)


def source_files(name: str) -> dict[str, str]:
    """The files a source's pixels come from -> their sha256 (scikit-learn's data file for digits)."""
    if name == "fashion_mnist":
        folder = fashion_mnist_dir()
        _check_fashion_mnist(folder)
        return {f: _sha256(folder / f) for f in FASHION_MNIST_FILES}
    path = Path(_import_sklearn().__file__).parent / "datasets" / "data" / "digits.csv.gz"
    return {path.name: _sha256(path) if path.is_file() else "?"}


def _sha256(path: Path) -> str:
    stat = path.stat()
    return _sha256_memo(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=16)
def _sha256_memo(path: str, size: int, mtime_ns: int) -> str:
    # Size and mtime are part of the memo key so a replaced file is hashed again.
    return sha256_file(Path(path))


def load_source(name: str) -> SourceImages:
    """Read a source's images.

    Raises:
        BenchError: the Debian package or scikit-learn is missing, or a file is not in IDX format.
    """
    if name == "fashion_mnist":
        return _load_fashion_mnist(fashion_mnist_dir())
    if name == "digits":
        return _load_digits()
    raise BenchError(
        f"unknown demo source {name!r}", where="--source", fix=f"use one of: {', '.join(SOURCES)}"
    )


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped, unsigned bytes) -> uint8 array of the shape in its header."""
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise BenchError(
            "not a gzipped IDX file of unsigned bytes",
            where=str(path),
            fix="reinstall the Debian package dataset-fashion-mnist",
        )
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()


def _check_fashion_mnist(folder: Path) -> None:
    missing = [f for f in FASHION_MNIST_FILES if not (folder / f).is_file()]
    if missing:
        raise BenchError(
            f"Fashion-MNIST file {missing[0]} not found",
            where=str(folder),
            fix="apt-get install dataset-fashion-mnist (Debian), set BENCH_FASHION_MNIST_DIR, "
            "or use --source digits",
        )


def _load_fashion_mnist(folder: Path) -> SourceImages:
    files = source_files("fashion_mnist")
    arrays = [read_idx(folder / f) for f in FASHION_MNIST_FILES]
    return SourceImages(arrays[0], arrays[1].astype(np.int64), arrays[2], arrays[3].astype(np.int64), files)


def _import_sklearn():
    try:
        import sklearn.datasets
    except ImportError as exc:
        raise BenchError(
            "scikit-learn is not installed",
            where="--source digits",
            fix="pip install 'clip-fewshot-bench[demo]', or install Debian's dataset-fashion-mnist",
        ) from exc
    return sklearn


def _load_digits() -> SourceImages:
    digits = _import_sklearn().datasets.load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 grey levels -> 0..255
    labels = digits.target.astype(np.int64)
    rng = numpy_generator(derive_seed(DATA_SEED, "digits", "test"))
    test = np.zeros(len(labels), dtype=bool)
    for label in range(10):  # the last 90 of a seeded order per class are test (the target's test size)
        test[rng.permutation(np.flatnonzero(labels == label))[-DIGITS.per_class[2] :]] = True
    return SourceImages(images[~test], labels[~test], images[test], labels[test], source_files("digits"))


def class_folder(classname: str) -> str:
    """``"T-shirt/top"`` -> ``"t_shirt_top"``: a folder name for a class."""
    return re.sub(r"[^a-z0-9]+", "_", classname.lower()).strip("_")


def target_lists(source: DemoSource, images: SourceImages) -> dict[str, list[tuple[int, int]]]:
    """Which source images make the target's train / val / test lists: split -> [(part index, target label)].

    Train and val are drawn without overlap from the source's train part, test from its test part,
    per class in a seeded order.
    """
    n_train, n_val, n_test = source.per_class
    lists: dict[str, list[tuple[int, int]]] = {"train": [], "val": [], "test": []}
    for target_label, label in enumerate(source.target_classes):
        rng = numpy_generator(derive_seed(DATA_SEED, source.name, label))
        pool = rng.permutation(np.flatnonzero(images.train_labels == label))
        tests = rng.permutation(np.flatnonzero(images.test_labels == label))
        if len(pool) < n_train + n_val or len(tests) < n_test:
            raise BenchError(
                f"class {source.classnames[label]!r} has too few images",
                where=source.name,
                fix="use the full source data",
            )
        lists["train"] += [(int(i), target_label) for i in pool[:n_train]]
        lists["val"] += [(int(i), target_label) for i in pool[n_train : n_train + n_val]]
        lists["test"] += [(int(i), target_label) for i in tests[:n_test]]
    return lists


def pretraining_images(source: DemoSource, images: SourceImages) -> np.ndarray:
    """Indices into the source's train part that the demo CLIP is pretrained on, sorted.

    Every train image of a common class; ``rare_images`` per rare class, from those the target's
    train and val lists do not use.
    """
    lists = target_lists(source, images)
    held_out = {index for split in ("train", "val") for index, _ in lists[split]}
    chosen = []
    for label in range(len(source.classnames)):
        indices = [int(i) for i in np.flatnonzero(images.train_labels == label) if int(i) not in held_out]
        if label in source.target_classes:
            rng = numpy_generator(derive_seed(DATA_SEED, source.name, label, "rare"))
            indices = [indices[i] for i in rng.permutation(len(indices))[: source.rare_images]]
        chosen += indices
    return np.array(sorted(chosen), dtype=np.int64)


def write_target(dataset_dir: Path, source: DemoSource, split_file: str) -> Path:
    """Write the target dataset of ``source`` in CoOp layout under ``dataset_dir`` (idempotent).

    Returns the split file's path; it is written last, atomically, so its presence marks a complete dataset.
    """
    dataset_dir = Path(dataset_dir)
    split_path = dataset_dir / split_file
    if split_path.is_file():
        return split_path
    images = load_source(source.name)
    split: dict[str, object] = {}
    for split_name, entries in target_lists(source, images).items():
        pixels = images.test_images if split_name == "test" else images.train_images
        rows = []
        for i, (index, target_label) in enumerate(entries):
            classname = source.classnames[source.target_classes[target_label]]
            relpath = f"{class_folder(classname)}/{split_name}_{i:04d}.png"
            target = dataset_dir / "images" / relpath
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[index]).save(target)
            rows.append([relpath, target_label, classname])
        split[split_name] = rows
    split["source"] = {
        "name": source.name,
        "files": images.files,
        "rare_images_in_pretraining": source.rare_images,
    }
    atomic_write_bytes(split_path, json.dumps(split, indent=1).encode())
    return split_path


def generate_fashion_mnist(dataset_dir: Path) -> Path:
    """Generator of ``fashion_mnist_fewshot``: the five Fashion-MNIST classes that are rare in pretraining."""
    return write_target(dataset_dir, FASHION_MNIST, FASHION_MNIST_SPLIT_FILE)


def generate_digits(dataset_dir: Path) -> Path:
    """Generator of ``digits_fewshot``: the digits 5-9, rare in the fallback demo CLIP's pretraining."""
    return write_target(dataset_dir, DIGITS, DIGITS_SPLIT_FILE)


# bench demo's targets, registered from here (not from the catalog of real datasets): five classes of a real source that the demo CLIP
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
