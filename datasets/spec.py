"""DatasetSpec: a dataset described as data, plus the image lists read from disk.

A spec says where a dataset lives under the data root, which split file defines its
train/val/test lists (CoOp's ``split_zhou_*.json`` format), the pinned sha256 of that
file, what the official data looks like (class count, split sizes), where it is
downloaded from, and its prompt sets. Readers turn a spec into :class:`DatasetSplits`.

A generated *miniature* of a dataset (``bench data miniature``) carries a marker file,
:data:`MINIATURE_MARKER`, that states its own class count and sizes: the checks then
compare against those instead of the spec's, and every result computed on it says so.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench.errors import BenchError

MINIATURE_MARKER = "bench-miniature.json"


@dataclass(frozen=True)
class DatasetSpec:
    """Everything that defines a dataset's numbers, minus the images themselves.

    Attributes:
        name: registry key, snake_case (``"oxford_pets"``).
        version: bump when class names, templates or split handling change; part of every result's id.
        folder: the dataset's folder under the data root (``"oxford_pets"``).
        image_dir: folder under ``folder`` that split-file paths are relative to (``"images"``).
        split_file: split file under ``folder`` (``"split_zhou_OxfordPets.json"``).
        split_sha256: pinned sha256 of the split file; ``None`` when the file is generated.
        prompts: prompt sets, name -> templates with one ``{}`` for the class name. ``"coop"`` is
            CoOp's single per-dataset template (``trainers/zsclip.py: CUSTOM_TEMPLATES``).
        reader: how the image lists are read: ``"split_file"`` (CoOp JSON) or a ``"module:function"``
            taking ``(spec, data_root)`` and returning :class:`DatasetSplits`.
        generator: ``"module:function"`` taking ``(dataset_dir)`` that creates the data when absent
            (the synthetic set); ``None`` for real datasets the user brings.
        n_classes: expected number of classes, checked on read; ``None`` to skip the check.
        classname_fixes: class-name replacements applied after reading (CoOp's clean-ups; a no-op
            on the official split files, which already carry the cleaned names).
        split_sizes: (train, val, test) image counts of the official split, checked on read;
            ``None`` to skip. Test-only sets have (0, 0, test).
        val_source: ``"split"`` (the few-shot val is drawn from the split's val list) or ``"train"``
            (ImageNet: drawn from train, disjoint from the support set).
        test_only: a distribution-shift set: no few-shot cells of its own, only evaluated as a
            transfer target of ``shift_of``.
        shift_of: the dataset whose trained classifiers are scored on this one (``"imagenet"``).
        class_id_list: data file (``bench/datasets/data``) with the official class ids (wnids), one
            per line in label order, that a folder layout must match; ``None`` where classes have no ids.
        downloads: what ``bench data prepare`` fetches, verifies and unpacks.
        manual: instructions for what cannot be downloaded automatically (``None``: nothing).
        classnames: the class names the split file must hold, in label order (after clean-ups), checked
            on read; ``None`` to skip (a dataset declared in a spec file may state them).
        subset_of: the known dataset whose classes and images this one is a subset of (a spec file's
            ``subset_of``); its prompt sets and clean-ups apply. ``None`` for a dataset of its own.
    """

    name: str
    version: str
    folder: str
    image_dir: str
    split_file: str
    prompts: Mapping[str, tuple[str, ...]]
    split_sha256: str | None = None
    reader: str = "split_file"
    generator: str | None = None
    n_classes: int | None = None
    classname_fixes: Mapping[str, str] = field(default_factory=dict)
    split_sizes: tuple[int, int, int] | None = None
    val_source: str = "split"
    test_only: bool = False
    shift_of: str | None = None
    class_id_list: str | None = None
    downloads: tuple[Download, ...] = ()
    manual: str | None = None
    classnames: tuple[str, ...] | None = None
    subset_of: str | None = None

    def templates(self, prompt_set: str) -> tuple[str, ...]:
        """The templates of ``prompt_set``; raises a clear error for an unknown set."""
        from bench.errors import BenchError

        if prompt_set not in self.prompts:
            raise BenchError(
                f"dataset {self.name!r} has no prompt set {prompt_set!r}",
                where="method config field 'prompts'",
                fix=f"use one of: {', '.join(sorted(self.prompts))}",
            )
        return tuple(self.prompts[prompt_set])


@dataclass(frozen=True)
class Download:
    """One file ``bench data prepare`` fetches into ``<dataset folder>/.downloads/``.

    Attributes:
        filename: name of the downloaded file.
        url: where it comes from; ``None`` when the user must fetch it by hand (``manual`` says how)
            and put it in the downloads folder, where prepare verifies and unpacks it.
        checksum: ``"md5:<hex>"`` or ``"sha256:<hex>"``; ``None`` when no published value exists (the
            computed sha256 is reported and the unpacked data is checked instead).
        members: for an archive, (path inside it, destination under the dataset folder) pairs; each
            destination appears by one rename after the whole archive is unpacked. Empty for a
            plain file, which is moved to ``place``.
        inner: an archive inside this archive to unpack instead (Caltech101's zip holds a tar.gz).
        place: destination of a plain (non-archive) file under the dataset folder.
    """

    filename: str
    url: str | None
    checksum: str | None = None
    members: tuple[tuple[str, str], ...] = ()
    inner: str | None = None
    place: str | None = None


@dataclass(frozen=True)
class Expectations:
    """What a dataset folder should contain: the spec's values, or a miniature marker's."""

    n_classes: int | None
    split_sizes: tuple[int, int, int] | None
    miniature: bool


def expectations(spec: DatasetSpec, folder: Path) -> Expectations:
    """The class count and split sizes to check ``folder`` against.

    A folder written by the miniature generator has :data:`MINIATURE_MARKER`; its values replace
    the spec's, and the splits read from it are flagged ``miniature`` (recorded in every result).
    """
    marker = Path(folder) / MINIATURE_MARKER
    if not marker.is_file():
        return Expectations(spec.n_classes, spec.split_sizes, miniature=False)
    try:
        content = json.loads(marker.read_text())
        sizes, n_classes = content.get("split_sizes"), content.get("n_classes")
        if not (n_classes is None or type(n_classes) is int) or not (
            sizes is None
            or (isinstance(sizes, list) and len(sizes) == 3 and all(type(s) is int for s in sizes))
        ):
            raise TypeError("n_classes must be an integer and split_sizes three integers")
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise BenchError(
            f"damaged miniature marker ({type(exc).__name__}: {exc})",
            where=str(marker),
            fix=f"delete {folder} and run `bench data miniature {spec.name}` again",
        ) from exc
    return Expectations(n_classes, tuple(sizes) if sizes else None, miniature=True)


@dataclass(frozen=True)
class LabeledImages:
    """An ordered list of images: ``paths[i]`` (relative to the image root) has label ``labels[i]``."""

    paths: tuple[str, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: tuple[int, ...]) -> LabeledImages:
        return LabeledImages(tuple(self.paths[i] for i in indices), tuple(self.labels[i] for i in indices))


@dataclass(frozen=True)
class DatasetSplits:
    """The train/val/test image lists of one dataset, as read from its split file.

    Attributes:
        image_root: absolute folder the relative image paths resolve against.
        classnames: class names with CoOp's clean-ups applied; index = label.
        source: the file the lists came from (split file; the dataset folder for folder layouts).
        source_sha256: sha256 of that file (of the file listing for folder layouts); recorded in
            every result and part of its run id.
        class_ids: stable class identifiers (ImageNet wnids) that map classes between datasets
            (a shift set onto ImageNet's labels); ``None`` where there are none.
        miniature: the data is a generated miniature, not the real dataset.
        raw_classnames: the split file's class names as written (``american_bulldog``), which Dassl's
            datasets hand to a trainer before any clean-up; ``None`` where they equal ``classnames``.
    """

    image_root: Path
    classnames: tuple[str, ...]
    train: LabeledImages
    val: LabeledImages
    test: LabeledImages
    source: Path
    source_sha256: str
    class_ids: tuple[str, ...] | None = None
    miniature: bool = False
    raw_classnames: tuple[str, ...] | None = None

    def split(self, name: str) -> LabeledImages:
        return {"train": self.train, "val": self.val, "test": self.test}[name]
