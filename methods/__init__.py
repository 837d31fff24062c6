"""Adaptation methods, installed as ``bench.methods``.

Methods are found by name through :func:`method_registry`: built-ins below, third
parties through the ``bench.methods`` entry-point group (each entry point names a class
implementing :class:`bench.methods.base.Method`).
"""

from __future__ import annotations

from functools import cache

from bench.registry import Registry

BUILTIN: dict[str, str] = {
    "zero_shot": "bench.methods.zero_shot:ZeroShot",
    "linear_probe": "bench.methods.linear_probe:LinearProbe",
    "clip_adapter": "bench.methods.clip_adapter:ClipAdapter",
}


@cache
def method_registry() -> Registry:
    """The read-only registry of methods (built once per process)."""
    return Registry("method", BUILTIN, group="bench.methods")
