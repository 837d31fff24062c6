"""Plugins without packaging: methods and datasets from plain files and folders.

``--plugins a.py,pkg/,my_dataset.yaml`` (or ``BENCH_PLUGINS``, the same comma list) adds, to the
registries that entry points feed (:class:`bench.registry.Registry`, same duplicate checks):

- a Python file or a package folder (one with ``__init__.py``): its module-level mappings
  ``BENCH_METHODS = {"name": MethodClass}`` and ``BENCH_DATASETS = {"name": DatasetSpec(...)}``;
- a dataset spec file (``.yaml``, ``.yml``, ``.json``; :mod:`bench.datasets.spec_files`): one dataset,
  or a declared subset of a known one;
- a folder without ``__init__.py``: each of those files in it, in name order.

Python plugins are imported under a name derived from their path (``bench_plugin_<stem>_<hash>``), so
sweep jobs, which inherit ``BENCH_PLUGINS`` (absolute paths), import the same code. See docs/extending.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.errors import BenchError

PLUGINS_ENV = "BENCH_PLUGINS"
SPEC_SUFFIXES = (".yaml", ".yml", ".json")
_MAPPING = {"bench.methods": "BENCH_METHODS", "bench.datasets": "BENCH_DATASETS"}


def plugin_paths() -> list[str]:
    """The plugin paths in ``BENCH_PLUGINS`` (comma-separated)."""
    return [p.strip() for p in os.environ.get(PLUGINS_ENV, "").split(",") if p.strip()]


@contextlib.contextmanager
def activated(paths: list[str]) -> Iterator[None]:
    """Add ``paths`` (relative to the working folder) to ``BENCH_PLUGINS``, every path made absolute, while the
    block runs, so the registries of this process and of the jobs it starts (subprocesses, Slurm jobs, which
    inherit the environment) include them."""
    if not paths and not plugin_paths():
        yield
        return
    for path in paths:
        if not Path(path).exists():
            raise BenchError(
                "plugin not found", where=path, fix="pass an existing .py file, folder or spec file"
            )
    before = os.environ.get(PLUGINS_ENV)
    merged = [str(Path(p).resolve()) for p in (*plugin_paths(), *paths)]  # absolute: jobs may start elsewhere
    os.environ[PLUGINS_ENV] = ",".join(dict.fromkeys(merged))
    _clear_registries()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(PLUGINS_ENV, None)
        else:
            os.environ[PLUGINS_ENV] = before
        _clear_registries()


def _clear_registries() -> None:
    from bench.datasets import dataset_registry
    from bench.methods import method_registry

    method_registry.cache_clear()
    dataset_registry.cache_clear()


def plugin_entries(group: str) -> list[tuple[str, Any, str]]:
    """``(name, object, path)`` of every plugin in ``BENCH_PLUGINS`` for the entry-point ``group``."""
    if group not in _MAPPING:
        return []
    entries = []
    for path in plugin_paths():
        for file in _files(Path(path)):
            entries.extend(_entries(file, group))
    return entries


def _files(path: Path) -> list[Path]:
    if not path.exists():
        raise BenchError(
            "plugin not found", where=str(path), fix=f"fix or drop it in --plugins / {PLUGINS_ENV}"
        )
    if path.is_dir() and not (path / "__init__.py").is_file():
        found = sorted(
            p for p in path.iterdir() if p.suffix in (".py", *SPEC_SUFFIXES) and not p.name.startswith(".")
        )
        if not found:
            raise BenchError(
                "plugin folder holds no .py, .yaml or .json file and no __init__.py",
                where=str(path),
                fix="point at a Python file, a package folder or a dataset spec file",
            )
        return found
    if path.is_file() and path.suffix not in (".py", *SPEC_SUFFIXES):
        raise BenchError(
            f"a plugin is a .py file, a folder or a {'/'.join(SPEC_SUFFIXES)} dataset spec file",
            where=str(path),
            fix="rename it or point at its folder",
        )
    return [path]


def _entries(path: Path, group: str) -> list[tuple[str, Any, str]]:
    if path.suffix in SPEC_SUFFIXES:
        if group != "bench.datasets":
            return []
        from bench.datasets.spec_files import load_spec_file

        spec = load_spec_file(path)
        return [(spec.name, spec, str(path))]
    module = load_module(path)
    attr = _MAPPING[group]
    declared = getattr(module, attr, {})
    if not hasattr(module, "BENCH_METHODS") and not hasattr(module, "BENCH_DATASETS"):
        raise BenchError(
            "plugin defines neither BENCH_METHODS nor BENCH_DATASETS",
            where=str(path),
            fix='add e.g. BENCH_METHODS = {"my_method": MyMethod} at module level',
        )
    if not isinstance(declared, dict) or not all(isinstance(k, str) for k in declared):
        raise BenchError(
            f"{attr} must be a dict of names to objects",
            where=f"{path}: {attr}",
            fix=f'write {attr} = {{"name": ...}}',
        )
    check = _check_method if group == "bench.methods" else _check_dataset
    for name, obj in declared.items():
        check(name, obj, f"{path}: {attr}[{name!r}]")
    return [(name, obj, str(path)) for name, obj in declared.items()]


def load_module(path: Path) -> Any:
    """Import the Python file or package folder ``path`` under a name derived from its absolute path (once)."""
    path = path.resolve()
    stem = path.stem if path.is_file() else path.name
    name = (
        f"bench_plugin_{''.join(c if c.isalnum() else '_' for c in stem)}_"
        f"{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    )
    if name in sys.modules:
        return sys.modules[name]
    init = path / "__init__.py" if path.is_dir() else path
    spec = importlib.util.spec_from_file_location(
        name, init, submodule_search_locations=[str(path)] if path.is_dir() else None
    )
    if spec is None or spec.loader is None:
        raise BenchError(
            "cannot import this plugin", where=str(path), fix="point at a .py file or a package folder"
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BenchError:
        del sys.modules[name]
        raise
    except Exception as exc:  # the plugin's own bug: one line naming it
        del sys.modules[name]
        first = (str(exc).strip().splitlines() or [""])[0]
        raise BenchError(
            f"plugin raised {type(exc).__name__} on import: {first}",
            where=str(path),
            fix=f"fix the plugin, or drop it from --plugins / {PLUGINS_ENV}",
        ) from exc
    return module


def _check_method(name: str, obj: Any, where: str) -> None:
    """What the runner needs of a method class (see bench.methods.base.Method)."""
    missing = [a for a in ("Config", "version", "default_config", "needs", "fit") if not hasattr(obj, a)]
    if not isinstance(obj, type) or missing:
        raise BenchError(
            f"method {name!r} is not a method class" + (f" (no {', '.join(missing)})" if missing else ""),
            where=where,
            fix="register the class (not an instance); see bench.methods.base.Method",
        )


def _check_dataset(name: str, obj: Any, where: str) -> None:
    from bench.datasets.spec import DatasetSpec

    if not isinstance(obj, DatasetSpec):
        raise BenchError(
            f"dataset {name!r} is a {type(obj).__name__}, not a DatasetSpec",
            where=where,
            fix="register a bench.datasets.spec.DatasetSpec, or write a spec file",
        )
    if obj.name != name:
        raise BenchError(
            f"dataset registered as {name!r} is named {obj.name!r}",
            where=where,
            fix="use the spec's name as its key",
        )
