"""Miniatures: each dataset's real layout with a few classes and tiny images.

A miniature has exactly the folders, file names and split-file format of the real dataset
(CoOp's ``split_zhou_*.json``, FGVCAircraft's txt lists, ImageNet's wnid folders and
``classnames.txt``, the shift sets' folders), so it goes through the same readers, checks,
sampling and feature extraction; only the class count and sizes differ. Those are written to
:data:`~bench.datasets.spec.MINIATURE_MARKER`, last, which the checks read instead of the
spec's numbers, and every result computed on a miniature is flagged ``miniature``.

The ImageNet miniature uses four real wnids chosen so that ImageNet-A covers three of them
and ImageNet-R two: the 200-class mapping is exercised as on the real data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from bench.datasets.readers import official_class_ids
from bench.datasets.spec import MINIATURE_MARKER, DatasetSpec
from bench.errors import BenchError
from bench.fileio import atomic_write_bytes, atomic_write_json
from bench.seeding import derive_seed

PER_CLASS = {"train": 4, "val": 2, "test": 2}
IMAGENET_PER_CLASS = {"train": 10, "test": 2}
SHIFT_PER_CLASS = 2
IMAGE_SIZE = (20, 16)  # width, height: not square, like real photos


@dataclass(frozen=True)
class SplitFileLayout:
    """Where a CoOp split-file dataset keeps its images.

    ``path`` is formatted with ``folder`` (the class's folder or key), ``plain`` (it without
    ``_``), ``n`` (a running image number) and ``source`` (``sources[split]``, default the split).
    ``classes`` are (folder, class name as the official split file writes it).
    """

    path: str
    classes: tuple[tuple[str, str], ...]
    sources: tuple[tuple[str, str], ...] = ()


SPLIT_FILE_LAYOUTS = {
    "caltech101": SplitFileLayout(
        "{folder}/image_{n:04d}.jpg",
        (("Faces", "face"), ("Leopards", "leopard"), ("accordion", "accordion"), ("airplanes", "airplane")),
    ),
    "oxford_pets": SplitFileLayout(
        "{folder}_{n}.jpg",
        (
            ("Abyssinian", "abyssinian"),
            ("american_bulldog", "american_bulldog"),
            ("Bengal", "bengal"),
            ("beagle", "beagle"),
        ),
    ),
    "stanford_cars": SplitFileLayout(
        "{source}/{n:05d}.jpg",
        (
            ("am", "2012 AM General Hummer SUV"),
            ("rl", "2012 Acura RL Sedan"),
            ("tl", "2012 Acura TL Sedan"),
            ("x5", "2007 BMW X5 SUV"),
        ),
        sources=(("train", "cars_train"), ("val", "cars_train"), ("test", "cars_test")),
    ),
    "oxford_flowers": SplitFileLayout(
        "image_{n:05d}.jpg",
        (
            ("1", "pink primrose"),
            ("2", "hard-leaved pocket orchid"),
            ("3", "canterbury bells"),
            ("4", "sweet pea"),
        ),
    ),
    "food101": SplitFileLayout(
        "{folder}/{n}.jpg",
        (
            ("apple_pie", "apple_pie"),
            ("baby_back_ribs", "baby_back_ribs"),
            ("baklava", "baklava"),
            ("beef_carpaccio", "beef_carpaccio"),
        ),
    ),
    "sun397": SplitFileLayout(
        "{folder}/sun_{n:05d}.jpg",
        (
            ("a/abbey", "abbey"),
            ("a/airplane_cabin", "airplane_cabin"),
            ("a/apartment_building/outdoor", "outdoor apartment_building"),
            ("b/bakery/shop", "shop bakery"),
        ),
    ),
    "dtd": SplitFileLayout(
        "{folder}/{folder}_{n:04d}.jpg",
        (("banded", "banded"), ("blotchy", "blotchy"), ("braided", "braided"), ("bubbly", "bubbly")),
    ),
    "eurosat": SplitFileLayout(
        "{folder}/{folder}_{n}.jpg",
        (
            ("AnnualCrop", "Annual Crop Land"),
            ("Forest", "Forest"),
            ("HerbaceousVegetation", "Herbaceous Vegetation Land"),
            ("SeaLake", "Sea or Lake"),
        ),
    ),
    "ucf101": SplitFileLayout(
        "{folder}/v_{plain}_g{n:02d}_c01.jpg",
        (
            ("Apply_Eye_Makeup", "Apply_Eye_Makeup"),
            ("Archery", "Archery"),
            ("Baby_Crawling", "Baby_Crawling"),
            ("Basketball", "Basketball"),
        ),
    ),
}
FGVC_VARIANTS = ("707-320", "727-200", "A300B4", "Cessna 172")


def miniature_wnids() -> tuple[str, ...]:
    """Four ImageNet wnids: two in both ImageNet-A and -R, one only in -A, one in neither."""
    official = official_class_ids("imagenet_synsets.txt")
    in_a, in_r = (
        set(official_class_ids("imagenet_a_synsets.txt")),
        set(official_class_ids("imagenet_r_synsets.txt")),
    )
    both = [w for w in official if w in in_a and w in in_r][:2]
    only_a = [w for w in official if w in in_a and w not in in_r][:1]
    neither = [w for w in official if w not in in_a and w not in in_r][:1]
    return tuple(sorted(both + only_a + neither))


def imagenet_classnames_txt() -> str:
    """CoOp's ``classnames.txt``: ``<wnid> <name>`` for the 1,000 classes, names from CLIP (as open_clip ships them)."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    ids = official_class_ids("imagenet_synsets.txt")
    return "".join(f"{wnid} {name}\n" for wnid, name in zip(ids, IMAGENET_CLASSNAMES, strict=True))


