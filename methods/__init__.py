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
    "linear_probe_zs": "bench.methods.clap:ZeroShotLinearProbe",
    "coop": "bench.methods.coop:Coop",
    "clip_adapter": "bench.methods.clip_adapter:ClipAdapter",
    "clip_adapter_hyper": "bench.methods.clip_adapter_hyper:ClipAdapterHyper",
    "tip_adapter": "bench.methods.tip_adapter:TipAdapter",
    "tip_adapter_f": "bench.methods.tip_adapter:TipAdapterF",
    "lp_pp": "bench.methods.lp_pp:LpPlusPlus",
    "clap": "bench.methods.clap:Clap",
    "kgcoop": "bench.methods.kgcoop:KgCoop",
    "prograd": "bench.methods.prograd:ProGrad",
    "taskres": "bench.methods.taskres:TaskRes",
    "cocoop": "bench.methods.cocoop:Cocoop",
    "gda": "bench.methods.gda:Gda",
    "cross_modal_lp": "bench.methods.cross_modal_lp:CrossModalLp",
    "clip_lora": "bench.methods.clip_lora:ClipLora",
    "maple": "bench.methods.maple:Maple",
}


@cache
def method_registry() -> Registry:
    """The read-only registry of methods (built once per process)."""
    return Registry("method", BUILTIN, group="bench.methods")
