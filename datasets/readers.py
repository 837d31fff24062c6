"""Readers for the datasets CoOp does not describe with a split JSON, and the checks all readers share.

- FGVCAircraft: ``variants.txt`` (class list) and ``images_variant_{train,val,test}.txt``
  (``<image id> <variant name>`` per line), as CoOp's ``datasets/fgvc_aircraft.py``.
- ImageNet: ``classnames.txt`` (``<wnid> <CLIP class name>`` per line) plus
  ``images/train/<wnid>/`` and ``images/val/<wnid>/``; labels follow the sorted wnid folders;
  the val folder is the test split (CoOp) and the few-shot val is drawn from train.
- ImageNet-V2: ``<image dir>/<ImageNet label>/`` folders; -Sketch, -A, -R: ``<image dir>/<wnid>/``.
  Every shift set keeps the wnid of each class (``class_ids``) so a classifier trained on
  ImageNet can be scored on it, and -A/-R's 200 classes map onto ImageNet's labels.

Image files are listed in sorted order (Dassl lists folders with ``os.listdir``, whose order
depends on the file system), and the listing's sha256 identifies the data in results.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterable
from functools import cache
from importlib import resources
from pathlib import Path

from bench.datasets.spec import DatasetSpec, DatasetSplits, Expectations, LabeledImages, expectations
from bench.errors import BenchError
from bench.fileio import sha256_file, sha256_json

EMPTY = LabeledImages((), ())


@cache
def official_class_ids(list_name: str) -> tuple[str, ...]:
    """The class ids of a packaged list (``imagenet_synsets.txt``: ImageNet's 1,000 wnids in label order)."""
    text = (resources.files("bench.datasets") / "data" / list_name).read_text()
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def clean_classnames(spec: DatasetSpec, names: Iterable[str]) -> tuple[str, ...]:
    """CoOp's clean-ups: the spec's renames, then ``"_"`` -> ``" "`` (CoOp does it before prompting)."""
    return tuple(spec.classname_fixes.get(name, name).replace("_", " ") for name in names)


def require_file(path: Path, spec: DatasetSpec, what: str) -> Path:
    if not path.is_file():
        raise BenchError(
            f"{what} of dataset {spec.name!r} not found",
            where=str(path),
            fix=f"put the dataset under {path.parent} (see `bench data prepare {spec.name}`) "
            "or pass --data-root",
        )
    return path


def split_sizes(spec: DatasetSpec, splits: DatasetSplits) -> tuple[int, int, int]:
    """(train, val, test) image counts; val is 0 where the few-shot val comes from train (ImageNet)."""
    return len(splits.train), len(splits.val) if spec.val_source == "split" else 0, len(splits.test)


def count_problems(spec: DatasetSpec, expected: Expectations, splits: DatasetSplits) -> list[BenchError]:
    """Empty splits, classes without training images, and a class count or (train, val, test) sizes that
    differ from the official data's."""
    problems = []
    n = len(splits.classnames)
    needed = (
        ("test",)
        if spec.test_only
        else ("train", "test")
        if spec.val_source != "split"
        else ("train", "val", "test")
    )
    for name in needed:
        if not len(splits.split(name)):
            problems.append(
                BenchError(
                    f"the {name} split is empty",
                    where=str(splits.source),
                    fix=f"list the {name} images in the split file",
                )
            )
    if not spec.test_only and len(splits.train):
        absent = sorted(set(range(n)) - set(splits.train.labels))
        if absent:
            problems.append(
                BenchError(
                    f"{len(absent)} class(es) have no training image, first: {splits.classnames[absent[0]]!r} "
                    f"(label {absent[0]})",
                    where=str(splits.source),
                    fix="every class needs training images for few-shot",
                )
            )
    if expected.n_classes is not None and n != expected.n_classes:
        subset = n < expected.n_classes and spec.subset_of is None and not expected.miniature
        problems.append(
            BenchError(
                f"{n} classes, expected {expected.n_classes} for {spec.name!r}",
                where=str(splits.source),
                fix="use the official split file and images of this dataset"
                + (
                    f", or declare the subset: a spec file with name, subset_of: {spec.name} and split_file, passed "
                    "with --plugins (docs/extending.md)"
                    if subset
                    else ""
                ),
            )
        )
    written = tuple(splits.raw_classnames or splits.classnames)  # as the split file writes them
    if spec.classnames is not None and tuple(spec.classnames) not in (written, tuple(splits.classnames)):
        first = next(
            (i for i, (a, b) in enumerate(zip(written, spec.classnames, strict=False)) if a != b),
            min(len(written), len(spec.classnames)),
        )
        found = written[first] if first < len(written) else "nothing"
        declared = spec.classnames[first] if first < len(spec.classnames) else "nothing"
        problems.append(
            BenchError(
                f"label {first} is {found!r} in the split file but {declared!r} in the spec's classnames",
                where=str(splits.source),
                fix="list the class names in label order, as the split file has them",
            )
        )
    sizes = split_sizes(spec, splits)
    if expected.split_sizes is not None and sizes != tuple(expected.split_sizes):
        problems.append(
            BenchError(
                f"{'/'.join(map(str, sizes))} train/val/test images, expected "
                f"{'/'.join(map(str, expected.split_sizes))} (CoOp's split of {spec.name!r})",
                where=str(splits.source),
                fix="use the official split file and the complete image set; results on another split are "
                "not comparable to the papers",
            )
        )
    return problems + overlap_problems(splits)


def overlap_problems(splits: DatasetSplits) -> list[BenchError]:
    """An image listed twice in one split, or in the test split and in train or val (test images would
    leak into the fit or its tuning)."""
    problems = []
    seen: dict[str, str] = {}
    for name in ("train", "val", "test"):
        paths = splits.split(name).paths
        repeated = next((p for p, n in Counter(paths).items() if n > 1), None)
        if repeated is not None:
            problems.append(
                BenchError(
                    f"{repeated!r} is listed more than once in {name}",
                    where=str(splits.source),
                    fix=f"list each {name} image once",
                )
            )
        if name == "test":
            shared = next((p for p in dict.fromkeys(paths) if p in seen), None)
            if shared is not None:
                problems.append(
                    BenchError(
                        f"{shared!r} is in both {seen[shared]} and test",
                        where=str(splits.source),
                        fix="the test split must not share images with train or val",
                    )
                )
        else:
            seen.update(dict.fromkeys(paths, name))
    return problems


def check_paths_confined(splits: DatasetSplits) -> None:
    """Every listed image path stays under the image folder: no absolute path, no ``..`` part.

    Checked on the text (symbolic links inside the data folder, like ImageNet's, are the user's own).
    """
    for name in ("train", "val", "test"):
        for index, path in enumerate(splits.split(name).paths):
            parts = path.replace("\\", "/").split("/")
            if path.startswith(("/", "\\")) or ".." in parts or Path(path).is_absolute():
                raise BenchError(
                    f"image path {path!r} leaves the image folder",
                    where=f"{splits.source}: {name}[{index}]",
                    fix=f"list images by their path relative to {splits.image_root}",
                )


def check_counts(spec: DatasetSpec, expected: Expectations, splits: DatasetSplits) -> None:
    """Raise the first of :func:`count_problems`, if any."""
    problems = count_problems(spec, expected, splits)
    if problems:
        raise problems[0]


def check_images_exist(splits: DatasetSplits) -> None:
    """Raise a :class:`BenchError` naming the first missing image of each split, if any."""
    for name in ("train", "val", "test"):
        images = splits.split(name)
        missing = [p for p in images.paths if not (splits.image_root / p).is_file()]
        if missing:
            raise BenchError(
                f"{len(missing)} of {len(images)} {name} images listed in the split file do not exist, "
                f"first: {splits.image_root / missing[0]}",
                where=f"{splits.source}: {name}",
                fix=f"check that the images are extracted under {splits.image_root} as the split file expects",
            )


def check_class_ids(spec: DatasetSpec, expected: Expectations, ids: tuple[str, ...], where: Path) -> None:
    """Folder class ids must be the official list (a subset of it, in a miniature)."""
    official = official_class_ids(spec.class_id_list) if spec.class_id_list else None
    if official is None:
        return
    unknown = sorted(set(ids) - set(official))
    missing = [] if expected.miniature else sorted(set(official) - set(ids))
    if unknown or missing:
        problem = (
            f"unknown class folders {unknown[:3]}" if unknown else f"missing class folders {missing[:3]}"
        )
        raise BenchError(
            f"{problem} ({len(unknown) or len(missing)} in all; {len(ids)} found)",
            where=str(where),
            fix=f"the folder must hold one sub-folder per class of {spec.name!r}, named by wnid",
        )


def read_classnames_txt(path: Path, spec: DatasetSpec) -> dict[str, str]:
    """CoOp's ``classnames.txt``: ``<wnid> <class name>`` per line -> {wnid: name}."""
    names = {}
    for number, line in enumerate(require_file(path, spec, "class list").read_text().splitlines(), 1):
        wnid, _, name = line.strip().partition(" ")
        if not wnid:
            continue
        if not name:
            raise BenchError(
                f"line {number} has no class name",
                where=str(path),
                fix="each line is '<wnid> <class name>'; `bench data prepare` writes a correct file",
            )
        names[wnid] = name
    return names


def list_files(folder: Path) -> list[str]:
    """Names of the non-hidden files in ``folder``, sorted."""
    return sorted(e.name for e in os.scandir(folder) if not e.name.startswith(".") and e.is_file())


def class_folders(root: Path, spec: DatasetSpec) -> list[str]:
    if not root.is_dir():
        raise BenchError(
            f"image folder of dataset {spec.name!r} not found",
            where=str(root),
            fix=f"see `bench data prepare {spec.name}` for the expected layout",
        )
    return sorted(e.name for e in os.scandir(root) if not e.name.startswith(".") and e.is_dir())


def list_class_images(root: Path, folders: list[str], prefix: str = "") -> LabeledImages:
    """Every file of ``root/<folder>/`` with label = the folder's position; paths ``prefix + folder/name``."""
    paths, labels = [], []
    for label, name in enumerate(folders):
        files = list_files(root / name)
        paths.extend(f"{prefix}{name}/{f}" for f in files)
        labels.extend([label] * len(files))
    return LabeledImages(tuple(paths), tuple(labels))


def listing_sha256(class_ids: Iterable[str], lists: Iterable[LabeledImages]) -> str:
    """sha256 of a folder dataset's listing (class ids, then every split's paths and labels)."""
    digest = hashlib.sha256()
    digest.update("\n".join(class_ids).encode())
    for images in lists:
        digest.update(b"\x00")
        for path, label in zip(images.paths, images.labels, strict=True):
            digest.update(f"{path}\t{label}\n".encode())
    return digest.hexdigest()


def _names_for(ids: list[str], names: dict[str, str], path: Path) -> list[str]:
    missing = [i for i in ids if i not in names]
    if missing:
        raise BenchError(
            f"no class name for {len(missing)} class folder(s), first {missing[0]!r}",
            where=str(path),
            fix="use the full classnames.txt (`bench data prepare` writes it)",
        )
    return [names[i] for i in ids]


def read_imagenet(spec: DatasetSpec, data_root: Path, *, strict: bool = True) -> DatasetSplits:
    """ImageNet in CoOp's layout; val (50,000 images) is the test split, the few-shot val comes from train."""
    folder = Path(data_root) / spec.folder
    names = read_classnames_txt(folder / spec.split_file, spec)
    expected = expectations(spec, folder)
    image_root = folder / spec.image_dir
    wnids = class_folders(image_root / "train", spec)
    check_class_ids(spec, expected, tuple(wnids), image_root / "train")
    test_wnids = class_folders(image_root / "val", spec)
    if test_wnids != wnids:
        raise BenchError(
            f"val has {len(test_wnids)} class folders, train has {len(wnids)}",
            where=str(image_root / "val"),
            fix="sort the 50,000 validation images into the same wnid folders as train",
        )
    train = list_class_images(image_root / "train", wnids, prefix="train/")
    test = list_class_images(image_root / "val", wnids, prefix="val/")
    splits = DatasetSplits(
        image_root=image_root,
        classnames=clean_classnames(spec, _names_for(wnids, names, folder / spec.split_file)),
        train=train,
        val=train,
        test=test,
        source=folder,
        source_sha256=listing_sha256(wnids, (train, test)),
        class_ids=tuple(wnids),
        miniature=expected.miniature,
    )
    if strict:
        check_counts(spec, expected, splits)
    return splits


def _shift_splits(
    spec: DatasetSpec, folder: Path, ids: list[str], test: LabeledImages, expected: Expectations, strict: bool
) -> DatasetSplits:
    names = read_classnames_txt(folder / spec.split_file, spec)
    splits = DatasetSplits(
        image_root=folder / spec.image_dir,
        classnames=clean_classnames(spec, _names_for(ids, names, folder / spec.split_file)),
        train=EMPTY,
        val=EMPTY,
        test=test,
        source=folder,
        source_sha256=listing_sha256(ids, (test,)),
        class_ids=tuple(ids),
        miniature=expected.miniature,
    )
    if strict:
        check_counts(spec, expected, splits)
    return splits


def read_wnid_folders(spec: DatasetSpec, data_root: Path, *, strict: bool = True) -> DatasetSplits:
    """A test-only set of ``<image dir>/<wnid>/`` folders (ImageNet-Sketch, -A, -R)."""
    folder = Path(data_root) / spec.folder
    expected = expectations(spec, folder)
    root = folder / spec.image_dir
    wnids = class_folders(root, spec)
    check_class_ids(spec, expected, tuple(wnids), root)
    return _shift_splits(spec, folder, wnids, list_class_images(root, wnids), expected, strict)


def read_imagenet_v2(spec: DatasetSpec, data_root: Path, *, strict: bool = True) -> DatasetSplits:
    """ImageNet-V2: ``<image dir>/<label>/`` folders, label = ImageNet's class index (0-999)."""
    folder = Path(data_root) / spec.folder
    expected = expectations(spec, folder)
    root = folder / spec.image_dir
    official = official_class_ids(spec.class_id_list or "imagenet_synsets.txt")
    numbers = class_folders(root, spec)
    bad = [n for n in numbers if not n.isdigit() or int(n) >= len(official)]
    if bad:
        raise BenchError(
            f"class folder {bad[0]!r} is not an ImageNet label 0-{len(official) - 1}",
            where=str(root),
            fix="use the imagenetv2-matched-frequency-format-val folder as published",
        )
    numbers.sort(key=int)
    wnids = [official[int(n)] for n in numbers]
    check_class_ids(spec, expected, tuple(wnids), root)
    test = list_class_images(root, numbers)
    return _shift_splits(spec, folder, wnids, test, expected, strict)


def read_fgvc_aircraft(spec: DatasetSpec, data_root: Path, *, strict: bool = True) -> DatasetSplits:
    """FGVCAircraft's official txt lists (the ``data/`` folder of fgvc-aircraft-2013b), as CoOp reads them."""
    folder = Path(data_root) / spec.folder
    variants_file = require_file(folder / spec.split_file, spec, "class list")
    classnames = [line.strip() for line in variants_file.read_text().splitlines() if line.strip()]
    lookup = {name: label for label, name in enumerate(classnames)}
    files = [variants_file] + [
        require_file(folder / f"images_variant_{s}.txt", spec, f"{s} list") for s in ("train", "val", "test")
    ]
    train, val, test = (_fgvc_list(path, lookup) for path in files[1:])
    expected = expectations(spec, folder)
    splits = DatasetSplits(
        image_root=folder / spec.image_dir,
        classnames=clean_classnames(spec, classnames),
        train=train,
        val=val,
        test=test,
        source=variants_file,
        source_sha256=sha256_json({p.name: sha256_file(p) for p in files}),
        miniature=expected.miniature,
    )
    if strict:
        check_counts(spec, expected, splits)
        check_images_exist(splits)
    return splits


def _fgvc_list(path: Path, lookup: dict[str, int]) -> LabeledImages:
    paths, labels = [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        image_id, _, variant = line.strip().partition(" ")
        if not image_id:
            continue
        if variant not in lookup:
            raise BenchError(
                f"line {number}: variant {variant!r} is not in variants.txt",
                where=str(path),
                fix="use the txt files of fgvc-aircraft-2013b/data unchanged",
            )
        paths.append(f"{image_id}.jpg")
        labels.append(lookup[variant])
    return LabeledImages(tuple(paths), tuple(labels))
