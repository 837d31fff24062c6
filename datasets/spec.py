"""DatasetSpec: a dataset described as data, plus the image lists read from disk.

A spec says where a dataset lives under the data root, which split file defines its
train/val/test lists (CoOp's ``split_zhou_*.json`` format), the pinned sha256 of that
file, and its prompt sets. Readers turn a spec into :class:`DatasetSplits`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


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
        classname_fixes: class-name replacements applied after reading (CoOp's clean-ups).
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
        source: the file the lists came from (split file), for error messages.
        source_sha256: sha256 of that file; recorded in every result.
    """

    image_root: Path
    classnames: tuple[str, ...]
    train: LabeledImages
    val: LabeledImages
    test: LabeledImages
    source: Path
    source_sha256: str

    def split(self, name: str) -> LabeledImages:
        return {"train": self.train, "val": self.val, "test": self.test}[name]
