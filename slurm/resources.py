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
import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources as package_files
from pathlib import Path
from typing import Any

from bench.errors import BenchError

DEFAULT_PROFILE = {"slurm": "gpu_short", "processes": "cpu_debug", "debug": "cpu_debug"}
_PROFILE_ONLY = ("description",)


# Slurm's --mail-type values (sbatch(1)); a comma list of them is accepted.
MAIL_TYPES = frozenset(
    {
        "NONE",
        "BEGIN",
        "END",
        "FAIL",
        "REQUEUE",
        "ALL",
        "INVALID_DEPEND",
        "STAGE_OUT",
        "TIME_LIMIT",
        "TIME_LIMIT_90",
        "TIME_LIMIT_80",
        "TIME_LIMIT_50",
        "ARRAY_TASKS",
    }
)
_SBATCH_KEY = re.compile(r"^[a-z][a-z0-9_-]*$")
# the fields that become one #SBATCH line each: a newline in one would add a line to the script
_LINE_FIELDS = (
    "partition",
    "account",
    "constraint",
    "qos",
    "gres",
    "reservation",
    "exclude",
    "mail_type",
    "mail_user",
)


@dataclass(frozen=True)
class Resources:
    """What each job asks Slurm for. None means the cluster's default; every string is one line."""

    partition: str | None = None  # --partition
    gpus_per_task: int = 0  # --gpus-per-task (not emitted when gres is set; still decides GPU-job workers)
    cpus_per_task: int = 1  # --cpus-per-task, also the image-decoding workers of GPU jobs
    mem_gb: float | None = None  # --mem, GB of host memory
    time_min: int = 60  # --time; a task that reaches it checkpoints and requeues itself
    account: str | None = None  # --account
    constraint: str | None = None  # --constraint, node features, e.g. a100
    qos: str | None = None  # --qos, quality of service
    gres: str | None = None  # --gres, e.g. gpu:a100:1 (replaces --gpus-per-task)
    reservation: str | None = None  # --reservation
    exclude: str | None = None  # --exclude, nodes to avoid, e.g. node[01-03]
    mail_type: str | None = None  # --mail-type, e.g. END,FAIL
    mail_user: str | None = None  # --mail-user
    slurm_additional_parameters: Mapping[str, str] = field(default_factory=dict)  # any other sbatch option
    setup: tuple[str, ...] = ()  # shell lines run in the job before the task, e.g. "module load cuda"
    cells_per_task: int = 1  # per sweep: cells run one after another in one array task
    array_parallelism: int = 64  # per sweep: array tasks (or local processes) running at once

    def __post_init__(self):
        for name in _LINE_FIELDS:
            _check_line(getattr(self, name), name)
        for key, value in self.slurm_additional_parameters.items():
            if not isinstance(key, str) or not _SBATCH_KEY.match(key):
                raise BenchError(
                    f"{key!r} is not an sbatch option name",
                    where=f"slurm_additional_parameters.{key}",
                    fix='use the long option without dashes, e.g. {"nice": "10"}',
                )
            _check_line(value, f"slurm_additional_parameters.{key}")
        object.__setattr__(self, "slurm_additional_parameters", dict(self.slurm_additional_parameters))
        object.__setattr__(self, "setup", tuple(self.setup))
        for index, line in enumerate(self.setup):
            _check_line(line, f"setup[{index}]")
        if self.mail_type is not None:
            unknown = sorted(set(self.mail_type.split(",")) - MAIL_TYPES)
            if unknown:
                raise BenchError(
                    f"unknown mail type(s) {', '.join(map(repr, unknown))}",
                    where="mail_type",
                    fix=f"a comma list of {', '.join(sorted(MAIL_TYPES))}",
                )
        for name in ("cpus_per_task", "time_min", "cells_per_task", "array_parallelism"):
            if getattr(self, name) < 1:
                raise BenchError(
                    f"{name} must be at least 1, not {getattr(self, name)}",
                    where=name,
                    fix="use a positive number",
                )
        if self.gpus_per_task < 0 or (self.mem_gb is not None and not 0 < self.mem_gb < float("inf")):
            raise BenchError(
                "gpus_per_task must be >= 0 and mem_gb > 0",
                where="gpus_per_task/mem_gb",
                fix="use e.g. gpus_per_task=1, mem_gb=32",
            )

    @property
    def uses_gpus(self) -> bool:
        """Whether jobs get GPUs (through gpus_per_task or a gpu gres)."""
        return bool(self.gpus_per_task) or (self.gres or "").startswith("gpu")


def _check_line(value: Any, name: str) -> None:
    """``value`` (None or a string) must be one printable, non-empty line: it goes into the sbatch script."""
    if value is not None and (
        not isinstance(value, (str, int))
        or isinstance(value, bool)
        or not str(value).isprintable()
        or not str(value).strip()
    ):
        raise BenchError(
            f"{name} {value!r} holds a control character (a newline would add a line to the "
            "sbatch script) or nothing at all",
            where=name,
            fix="give one plain line, e.g. gpu",
        )


def profile_names() -> list[str]:
    folder = package_files.files("bench.slurm") / "profiles"
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


