"""A dataset declared in a small YAML or JSON file (``--plugins my_dataset.yaml``), without Python.

A dataset of one's own::

    name: my_shapes                  # registry name (lowercase, digits, _)
    folder: my_shapes                # under --data-root (or an absolute path)
    image_dir: images                # split-file paths are relative to folder/image_dir
    split_file: split_my_shapes.json # CoOp format: {"train": [[path, label, classname], ...], "val": ..., "test": ...}
    classnames: [red_circle, ...]    # optional: checked against the split file, in label order
    templates: ["a photo of a {}."]  # the first is the "coop" prompt set, all of them "ensemble"

A subset of a known dataset (its images, prompt sets and class-name clean-ups; a split file of
some of its classes, labels 0..n-1)::

    name: pets3
    subset_of: oxford_pets
    split_file: split_pets3.json     # under the known dataset's folder (or absolute)

Optional keys: ``version`` (part of every run id: bump it when the file changes what is measured),
``prompts`` (a mapping of prompt-set names to templates, instead of ``templates``), ``split_sha256``
(pin the split file), ``n_classes``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from bench.datasets.spec import DatasetSpec
from bench.errors import BenchError

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_KEYS = (
    "name",
    "version",
    "folder",
    "image_dir",
    "split_file",
    "classnames",
    "templates",
    "prompts",
    "subset_of",
    "split_sha256",
    "n_classes",
)


def load_spec_file(path: Path) -> DatasetSpec:
    """The :class:`DatasetSpec` a spec file declares; one-line errors name the file and the key."""
    data = _read(path)
    where = str(path)
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise BenchError(
            f"unknown key(s) {', '.join(map(repr, unknown))}",
            where=where,
            fix=f"keys are: {', '.join(_KEYS)}",
        )
    get = _Getter(data, where)
    name = get.text("name", required=True)
    if not _NAME.match(name):
        raise BenchError(
            f"name {name!r} is not lowercase letters, digits and _",
            where=f"{where}: name",
            fix="e.g. name: my_shapes",
        )
    classnames = get.texts("classnames")
    prompts = _prompts(get)
    parent = get.text("subset_of")
    common = {
        "name": name,
        "version": str(data.get("version", "1")),
        "split_sha256": get.text("split_sha256"),
        "classnames": tuple(classnames) if classnames else None,
        "n_classes": get.integer("n_classes") or (len(classnames) if classnames else None),
    }
    if parent is not None:
        return _subset(get, parent, prompts, common)
    if prompts is None:
        raise BenchError(
            "no prompt templates", where=f"{where}: templates", fix='add e.g. templates: ["a photo of a {}."]'
        )
    return DatasetSpec(
        folder=get.text("folder", required=True),
        image_dir=get.text("image_dir") or "images",
        split_file=get.text("split_file", required=True),
        prompts=prompts,
        **common,
    )


def _subset(get: _Getter, parent_name: str, prompts: dict | None, common: dict[str, Any]) -> DatasetSpec:
    from bench.datasets import BUILTIN
    from bench.registry import import_target

    if parent_name not in BUILTIN:
        raise BenchError(
            f"subset_of {parent_name!r} is not a built-in dataset",
            where=f"{get.where}: subset_of",
            fix=f"one of: {', '.join(sorted(BUILTIN))}",
        )
    parent: DatasetSpec = import_target(BUILTIN[parent_name])
    if parent.test_only:
        raise BenchError(
            f"{parent_name!r} is a test-only shift set",
            where=f"{get.where}: subset_of",
            fix="declare subsets of few-shot datasets",
        )
    n_parent = parent.n_classes
    if common["n_classes"] is not None and n_parent is not None and common["n_classes"] > n_parent:
        raise BenchError(
            f"a subset of {parent_name} has at most {n_parent} classes, not {common['n_classes']}",
            where=get.where,
            fix="list only classes of that dataset",
        )
    return dataclasses.replace(
        parent,
        folder=get.text("folder") or parent.folder,
        image_dir=get.text("image_dir") or parent.image_dir,
        split_file=get.text("split_file", required=True),
        prompts=prompts or parent.prompts,
        reader="split_file",
        generator=None,
        split_sizes=None,
        val_source="split",
        class_id_list=None,
        downloads=(),
        manual=None,
        subset_of=parent_name,
        **{**common, "version": f"{parent.version}.subset{common['version']}"},
    )


def _prompts(get: _Getter) -> dict[str, tuple[str, ...]] | None:
    templates = get.texts("templates")
    mapping = get.data.get("prompts")
    if templates and mapping is not None:
        raise BenchError("both templates and prompts", where=get.where, fix="keep one of them")
    if templates:
        prompts = {"coop": (templates[0],), "ensemble": tuple(templates)}
    elif mapping is not None:
        if (
            not isinstance(mapping, dict)
            or not mapping
            or not all(
                isinstance(v, list) and v and all(isinstance(t, str) for t in v) for v in mapping.values()
            )
        ):
            raise BenchError(
                "prompts must map prompt-set names to lists of templates",
                where=f"{get.where}: prompts",
                fix='e.g. prompts: {coop: ["a photo of a {}."]}',
            )
        prompts = {str(k): tuple(v) for k, v in mapping.items()}
    else:
        return None
    for set_name, items in prompts.items():
        bad = next((t for t in items if t.count("{}") != 1), None)
        if bad is not None:
            raise BenchError(
                f"template {bad!r} needs exactly one {{}} for the class name",
                where=f"{get.where}: prompts {set_name}",
                fix='e.g. "a photo of a {}."',
            )
    return prompts


class _Getter:
    """Typed reads of a spec file's keys, each error naming the file and the key."""

    def __init__(self, data: dict, where: str):
        self.data, self.where = data, where

    def _wrong(self, key: str, expected: str) -> BenchError:
        return BenchError(
            f"key {key!r} must be {expected}, not {self.data[key]!r}",
            where=self.where,
            fix=f"fix {key} in the file",
        )

    def text(self, key: str, *, required: bool = False) -> str | None:
        if key not in self.data or self.data[key] is None:
            if required:
                raise BenchError(f"key {key!r} is missing", where=self.where, fix=f"add {key}: ...")
            return None
        value = self.data[key]
        if not isinstance(value, str) or not value.strip() or not value.isprintable():
            raise self._wrong(key, "a non-empty one-line string")
        return value

    def texts(self, key: str) -> list[str] | None:
        value = self.data.get(key)
        if value is None:
            return None
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, str) and v.strip() for v in value)
        ):
            raise self._wrong(key, "a non-empty list of strings")
        return value

    def integer(self, key: str) -> int | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise self._wrong(key, "a positive integer")
        return value


def _read(path: Path) -> dict:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchError(
            f"cannot read the dataset spec file ({getattr(exc, 'strerror', None) or exc})",
            where=str(path),
            fix="pass a readable .yaml or .json file",
        ) from exc
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # yaml.YAMLError or ValueError: one line either way
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BenchError(
            f"not valid {'JSON' if path.suffix == '.json' else 'YAML'} ({first})",
            where=str(path),
            fix="fix the file",
        ) from exc
    if not isinstance(data, dict):
        raise BenchError(
            "a dataset spec file holds a mapping (name, folder, split_file, ...)",
            where=str(path),
            fix="see docs/extending.md",
        )
    return data
