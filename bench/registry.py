"""A strict, lazy, read-only registry of plugins found by name.

Built-ins are a plain ``name -> "module:attr"`` mapping; third-party packages add
entries through an entry-point group (``[project.entry-points."bench.methods"]``), and
plain files and folders through ``--plugins`` / ``BENCH_PLUGINS`` (:mod:`bench.plugins`),
with the same duplicate checks. Nothing is imported until :meth:`Registry.get` asks for
it (plugin files excepted: they are read to learn their names), so listing built-in names
is cheap and never touches torch or CUDA.

Example::

    methods = Registry("method", {"zero_shot": "bench.methods.zero_shot:ZeroShot"},
                       group="bench.methods")
    methods.names("clip_adapter*")     # fnmatch patterns
    ZeroShot = methods.get("zero_shot")
    methods.get("zeroshot")            # BenchError: unknown method 'zeroshot'. Did you mean: zero_shot?
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from bench.errors import BenchError


@dataclass(frozen=True)
class _Entry:
    target: Any  # "module:attr", or the object itself (an entry of a plugin file, already loaded)
    origin: str  # "built-in", "entry point from <distribution>" or "plugin <path>"


class Registry:
    """Maps names to lazily imported objects.

    Args:
        kind: what the entries are (``"method"``, ``"dataset"``), used in messages.
        builtins: ``name -> "module:attr"`` for the entries this project ships.
        group: entry-point group scanned for third-party entries, or ``None``.
        plugins: entry points to use instead of scanning ``group`` (tests pass fakes here); when None,
            the plugin files of ``BENCH_PLUGINS`` for ``group`` are added too (:func:`bench.plugins.plugin_entries`).

    Raises:
        BenchError: two entries claim the same name; the message names both origins.
    """

    def __init__(
        self,
        kind: str,
        builtins: Mapping[str, str],
        *,
        group: str | None = None,
        plugins: Iterable[EntryPoint] | None = None,
    ):
        self.kind = kind
        entries = {name: _Entry(target, "built-in") for name, target in builtins.items()}
        files: Iterable[tuple[str, Any, str]] = ()
        if plugins is None:
            plugins = entry_points(group=group) if group else ()
            if group:
                from bench.plugins import plugin_entries

                files = plugin_entries(group)
        for ep in plugins:
            origin = f"entry point {ep.value!r} from {_distribution_name(ep)}"
            if ep.name in entries:
                raise BenchError(
                    f"two {kind}s are registered as {ep.name!r}: {entries[ep.name].origin} and {origin}",
                    where=f"entry-point group {group!r}",
                    fix=f"rename one of them or uninstall the package that provides {origin}",
                )
            entries[ep.name] = _Entry(ep.value, origin)
        for name, obj, path in files:
            origin = f"plugin {path}"
            if name in entries:
                raise BenchError(
                    f"two {kind}s are registered as {name!r}: {entries[name].origin} and {origin}",
                    where=path,
                    fix=f"rename the {kind} in {path}",
                )
            entries[name] = _Entry(obj, origin)
        self._entries: Mapping[str, _Entry] = dict(entries)

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted names matching an fnmatch ``pattern``."""
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def origin(self, name: str) -> str:
        return self._entry(name).origin

    def get(self, name: str) -> Any:
        """Import and return the object registered as ``name``."""
        entry = self._entry(name)
        if not isinstance(entry.target, str):
            return entry.target
        try:
            return import_target(entry.target)
        except (ImportError, AttributeError) as exc:
            raise BenchError(
                f"{self.kind} {name!r} ({entry.origin}) points at {entry.target!r}, which cannot be loaded: {exc}",
                fix="reinstall the package that provides it, or fix its entry point",
            ) from exc

    def expand(self, requested: str | Iterable[str]) -> list[str]:
        """Turn ``"all"``, ``"a,b"`` or fnmatch patterns into known names, in the order given."""
        items = [s.strip() for s in requested.split(",")] if isinstance(requested, str) else list(requested)
        out: list[str] = []
        for item in filter(None, items):
            if item == "all":
                matches = self.names()
            elif any(ch in item for ch in "*?["):
                matches = self.names(item)
                if not matches:
                    raise BenchError(f"no {self.kind} matches {item!r}", fix=self._known())
            else:
                self._entry(item)
                matches = [item]
            out.extend(m for m in matches if m not in out)
        if not out:
            raise BenchError(f"no {self.kind} named", fix=f"name at least one, or 'all'; {self._known()}")
        return out

    def _entry(self, name: str) -> _Entry:
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=3, cutoff=0.6)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise BenchError(f"unknown {self.kind} {name!r}.{hint}", fix=self._known()) from None

    def _known(self) -> str:
        return f"choose one of: {', '.join(self.names())}"


def import_target(target: str) -> Any:
    """Import ``"module:attr.sub"`` and return the attribute (the module itself without ``:attr``)."""
    module_name, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj


def _distribution_name(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return getattr(dist, "name", None) or "an unknown distribution"
