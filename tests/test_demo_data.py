"""bench demo's data: the Fashion-MNIST and digits sources and the target datasets in CoOp layout."""

import dataclasses
import gzip
import json

import numpy as np
import pytest
from PIL import Image

from bench.datasets import dataset_registry
from bench.datasets.demo_data import (
    FASHION_MNIST,
    FASHION_MNIST_FEWSHOT,
    FASHION_MNIST_FILES,
    load_source,
    pretraining_images,
    read_idx,
    target_lists,
    write_target,
)
from bench.datasets.splits import read_split_file
from bench.errors import BenchError

SMALL_FASHION = dataclasses.replace(FASHION_MNIST, per_class=(3, 2, 4), rare_images=2)


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_fashion_mnist(tmp_path, monkeypatch):
    """IDX files in Fashion-MNIST's layout: 10 train and 6 test images per class; pixel (0, 0) = index % 256,
    pixel (0, 1) = index // 256, so every written PNG can be traced back to its source image."""
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    for part, per_class in (("train", 10), ("t10k", 6)):
        labels = np.tile(np.arange(10), per_class)
        images = np.random.default_rng(0).integers(0, 256, (len(labels), 28, 28))
        images[:, 0, 0], images[:, 0, 1] = np.arange(len(labels)) % 256, np.arange(len(labels)) // 256
        _write_idx(folder / f"{part}-images-idx3-ubyte.gz", images)
        _write_idx(folder / f"{part}-labels-idx1-ubyte.gz", labels)
    monkeypatch.setenv("BENCH_FASHION_MNIST_DIR", str(folder))
    return folder


def test_idx_reader_reads_shape_and_refuses_other_files(tmp_path):
    array = np.arange(24).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", array)
    assert (read_idx(tmp_path / "a.gz") == array).all()
    with gzip.open(tmp_path / "b.gz", "wb") as fh:
        fh.write(b"PK\x03\x04 not idx")
    with pytest.raises(BenchError, match="not a gzipped IDX file"):
        read_idx(tmp_path / "b.gz")


def test_pretraining_sees_few_images_of_the_target_classes_and_none_of_the_targets_images(fake_fashion_mnist):
    source = load_source("fashion_mnist")
    chosen = pretraining_images(SMALL_FASHION, source)
    counts = np.bincount(source.train_labels[chosen], minlength=10)
    rare = list(SMALL_FASHION.target_classes)
    assert (counts[rare] == 2).all()  # rare_images per target class
    assert (np.delete(counts, rare) == 10).all()  # every train image of a common class
    target = {i for split in ("train", "val") for i, _ in target_lists(SMALL_FASHION, source)[split]}
    assert not target & set(chosen.tolist())  # no support or val image was seen in pretraining
    assert (pretraining_images(SMALL_FASHION, load_source("fashion_mnist")) == chosen).all()


def test_target_dataset_holds_the_rare_classes_in_coop_layout(tmp_path, fake_fashion_mnist):
    split_path = write_target(tmp_path / "a", SMALL_FASHION, "split.json")
    spec = dataclasses.replace(FASHION_MNIST_FEWSHOT, folder="a", split_file="split.json")
    splits = read_split_file(spec, tmp_path)
    assert splits.classnames == ("T-shirt/top", "Trouser", "Sandal", "Bag", "Pullover")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (15, 10, 20)
    source = load_source("fashion_mnist")
    for split, pixels, labels in (
        ("train", source.train_images, source.train_labels),
        ("test", source.test_images, source.test_labels),
    ):
        images = splits.split(split)
        for relpath, label in zip(images.paths, images.labels, strict=True):
            png = np.asarray(Image.open(splits.image_root / relpath))
            index = int(png[0, 0]) + 256 * int(png[0, 1])
            assert (png == pixels[index]).all()  # the real pixels, unchanged
            assert labels[index] == SMALL_FASHION.target_classes[label]  # a held-out class, relabelled 0..4
    assert not set(splits.train.paths) & set(splits.val.paths)
    content = json.loads(split_path.read_text())
    assert sorted(content["source"]["files"]) == sorted(FASHION_MNIST_FILES)
    # deterministic: a second machine writes the same split file (so the same split_file_sha256)
    assert write_target(tmp_path / "b", SMALL_FASHION, "split.json").read_bytes() == split_path.read_bytes()


def test_digits_source_is_a_disjoint_seeded_split():
    digits = load_source("digits")
    assert len(digits.train_labels) + len(digits.test_labels) == 1797
    assert (np.bincount(digits.test_labels) == 90).all()
    assert digits.train_images.shape[1:] == (8, 8) and digits.train_images.max() == 255
    again = load_source("digits")
    assert (again.test_images == digits.test_images).all()


def test_demo_datasets_are_registered_with_their_generators():
    registry = dataset_registry()
    for name in ("fashion_mnist_fewshot", "digits_fewshot"):
        spec = registry.get(name)
        assert spec.n_classes == 5 and spec.generator and "coop" in spec.prompts
