"""Reading CoOp split files and drawing few-shot subsets the way CoOp/Dassl does.

Split files (``split_zhou_<Name>.json``) hold ``{"train": [[relpath, label, classname], ...],
"val": [...], "test": [...]}``. Few-shot subsets follow Dassl's
``DatasetBase.generate_fewshot_dataset`` (``dassl/data/datasets/base_dataset.py``): after
``random.seed(seed)``, for each label in order of first appearance, ``random.sample(items, K)``;
a class with fewer than K items is taken whole, once, and draws nothing (Dassl's default
``repeat=False`` since commit e3a15da, 2021-10-09; CoOp's calls never pass ``repeat``). That is
split protocol ``dassl``. Protocol ``dassl_repeat`` is Dassl's ``repeat=True`` instead:
``random.choices(items, k=K)``, with replacement, for a small class (Dassl's default from
2021-09-15 to 2021-10-09). Real CoOp splits have at least 16 train images per class, so the two
differ only on small datasets (miniatures, users' own). The train subset is drawn first, then the
val subset with ``min(K, 4)`` per class, from the same generator. Drawing indices instead of items
consumes the generator identically, so the subsets match CoOp's ``split_fewshot/shot_K-seed_S.pkl``
for the same split file. Index files are stored per split file (its sha256 in the path), so
one cache serves several copies of a dataset (a miniature and the real one) side by side.
ImageNet has no val split: its few-shot val is drawn from train, disjoint from the support
set (protocol ``dassl+val_from_train``).
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.datasets.readers import (
    check_counts,
    check_images_exist,
    check_paths_confined,
    clean_classnames,
    require_file,
)
from bench.datasets.spec import DatasetSpec, DatasetSplits, LabeledImages, expectations
from bench.errors import BenchError
from bench.fileio import atomic_write_bytes, atomic_write_json, sha256_bytes, sha256_file
from bench.seeding import derive_seed

# Dassl's current default (repeat=False); repeat=True; Dassl's support set with the whole val split as val
# (Tip-Adapter's selection split outside ImageNet)
SAMPLINGS = ("dassl", "dassl_repeat", "dassl_full_val")
log = logging.getLogger(__name__)

SPLIT_PROTOCOL = "dassl"
VAL_FROM_TRAIN = "+val_from_train"
VAL_FROM_TRAIN_PROTOCOL = SPLIT_PROTOCOL + VAL_FROM_TRAIN
VAL_SHOTS_CAP = 4  # CoOp: val = generate_fewshot_dataset(val, num_shots=min(num_shots, 4))
INDEX_SCHEMA = 1


def read_split_file(
    spec: DatasetSpec, data_root: Path, *, check_files: bool = True, strict: bool = True
) -> DatasetSplits:
    """Read ``spec``'s CoOp split file under ``data_root``.

    Raises:
        BenchError: the file is missing or malformed, or (with ``strict``) has the wrong sha256,
            class count or split sizes, or (with ``check_files`` too) lists images that do not exist.
    """
    folder = Path(data_root) / spec.folder
    path = require_file(folder / spec.split_file, spec, "split file")
    raw = path.read_bytes()
    digest = sha256_bytes(raw)
    if strict and spec.split_sha256 and digest != spec.split_sha256:
        raise BenchError(
            f"split file has sha256 {digest[:12]}…, expected {spec.split_sha256[:12]}…",
            where=str(path),
            fix="download the official split file again; a different file gives numbers not comparable to the papers",
        )
    try:
        content = json.loads(raw)
        lists = {name: _parse_entries(content[name]) for name in ("train", "val", "test")}
    except (ValueError, KeyError, TypeError) as exc:
        raise BenchError(
            f"not a CoOp split file ({type(exc).__name__}: {exc})",
            where=str(path),
            fix='expected {"train": [[relative_path, label, classname], ...], "val": [...], "test": [...]}',
        ) from exc
    expected = expectations(spec, folder)
    raw_names = tuple(_classnames(lists, path))
    splits = DatasetSplits(
        image_root=folder / spec.image_dir,
        classnames=clean_classnames(spec, raw_names),
        raw_classnames=raw_names,
        train=lists["train"][0],
        val=lists["val"][0],
        test=lists["test"][0],
        source=path,
        source_sha256=digest,
        miniature=expected.miniature,
    )
    check_paths_confined(splits)
    if strict:
        check_counts(spec, expected, splits)
    if strict and check_files:
        check_images_exist(splits)
    return splits


def _parse_entries(entries: list) -> tuple[LabeledImages, dict[int, set[str]]]:
    """(images, every class name each label is given)."""
    paths, labels, names = [], [], defaultdict(set)
    for relpath, label, classname in entries:
        paths.append(str(relpath))
        labels.append(int(label))
        names[int(label)].add(str(classname))
    return LabeledImages(tuple(paths), tuple(labels)), names


def _classnames(lists: dict, path: Path) -> list[str]:
    """Raw class names by label (0..C-1): one name per label across the three splits."""
    given: dict[int, set[str]] = defaultdict(set)
    for _, by_label in lists.values():
        for label, label_names in by_label.items():
            given[label] |= label_names
    for label, label_names in sorted(given.items()):
        if len(label_names) > 1:
            raise BenchError(
                f"label {label} is named both {' and '.join(map(repr, sorted(label_names)))}",
                where=str(path),
                fix="one class name per label",
            )
    names = {label: next(iter(label_names)) for label, label_names in given.items()}
    n = len(names)
    if sorted(names) != list(range(n)):
        wrong = sorted(set(names) - set(range(n)))
        missing = sorted(set(range(n)) - set(names))
        raise BenchError(
            f"labels are not 0..{n - 1}: {_few(wrong)} out of range, {_few(missing)} missing",
            where=str(path),
            fix="labels must be contiguous integers starting at 0",
        )
    return [names[label] for label in range(n)]


def _few(labels: list[int]) -> str:
    """``label 7`` / ``labels 7, 9, 12, 40, 41 (+3 more)``."""
    shown = ", ".join(map(str, labels[:5])) + (f" (+{len(labels) - 5} more)" if len(labels) > 5 else "")
    return f"label{'s' if len(labels) > 1 else ''} {shown}"


@dataclass(frozen=True)
class FewShotIndices:
    """Which train and val images one (dataset, shots, seed) cell uses.

    ``train``/``val`` index into :attr:`DatasetSplits.train` / ``.val``; ``sha256`` is the
    hash of the persisted index file and goes into the result record.
    """

    dataset: str
    shots: int
    seed: int
    protocol: str
    train: tuple[int, ...]
    val: tuple[int, ...]
    sha256: str
    path: Path | None = None


def val_shots(shots: int, val_labels: Sequence[int]) -> int | None:
    """Images per class of a cell's val split, as records state it: ``min(K, 4)`` (CoOp's few-shot val),
    or None for a val split with more in some class (the whole val split of ``dassl_full_val``)."""
    cap = min(shots, VAL_SHOTS_CAP)
    return cap if max(Counter(val_labels).values(), default=0) <= cap else None


def draw_fewshot(
    labels: tuple[int, ...], shots: int, rng: random.Random, *, repeat: bool = False
) -> tuple[int, ...]:
    """Dassl's per-class draw: indices of ``shots`` items per label, labels in first-seen order.

    ``random.sample`` without replacement. A class with fewer than ``shots`` items is taken whole
    and consumes no random number (Dassl's ``repeat=False``), or, with ``repeat``, drawn with
    replacement (``random.choices``), so its indices repeat.
    """
    by_label: dict[int, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        by_label[label].append(index)
    chosen: list[int] = []
    for items in by_label.values():
        if len(items) >= shots:
            chosen.extend(rng.sample(items, shots))
        else:
            chosen.extend(rng.choices(items, k=shots) if repeat else items)
    return tuple(chosen)


def check_sampling(sampling: str) -> None:
    """Raise a :class:`BenchError` for a sampling that is not one of :data:`SAMPLINGS`."""
    if sampling not in SAMPLINGS:
        raise BenchError(
            f"unknown few-shot sampling {sampling!r}",
            where="--sampling",
            fix=f"use one of: {', '.join(SAMPLINGS)}",
        )


def samplings_for(spec: DatasetSpec) -> tuple[str, ...]:
    """The :data:`SAMPLINGS` ``spec`` accepts: ``dassl_full_val`` needs a val split of its own."""
    return tuple(s for s in SAMPLINGS if s != "dassl_full_val" or spec.val_source != "train")


def split_protocol(spec: DatasetSpec, sampling: str = SPLIT_PROTOCOL) -> str:
    """How (train, val) subsets are drawn for ``spec``: recorded in every result and part of its run id.

    ``sampling`` is ``"dassl"`` (Dassl's current default), ``"dassl_repeat"`` (with replacement for
    a class smaller than K) or ``"dassl_full_val"`` (Dassl's support set; val is the whole val split);
    datasets without a val split add ``+val_from_train``.
    """
    check_sampling(sampling)
    if sampling not in samplings_for(spec):
        raise BenchError(
            f"dataset {spec.name!r} has no val split, so --sampling dassl_full_val has no full val split "
            "to select on (the official Tip-Adapter selects on test there, main_imagenet.py)",
            where="--sampling",
            fix=f"run {spec.name} in its own bench run with --sampling dassl (few-shot val from train), "
            "or with --tune oracle for the labelled test-selected numbers",
        )
    return sampling + (VAL_FROM_TRAIN if spec.val_source == "train" else "")


def sample_fewshot(
    splits: DatasetSplits,
    dataset: str,
    shots: int,
    seed: int,
    *,
    val_from_train: bool = False,
    repeat: bool = False,
    full_val: bool = False,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Draw (train, val) index tuples exactly as CoOp/Dassl would for ``seed``.

    ``repeat``: Dassl's ``repeat=True`` (protocol ``dassl_repeat``) for classes smaller than K.
    ``full_val`` (protocol ``dassl_full_val``): the same support set; val is every val-split image.

    With ``val_from_train`` (ImageNet, which has no val split; CoOp used val = test) the val
    indices point into ``splits.train`` too: ``min(K, 4)`` per class drawn from the train images
    not in the support set, with a generator derived for that purpose (the support set itself
    stays Dassl's draw).
    """
    if shots < 1:
        raise BenchError(f"shots must be >= 1, got {shots}", where="--shots", fix="use 1, 2, 4, 8 or 16")
    rng = random.Random(seed)
    train = draw_fewshot(splits.train.labels, shots, rng, repeat=repeat)
    if full_val:
        return train, tuple(range(len(splits.val)))
    if not val_from_train:
        return train, draw_fewshot(splits.val.labels, min(shots, VAL_SHOTS_CAP), rng, repeat=repeat)
    support = set(train)
    rest = [i for i in range(len(splits.train)) if i not in support]
    val_rng = random.Random(derive_seed(seed, dataset, shots, "val_from_train"))
    picked = draw_fewshot(
        tuple(splits.train.labels[i] for i in rest), min(shots, VAL_SHOTS_CAP), val_rng, repeat=repeat
    )
    return train, tuple(rest[i] for i in picked)


def fewshot_index_path(
    cache_root: Path,
    spec: DatasetSpec,
    shots: int,
    seed: int,
    split_sha256: str,
    sampling: str = SPLIT_PROTOCOL,
) -> Path:
    """``<cache>/splits/<dataset>/<protocol>/<split sha256[:12]>/shot_K-seed_S.json``."""
    return (
        Path(cache_root)
        / "splits"
        / spec.name
        / split_protocol(spec, sampling)
        / split_sha256[:12]
        / index_file_name(shots, seed)
    )


def index_file_name(shots: int, seed: int) -> str:
    """Dassl's pickle name, as JSON: ``shot_K-seed_S.json``."""
    return f"shot_{shots}-seed_{seed}.json"


def load_or_create_fewshot(
    splits: DatasetSplits,
    spec: DatasetSpec,
    shots: int,
    seed: int,
    cache_root: Path,
    sampling: str = SPLIT_PROTOCOL,
) -> FewShotIndices:
    """The few-shot subset for (spec, shots, seed), read from its JSON index file or drawn and saved.

    The index file lists relative paths and labels, so it is portable between machines and can
    be shared (``bench data export-splits``). A file drawn from a different split file is
    refused rather than silently reused. ``sampling``: see :data:`SAMPLINGS`.
    """
    path = fewshot_index_path(cache_root, spec, shots, seed, splits.source_sha256, sampling)
    if path.is_file():
        try:
            return _read_index(path, splits, spec, shots, seed)
        except DamagedIndex as exc:  # the draw is deterministic: draw it again rather than stop every cell
            log.warning("%s: %s; drawing it again", path, exc.what)
            path.unlink(missing_ok=True)
    protocol = split_protocol(spec, sampling)
    train, val = sample_fewshot(
        splits,
        spec.name,
        shots,
        seed,
        val_from_train=spec.val_source == "train",
        repeat=sampling == "dassl_repeat",
        full_val=sampling == "dassl_full_val",
    )
    record = {
        "schema": INDEX_SCHEMA,
        "dataset": spec.name,
        "shots": shots,
        "seed": seed,
        "protocol": protocol,
        "split_file_sha256": splits.source_sha256,
        "train": [[splits.train.paths[i], splits.train.labels[i]] for i in train],
        "val": [[splits.val.paths[i], splits.val.labels[i]] for i in val],
    }
    atomic_write_json(path, record)
    return FewShotIndices(spec.name, shots, seed, protocol, train, val, sha256_file(path), path)


def import_index(source: Path, splits: DatasetSplits, spec: DatasetSpec, cache_root: Path) -> Path:
    """Place an exported index file (``bench data export-splits``) where the runner reads it -> its new path.

    It is checked first: its dataset and split file must be ``spec``'s and ``splits``', its protocol one
    of ``spec``'s (either sampling; it is placed with its own), and every entry must be in the split
    file. An index file already in the cache for the same cell is kept if its JSON content is the same
    (formatting aside) and refused otherwise (it may have produced results).
    """
    try:
        record = json.loads(source.read_bytes())
        shots, seed = int(record["shots"]), int(record["seed"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BenchError(
            f"not a few-shot index file ({type(exc).__name__}: {exc})",
            where=str(source),
            fix="pass a folder written by `bench data export-splits`",
        ) from exc
    protocols = {split_protocol(spec, sampling): sampling for sampling in samplings_for(spec)}
    if record.get("dataset") != spec.name:
        raise BenchError(
            f"field 'dataset' is {record.get('dataset')!r}, expected {spec.name!r}",
            where=str(source),
            fix=f"put it under <folder>/{spec.name}/<protocol>/",
        )
    if record.get("protocol") not in protocols:
        raise BenchError(
            f"field 'protocol' is {record.get('protocol')!r}, expected one of {', '.join(protocols)}",
            where=str(source),
            fix=f"put it under <folder>/{spec.name}/{split_protocol(spec)}/",
        )
    _read_index(source, splits, spec, shots, seed)
    target = fewshot_index_path(
        cache_root, spec, shots, seed, splits.source_sha256, protocols[record["protocol"]]
    )
    # the same JSON content counts as the same file, whatever its formatting (indentation, key order)
    if target.is_file() and json.loads(target.read_bytes()) != record:
        raise BenchError(
            "a different index file for this cell is already in the cache",
            where=str(target),
            fix=f"delete it (and the results drawn from it) to use {source}",
        )
    if not target.is_file():
        atomic_write_bytes(target, source.read_bytes())
    return target


class DamagedIndex(BenchError):
    """An index file that is not the JSON an index file holds (truncated, overwritten, hand-edited)."""


def _index_record(path: Path) -> dict:
    """The JSON of an index file, its shape checked, or :class:`DamagedIndex` naming it."""
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or not isinstance(record.get("protocol"), str):
            raise TypeError("not an object with a protocol")
        for name in ("train", "val"):
            if not isinstance(record.get(name), list) or not all(
                isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) and type(e[1]) is int
                for e in record[name]
            ):
                raise TypeError(f"{name!r} is not a list of [path, label] pairs")
    except (OSError, ValueError, TypeError) as exc:
        raise DamagedIndex(
            f"damaged few-shot index file ({type(exc).__name__}: {' '.join(str(exc).split())})",
            where=str(path),
            fix="delete it: `bench run` draws it again, identically",
        ) from exc
    return record


def _read_index(
    path: Path, splits: DatasetSplits, spec: DatasetSpec, shots: int, seed: int
) -> FewShotIndices:
    record = _index_record(path)
    if record.get("split_file_sha256") != splits.source_sha256:
        raise BenchError(
            "few-shot index was drawn from a different split file "
            f"(sha256 {str(record.get('split_file_sha256'))[:12]}…, current {splits.source_sha256[:12]}…)",
            where=str(path),
            fix="delete this index file to redraw it, or restore the split file it was drawn from",
        )
    train = _positions(record["train"], splits.train, path, "train")
    val = _positions(record["val"], splits.val, path, "val")
    if not str(record.get("protocol", "")).startswith("dassl_repeat") and len(set(train)) < len(train):
        # protocol "dassl" never repeats an image; a file that does was drawn with replacement by an
        # earlier bench (whose "dassl" followed Dassl's old repeat=True) and would be mistaken for Dassl's draw
        raise BenchError(
            "few-shot index repeats images but its protocol draws without replacement "
            "(drawn by an earlier bench, as Dassl's repeat=True)",
            where=str(path),
            fix="delete this index file (and the results drawn from it) to redraw it as Dassl does now",
        )
    return FewShotIndices(spec.name, shots, seed, record["protocol"], train, val, sha256_file(path), path)


def _positions(entries: list, images: LabeledImages, path: Path, name: str) -> tuple[int, ...]:
    position = {p: i for i, p in enumerate(images.paths)}
    out = []
    for relpath, label in entries:
        i = position.get(relpath)
        if i is None or images.labels[i] != label:
            raise BenchError(
                f"{name} entry {relpath!r} (label {label}) is not in the split file",
                where=str(path),
                fix="delete this index file to redraw it",
            )
        out.append(i)
    return tuple(out)