def _write_image(path: Path, label: int, seed: int) -> None:
    """A tiny JPEG whose colour depends on the label (so features carry a little class signal)."""
    rng = np.random.default_rng(seed)
    base = np.array(
        [(label * 67) % 256, (label * 131 + 80) % 256, (label * 29 + 160) % 256], dtype=np.float32
    )
    pixels = base + rng.normal(0, 25, size=(IMAGE_SIZE[1], IMAGE_SIZE[0], 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, format="JPEG", quality=90)


def _prepare_folder(spec: DatasetSpec, folder: Path) -> None:
    if (folder / MINIATURE_MARKER).is_file():
        return
    if folder.exists() and any(folder.iterdir()):
        raise BenchError(
            f"will not write a miniature of {spec.name!r} into a folder that holds other data",
            where=str(folder),
            fix="pass an empty --data-root for the miniatures",
        )


def _finish(spec: DatasetSpec, folder: Path, n_classes: int, sizes: tuple[int, int, int]) -> Path:
    marker = folder / MINIATURE_MARKER
    atomic_write_json(
        marker,
        {
            "dataset": spec.name,
            "n_classes": n_classes,
            "split_sizes": list(sizes),
            "note": "generated by bench.datasets.miniature: a miniature, not the real dataset",
        },
    )
    return marker


def generate_miniature(spec: DatasetSpec, data_root: Path) -> Path:
    """Write the miniature of ``spec`` under ``data_root`` (idempotent); returns its marker file."""
    folder = Path(data_root) / spec.folder
    if (folder / MINIATURE_MARKER).is_file():
        return folder / MINIATURE_MARKER
    _prepare_folder(spec, folder)
    if spec.name in SPLIT_FILE_LAYOUTS:
        return _split_file(spec, folder, SPLIT_FILE_LAYOUTS[spec.name])
    writers = {
        "read_fgvc_aircraft": _fgvc,
        "read_imagenet": _imagenet,
        "read_imagenet_v2": _shift,
        "read_wnid_folders": _shift,
    }
    writer = writers.get(spec.reader.rpartition(":")[2])
    if writer is None:
        raise BenchError(
            f"no miniature layout for dataset {spec.name!r}",
            where="bench data miniature",
            fix=f"choose among: {', '.join(sorted(SPLIT_FILE_LAYOUTS) + ['fgvc_aircraft', 'imagenet'])}",
        )
    return writer(spec, folder)


def _split_file(spec: DatasetSpec, folder: Path, layout: SplitFileLayout) -> Path:
    sources = dict(layout.sources)
    split: dict[str, list] = {name: [] for name in PER_CLASS}
    n = 0
    for name, count in PER_CLASS.items():
        for label, (key, classname) in enumerate(layout.classes):
            for _ in range(count):
                n += 1
                relpath = layout.path.format(
                    folder=key, plain=key.replace("_", ""), n=n, source=sources.get(name, name)
                )
                _write_image(folder / spec.image_dir / relpath, label, derive_seed(0, spec.name, relpath))
                split[name].append([relpath, label, classname])
    atomic_write_bytes(folder / spec.split_file, json.dumps(split, indent=4).encode())
    k = len(layout.classes)
    return _finish(spec, folder, k, (k * PER_CLASS["train"], k * PER_CLASS["val"], k * PER_CLASS["test"]))


def _fgvc(spec: DatasetSpec, folder: Path) -> Path:
    atomic_write_bytes(folder / spec.split_file, "".join(f"{v}\n" for v in FGVC_VARIANTS).encode())
    image_id = 1000000
    for name, count in PER_CLASS.items():
        lines = []
        for label, variant in enumerate(FGVC_VARIANTS):
            for _ in range(count):
                image_id += 1
                _write_image(
                    folder / spec.image_dir / f"{image_id}.jpg", label, derive_seed(0, spec.name, image_id)
                )
                lines.append(f"{image_id} {variant}\n")
        atomic_write_bytes(folder / f"images_variant_{name}.txt", "".join(lines).encode())
    k = len(FGVC_VARIANTS)
    return _finish(spec, folder, k, (k * PER_CLASS["train"], k * PER_CLASS["val"], k * PER_CLASS["test"]))


def _imagenet(spec: DatasetSpec, folder: Path) -> Path:
    wnids = miniature_wnids()
    for split, count in IMAGENET_PER_CLASS.items():
        subdir = "train" if split == "train" else "val"
        for label, wnid in enumerate(wnids):
            for i in range(count):
                name = (
                    f"{wnid}_{i + 1}.JPEG"
                    if split == "train"
                    else f"ILSVRC2012_val_{label * count + i + 1:08d}.JPEG"
                )
                _write_image(
                    folder / spec.image_dir / subdir / wnid / name,
                    label,
                    derive_seed(0, spec.name, split, wnid, i),
                )
    atomic_write_bytes(folder / spec.split_file, imagenet_classnames_txt().encode())
    k = len(wnids)
    return _finish(spec, folder, k, (k * IMAGENET_PER_CLASS["train"], 0, k * IMAGENET_PER_CLASS["test"]))


def _shift(spec: DatasetSpec, folder: Path) -> Path:
    official = official_class_ids("imagenet_synsets.txt")
    allowed = set(official_class_ids(spec.class_id_list or "imagenet_synsets.txt"))
    wnids = [w for w in miniature_wnids() if w in allowed]
    by_label = spec.reader.endswith("read_imagenet_v2")  # V2 names class folders by ImageNet label
    for wnid in wnids:
        class_folder = str(official.index(wnid)) if by_label else wnid
        for i in range(SHIFT_PER_CLASS):
            path = folder / spec.image_dir / class_folder / f"{i + 1}.jpg"
            _write_image(path, miniature_wnids().index(wnid), derive_seed(0, spec.name, wnid, i))
    atomic_write_bytes(folder / spec.split_file, imagenet_classnames_txt().encode())
    return _finish(spec, folder, len(wnids), (0, 0, len(wnids) * SHIFT_PER_CLASS))
