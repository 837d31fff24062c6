"""Reading CoOp split files and drawing few-shot subsets the way CoOp/Dassl does.

Split files (``split_zhou_<Name>.json``) hold ``{"train": [[relpath, label, classname], ...],
"val": [...], "test": [...]}``. Few-shot subsets follow Dassl's
``DatasetBase.generate_fewshot_dataset``: after ``random.seed(seed)``, for each label in
order of first appearance, ``random.sample(items, K)`` (all items if fewer than K); the
train subset is drawn first, then the val subset with ``min(K, 4)`` per class, from the
same generator. Drawing indices instead of items consumes the generator identically, so
the subsets match CoOp's ``split_fewshot/shot_K-seed_S.pkl`` for the same split file.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from bench._io import atomic_write_json, sha256_bytes, sha256_file
from bench.datasets.spec import DatasetSpec, DatasetSplits, LabeledImages
from bench.errors import BenchError

SPLIT_PROTOCOL = "dassl"
VAL_SHOTS_CAP = 4  # CoOp: val = generate_fewshot_dataset(val, num_shots=min(num_shots, 4))
INDEX_SCHEMA = 1


def read_split_file(spec: DatasetSpec, data_root: Path, *, check_files: bool = True) -> DatasetSplits:
    """Read ``spec``'s CoOp split file under ``data_root``.

    Raises:
        BenchError: the file is missing, malformed, has the wrong sha256 or class count, or
            (with ``check_files``) lists images that do not exist.
    """
    folder = Path(data_root) / spec.folder
    path = folder / spec.split_file
    if not path.is_file():
        raise BenchError(
            f"split file of dataset {spec.name!r} not found",
            where=str(path),
            fix=f"put the dataset under {folder} (see `bench data prepare {spec.name}`) or pass --data-root",
        )
    raw = path.read_bytes()
    digest = sha256_bytes(raw)
    if spec.split_sha256 and digest != spec.split_sha256:
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
    classnames = _classnames(lists, spec, path)
    image_root = folder / spec.image_dir
    splits = DatasetSplits(
        image_root=image_root,
        classnames=classnames,
        train=lists["train"][0],
        val=lists["val"][0],
        test=lists["test"][0],
        source=path,
        source_sha256=digest,
    )
    if check_files:
        check_images_exist(splits)
    return splits


def _parse_entries(entries: list) -> tuple[LabeledImages, dict[int, str]]:
    paths, labels, names = [], [], {}
    for relpath, label, classname in entries:
        paths.append(str(relpath))
        labels.append(int(label))
        names.setdefault(int(label), str(classname))
    return LabeledImages(tuple(paths), tuple(labels)), names


def _classnames(lists: dict, spec: DatasetSpec, path: Path) -> tuple[str, ...]:
    names: dict[int, str] = {}
    for _, by_label in lists.values():
        for label, name in by_label.items():
            names.setdefault(label, name)
    n = len(names)
    if sorted(names) != list(range(n)):
        raise BenchError(
            f"labels are not 0..{n - 1} (found {sorted(names)[:5]}…)",
            where=str(path),
            fix="labels must be contiguous integers starting at 0",
        )
    if spec.n_classes is not None and n != spec.n_classes:
        raise BenchError(
            f"{n} classes, expected {spec.n_classes} for {spec.name!r}",
            where=str(path),
            fix="use the official split file for this dataset",
        )
    cleaned = []
    for label in range(n):
        name = names[label]
        name = spec.classname_fixes.get(name, name)
        cleaned.append(name.replace("_", " "))  # CoOp: classname.replace("_", " ") before prompting
    return tuple(cleaned)


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


def draw_fewshot(labels: tuple[int, ...], shots: int, rng: random.Random) -> tuple[int, ...]:
    """Dassl's per-class ``random.sample``: indices of ``shots`` items per label, labels in first-seen order."""
    by_label: dict[int, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        by_label[label].append(index)
    chosen: list[int] = []
    for items in by_label.values():
        chosen.extend(rng.sample(items, shots) if len(items) >= shots else items)
    return tuple(chosen)


def sample_fewshot(splits: DatasetSplits, dataset: str, shots: int, seed: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Draw (train, val) index tuples exactly as CoOp/Dassl would for ``seed``."""
    if shots < 1:
        raise BenchError(f"shots must be >= 1, got {shots}", where="--shots", fix="use 1, 2, 4, 8 or 16")
    rng = random.Random(seed)
    train = draw_fewshot(splits.train.labels, shots, rng)
    val = draw_fewshot(splits.val.labels, min(shots, VAL_SHOTS_CAP), rng)
    return train, val


def fewshot_index_path(cache_root: Path, spec: DatasetSpec, shots: int, seed: int) -> Path:
    return Path(cache_root) / "splits" / spec.name / SPLIT_PROTOCOL / f"shot_{shots}-seed_{seed}.json"


def load_or_create_fewshot(splits: DatasetSplits, spec: DatasetSpec, shots: int, seed: int, cache_root: Path) -> FewShotIndices:
    """The few-shot subset for (spec, shots, seed), read from its JSON index file or drawn and saved.

    The index file lists relative paths and labels, so it is portable between machines and can
    be shared (``bench data export-splits``). A file drawn from a different split file is
    refused rather than silently reused.
    """
    path = fewshot_index_path(cache_root, spec, shots, seed)
    if path.is_file():
        return _read_index(path, splits, spec, shots, seed)
    train, val = sample_fewshot(splits, spec.name, shots, seed)
    record = {
        "schema": INDEX_SCHEMA,
        "dataset": spec.name,
        "shots": shots,
        "seed": seed,
        "protocol": SPLIT_PROTOCOL,
        "split_file_sha256": splits.source_sha256,
        "train": [[splits.train.paths[i], splits.train.labels[i]] for i in train],
        "val": [[splits.val.paths[i], splits.val.labels[i]] for i in val],
    }
    atomic_write_json(path, record)
    return FewShotIndices(spec.name, shots, seed, SPLIT_PROTOCOL, train, val, sha256_file(path), path)


def _read_index(path: Path, splits: DatasetSplits, spec: DatasetSpec, shots: int, seed: int) -> FewShotIndices:
    record = json.loads(path.read_text())
    if record.get("split_file_sha256") != splits.source_sha256:
        raise BenchError(
            "few-shot index was drawn from a different split file "
            f"(sha256 {str(record.get('split_file_sha256'))[:12]}…, current {splits.source_sha256[:12]}…)",
            where=str(path),
            fix="delete this index file to redraw it, or restore the split file it was drawn from",
        )
    train = _positions(record["train"], splits.train, path, "train")
    val = _positions(record["val"], splits.val, path, "val")
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