def load_profile(name: str) -> Resources:
    """A built-in profile by name, or a profile file by path (anything ending in ``.json``)."""
    if name.endswith(".json"):
        path = Path(name)
        if not path.is_file():
            raise BenchError(
                "profile file not found", where=f"--slurm-profile {name}", fix="pass an existing .json file"
            )
        text, where = path.read_text(), str(path)
    else:
        if name not in profile_names():
            close = difflib.get_close_matches(name, profile_names(), n=2)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise BenchError(
                f"unknown Slurm profile {name!r}.{hint}",
                where="--slurm-profile",
                fix=f"use one of {', '.join(profile_names())} or a path to a .json profile",
            )
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
        raise BenchError(
            f"unknown profile field(s) {', '.join(unknown)}",
            where=where,
            fix=f"fields are: {', '.join(fields)}",
        )
    values = {k: v for k, v in data.items() if k in fields}
    for name, value in values.items():
        if value is not None and not _type_ok(value, fields[name].type):
            raise BenchError(
                f"field {name!r} has the wrong type ({value!r})",
                where=where,
                fix=f"{name} is {fields[name].type}",
            )
    try:
        return Resources(**values)
    except BenchError as exc:
        raise BenchError(exc.what, where=f"{where}: {exc.where}", fix=exc.fix) from None


def _type_ok(value: Any, annotation: str) -> bool:
    if isinstance(value, bool):
        return False
    if annotation.startswith("Mapping"):
        return isinstance(value, dict) and all(
            isinstance(v, (str, int)) and not isinstance(v, bool) for v in value.values()
        )
    if annotation.startswith("tuple"):
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if "str" in annotation:
        return isinstance(value, str)
    if "float" in annotation:
        return isinstance(value, (int, float))
    return isinstance(value, int)


def with_overrides(base: Resources, **flags: Any) -> Resources:
    """``base`` with every flag that was given (None = not given) replacing the profile's value;
    ``slurm_additional_parameters`` are merged into the profile's, ``setup`` lines run after the profile's."""
    given = {k: v for k, v in flags.items() if v is not None}
    if "slurm_additional_parameters" in given:
        given["slurm_additional_parameters"] = {
            **base.slurm_additional_parameters,
            **given["slurm_additional_parameters"],
        }
    if "setup" in given:
        given["setup"] = (*base.setup, *given["setup"])
    return dataclasses.replace(base, **given)


def executor_parameters(
    res: Resources, kind: str, *, name: str, dependency: str | None = None
) -> dict[str, Any]:
    """submitit ``update_parameters`` keywords for one job or array of ``kind`` (slurm | processes | debug).

    ``dependency`` is a Slurm job id that must end successfully first (``afterok``); if it fails,
    Slurm cancels the dependent job instead of leaving it pending forever.
    """
    if not name.isprintable():
        raise BenchError(
            f"job name {name!r} holds a control character",
            where="dataset name",
            fix="name datasets with printable characters only",
        )
    params: dict[str, Any] = {"timeout_min": res.time_min, "name": name}
    if kind != "slurm":
        return params
    params.update(
        cpus_per_task=res.cpus_per_task,
        mem_gb=res.mem_gb,
        slurm_partition=res.partition,
        slurm_account=res.account,
        slurm_constraint=res.constraint,
        slurm_qos=res.qos,
        slurm_gres=res.gres,
        slurm_exclude=res.exclude,
        slurm_mail_type=res.mail_type,
        slurm_mail_user=res.mail_user,
        slurm_array_parallelism=res.array_parallelism,
    )
    if res.gpus_per_task and not res.gres:
        params["slurm_gpus_per_task"] = res.gpus_per_task
    extra = {k.replace("_", "-"): str(v) for k, v in res.slurm_additional_parameters.items()}
    if res.reservation:
        extra["reservation"] = res.reservation  # submitit has no keyword of its own for it
    if dependency:
        params["slurm_dependency"] = f"afterok:{dependency}"
        extra["kill-on-invalid-dep"] = "yes"
    if extra:
        params["slurm_additional_parameters"] = extra
    if res.setup:
        params["slurm_setup"] = list(res.setup)
    return {k: v for k, v in params.items() if v is not None}


def sbatch_script(
    res: Resources,
    *,
    name: str,
    folder: str | Path,
    array_size: int | None = None,
    dependency: str | None = None,
) -> str:
    """The sbatch script submitit submits for one job (or an array of ``array_size`` tasks) with ``res``,
    rendered without a Slurm client (``bench run --executor slurm --dry-run`` prints it)."""
    from submitit.slurm.slurm import SlurmExecutor, _convert_mem, _make_sbatch_string

    renamed = SlurmExecutor._equivalence_dict()
    params = {}
    for key, value in executor_parameters(res, "slurm", name=name, dependency=dependency).items():
        params[key.removeprefix("slurm_") if key.startswith("slurm_") else renamed.get(key, key)] = value
    if "mem" in params:
        params["mem"] = _convert_mem(params["mem"])
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    return _make_sbatch_string(command=command, folder=folder, map_count=array_size, **params)


def describe(res: Resources) -> str:
    """One line: ``partition=gpu gpus_per_task=1 ... cells_per_task=8`` (setup lines counted, not shown)."""
    items = {k: v for k, v in dataclasses.asdict(res).items() if v is not None and v != {} and v != ()}
    if "slurm_additional_parameters" in items:
        items["slurm_additional_parameters"] = ",".join(
            f"{k}={v}" for k, v in items["slurm_additional_parameters"].items()
        )
    if "setup" in items:
        items["setup"] = f"{len(res.setup)} line(s)"
    return " ".join(f"{k}={v}" for k, v in items.items())
