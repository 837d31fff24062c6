"""Resources: what each cluster job asks for, read from a profile in ``slurm/profiles/`` and
overridden by flags.

A profile is a JSON object with the fields of :class:`Resources` (plus an optional
``description``); ``--slurm-profile`` takes a built-in name (``gpu_short``, ``gpu_long``,
``cpu_debug``) or the path of such a file. :func:`executor_parameters` translates resources
into submitit's parameters for one job or job array.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass
from importlib import resources as package_files
from pathlib import Path
from typing import Any

from bench.errors import BenchError

DEFAULT_PROFILE = {"slurm": "gpu_short", "processes": "cpu_debug", "debug": "cpu_debug"}
_PROFILE_ONLY = ("description",)


@dataclass(frozen=True)
class Resources:
    """Per job: Slurm partition/account/constraint (None: the cluster's default), GPUs and CPUs per
    task, host memory in GB, wall time in minutes; per sweep: cells grouped into one array task,
    array tasks (or local processes) running at once."""

    partition: str | None = None
    gpus_per_task: int = 0
    cpus_per_task: int = 1
    mem_gb: float | None = None
    time_min: int = 60
    account: str | None = None
    constraint: str | None = None
    cells_per_task: int = 1
    array_parallelism: int = 64

    def __post_init__(self):
        for name in ("partition", "account", "constraint"):  # they become #SBATCH lines: one line each
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.isprintable() or not value.strip()):
                raise BenchError(f"{name} {value!r} holds a control character (a newline would add a line to the "
                                 "sbatch script) or nothing at all", where=name, fix="give a plain name, e.g. gpu")
        for name in ("cpus_per_task", "time_min", "cells_per_task", "array_parallelism"):
            if getattr(self, name) < 1:
                raise BenchError(f"{name} must be at least 1, not {getattr(self, name)}", where=name,
                                 fix="use a positive number")
        if self.gpus_per_task < 0 or (self.mem_gb is not None and not 0 < self.mem_gb < float("inf")):
            raise BenchError("gpus_per_task must be >= 0 and mem_gb > 0", where="gpus_per_task/mem_gb",
                             fix="use e.g. gpus_per_task=1, mem_gb=32")


def profile_names() -> list[str]:
    folder = package_files.files("bench.slurm") / "profiles"
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


def load_profile(name: str) -> Resources:
    """A built-in profile by name, or a profile file by path (anything ending in ``.json``)."""
    if name.endswith(".json"):
        path = Path(name)
        if not path.is_file():
            raise BenchError("profile file not found", where=f"--slurm-profile {name}", fix="pass an existing .json file")
        text, where = path.read_text(), str(path)
    else:
        if name not in profile_names():
            close = difflib.get_close_matches(name, profile_names(), n=2)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise BenchError(f"unknown Slurm profile {name!r}.{hint}", where="--slurm-profile",
                             fix=f"use one of {', '.join(profile_names())} or a path to a .json profile")
        text = (package_files.files("bench.slurm") / "profiles" / f"{name}.json").read_text()
        where = f"slurm/profiles/{name}.json"
    return _parse_profile(text, where)


def _parse_profile(text: str, where: str) -> Resources:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise BenchError(f"profile is not valid JSON ({exc})", where=where, fix="fix the file") from exc
    if not isinstance(data, dict):
        raise BenchError("profile must be a JSON object", where=where, fix='write e.g. {"gpus_per_task": 1}')
    fields = {f.name: f for f in dataclasses.fields(Resources)}
    unknown = sorted(set(data) - set(fields) - set(_PROFILE_ONLY))
    if unknown:
        raise BenchError(f"unknown profile field(s) {', '.join(unknown)}", where=where,
                         fix=f"fields are: {', '.join(fields)}")
    values = {k: v for k, v in data.items() if k in fields}
    for name, value in values.items():
        if value is not None and not _type_ok(value, fields[name].type):
            raise BenchError(f"field {name!r} has the wrong type ({value!r})", where=where,
                             fix=f"{name} is {fields[name].type}")
    try:
        return Resources(**values)
    except BenchError as exc:
        raise BenchError(exc.what, where=f"{where}: {exc.where}", fix=exc.fix) from None


def _type_ok(value: Any, annotation: str) -> bool:
    if isinstance(value, bool):
        return False
    if "str" in annotation:
        return isinstance(value, str)
    if "float" in annotation:
        return isinstance(value, (int, float))
    return isinstance(value, int)


def with_overrides(base: Resources, **flags: Any) -> Resources:
    """``base`` with every flag that was given (None = not given) replacing the profile's value."""
    return dataclasses.replace(base, **{k: v for k, v in flags.items() if v is not None})


def executor_parameters(res: Resources, kind: str, *, name: str, dependency: str | None = None) -> dict[str, Any]:
    """submitit ``update_parameters`` keywords for one job or array of ``kind`` (slurm | processes | debug).

    ``dependency`` is a Slurm job id that must end successfully first (``afterok``); if it fails,
    Slurm cancels the dependent job instead of leaving it pending forever.
    """
    if not name.isprintable():
        raise BenchError(f"job name {name!r} holds a control character", where="dataset name",
                         fix="name datasets with printable characters only")
    params: dict[str, Any] = {"timeout_min": res.time_min, "name": name}
    if kind != "slurm":
        return params
    params.update(cpus_per_task=res.cpus_per_task, mem_gb=res.mem_gb, slurm_partition=res.partition,
                  slurm_account=res.account, slurm_constraint=res.constraint,
                  slurm_array_parallelism=res.array_parallelism)
    if res.gpus_per_task:
        params["slurm_gpus_per_task"] = res.gpus_per_task
    if dependency:
        params["slurm_dependency"] = f"afterok:{dependency}"
        params["slurm_additional_parameters"] = {"kill-on-invalid-dep": "yes"}
    return {k: v for k, v in params.items() if v is not None}


def describe(res: Resources) -> str:
    """One line: ``partition=gpu gpus_per_task=1 ... cells_per_task=8``."""
    return " ".join(f"{k}={v}" for k, v in dataclasses.asdict(res).items() if v is not None)
