"""RunSpec: one cell of the grid (method × dataset × shots × seed × backbone × tuning).

``expand_grid`` turns the CLI's lists into cells, ordered so consecutive cells share a
backbone and a dataset (and so the feature cache in memory).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.errors import BenchError
from bench.fileio import sha256_json
from bench.protocols import PROTOCOLS as _PROTOCOLS

ALL_SHOTS = (1, 2, 4, 8, 16)
DEFAULT_SEEDS = (1, 2, 3)
DEFAULT_BACKBONE = "bench-tiny/random"
TUNE_MODES = ("none", "val", "oracle")
PROTOCOLS = tuple(_PROTOCOLS)  # fewshot, base2new (CoCoOp's base-to-new generalisation): bench.protocols


@dataclass(frozen=True)
class RunSpec:
    """One cell. ``overrides`` are method-config fields set explicitly (``--set``), as sorted pairs.

    ``protocol`` is ``"fewshot"`` or ``"base2new"`` (train on the first half of the classes, score
    base and new classes); ``shift`` names the test-only sets a classifier trained on this cell's
    dataset is also scored on (``metrics["transfer"]``).
    """

    method: str
    dataset: str
    shots: int
    seed: int
    backbone: str = DEFAULT_BACKBONE
    tune: str = "none"
    trials: int = 0
    overrides: tuple[tuple[str, Any], ...] = ()
    protocol: str = "fewshot"
    shift: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        suffix = "" if self.protocol == "fewshot" else f"/{self.protocol}"
        return f"{self.method}/{self.dataset}/k{self.shots}/s{self.seed}{suffix}"

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["overrides"] = dict(self.overrides)
        return out

    def run_id(
        self,
        *,
        method_version: str,
        dataset_version: str,
        backbone_identity: str,
        split_protocol: str,
        data_sha256: str | None = None,
        tuning_protocol: str | None = None,
        precision: str = "fp32",
    ) -> str:
        """sha256 of everything that defines this cell's number before it runs (16 hex chars).

        ``data_sha256`` identifies the data read (split files, listings), so a cell run on other
        data (another split file, a miniature) never resumes from this one's record.
        ``tuning_protocol`` (sampler, pruner, selection rule) counts only for tuned cells, so untuned
        cells keep their ids. ``precision`` is the encoders' compute precision (bf16 autocast moves
        features in the last bits); fp32, the CPU default, adds nothing to the hash.
        """
        payload = {
            **self.to_json(),
            "method_version": method_version,
            "dataset_version": dataset_version,
            "backbone": backbone_identity,
            "split_protocol": split_protocol,
        }
        if data_sha256 is not None:
            payload["data_sha256"] = data_sha256
        if tuning_protocol is not None:
            payload["tuning_protocol"] = tuning_protocol
        if precision != "fp32":
            payload["precision"] = precision
        return sha256_json(payload)[:16]


def parse_int_list(text: str, *, flag: str, all_value: Sequence[int] | None = None) -> tuple[int, ...]:
    """``"1,2,4"`` -> (1, 2, 4); ``"all"`` -> ``all_value``."""
    if all_value is not None and text.strip() == "all":
        return tuple(all_value)
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise BenchError(
            f"{text!r} is not a comma-separated list of integers",
            where=flag,
            fix="write e.g. 1,2,4" + (" or all" if all_value else ""),
        ) from None
    if not values or any(v < 1 for v in values):
        raise BenchError(f"{text!r} must list positive integers", where=flag, fix="write e.g. 1,2,4")
    if len(set(values)) < len(values):
        repeated = sorted({v for v in values if values.count(v) > 1})
        raise BenchError(
            f"{text!r} lists {', '.join(map(str, repeated))} more than once",
            where=flag,
            fix="list each value once",
        )
    return values


def parse_overrides(items: Iterable[str]) -> dict[str, tuple[tuple[str, Any], ...]]:
    """``["clip_adapter.alpha=0.5", ...]`` -> ``{"clip_adapter": (("alpha", 0.5),)}``.

    Values are read as JSON (numbers, booleans, lists) and fall back to plain strings.
    """
    by_method: dict[str, dict[str, Any]] = {}
    for item in items:
        target, sep, raw = item.partition("=")
        method, dot, field_name = target.partition(".")
        if not sep or not dot or not method or not field_name:
            raise BenchError(
                f"{item!r} is not METHOD.FIELD=VALUE", where="--set", fix="write e.g. clip_adapter.alpha=0.5"
            )
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        by_method.setdefault(method, {})[field_name] = value
    return {m: tuple(sorted(fields.items())) for m, fields in by_method.items()}


def check_unrepeated(items: Iterable[str], *, flag: str = "--set") -> None:
    """Refuse two items for one ``METHOD.FIELD`` (``--set a.x=1 --set a.x=2``): which one was meant is unknowable.

    Layers are another matter: a flag may override a config file's item or an ``--as-published`` one.
    """
    seen: dict[str, str] = {}
    for item in items:
        target = item.partition("=")[0].strip()
        if target in seen:
            raise BenchError(
                f"{target} is set twice ({seen[target]!r} and {item!r})",
                where=flag,
                fix=f"keep one {flag} {target}=VALUE",
            )
        seen[target] = item


def apply_overrides(config: Any, overrides: Iterable[tuple[str, Any]], *, method: str) -> Any:
    """``dataclasses.replace`` with checks: unknown fields get a did-you-mean, ints widen to floats."""
    fields = {f.name: f for f in dataclasses.fields(config)}
    changes = {}
    for name, value in overrides:
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise BenchError(
                f"method {method!r} has no config field {name!r}.{hint}",
                where=f"--set {method}.{name}",
                fix=f"fields are: {', '.join(fields)} (see `bench methods`)",
            )
        current = getattr(config, name)
        if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        if current is not None and not isinstance(value, type(current)):
            raise BenchError(
                f"{value!r} is not a {type(current).__name__}",
                where=f"--set {method}.{name}",
                fix=f"the default is {current!r}",
            )
        if any(
            isinstance(v, float) and not math.isfinite(v)
            for v in (value if isinstance(value, tuple) else (value,))
        ):
            raise BenchError(
                f"{value!r} is not a finite number",
                where=f"--set {method}.{name}",
                fix=f"pass a finite value (the default is {current!r})",
            )
        changes[name] = value
    config = dataclasses.replace(config, **changes)
    if changes:
        from bench.methods.base import check_config

        check_config(config, method)
    return config


def expand_grid(
    methods: Sequence[str],
    datasets: Sequence[str],
    shots: Sequence[int],
    seeds: Sequence[int],
    backbones: Sequence[str],
    *,
    tune: str = "none",
    trials: int = 0,
    overrides: dict[str, tuple[tuple[str, Any], ...]] | None = None,
    protocol: str = "fewshot",
    shift: dict[str, tuple[str, ...]] | None = None,
) -> list[RunSpec]:
    """All cells, ordered backbone → dataset → method → shots → seed.

    ``shift`` maps a dataset to the test-only sets its cells are also scored on.
    """
    if tune not in TUNE_MODES:
        raise BenchError(
            f"unknown tuning mode {tune!r}", where="--tune", fix=f"use one of: {', '.join(TUNE_MODES)}"
        )
    if protocol not in PROTOCOLS:
        raise BenchError(
            f"unknown protocol {protocol!r}", where="--protocol", fix=f"use one of: {', '.join(PROTOCOLS)}"
        )
    shift = shift or {}
    overrides = overrides or {}
    unknown = sorted(set(overrides) - set(methods))
    if unknown:
        raise BenchError(
            f"--set names method(s) {', '.join(unknown)} that are not being run",
            where="--set",
            fix="add them to --methods or drop those --set items",
        )
    return [
        RunSpec(
            method,
            dataset,
            k,
            seed,
            backbone,
            tune,
            trials,
            overrides.get(method, ()),
            protocol,
            tuple(shift.get(dataset, ())),
        )
        for backbone in backbones
        for dataset in datasets
        for method in methods
        for k in shots
        for seed in seeds
    ]
