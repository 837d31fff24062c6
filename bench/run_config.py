"""Every option of ``bench run``, defined once: :class:`RunConfig`.

Each field of :class:`RunConfig` is one option, with its flag, kind, default and help in the
field's metadata. Three readers share it:

- the argument parser (:func:`add_run_options`) builds ``bench run``'s flags from the fields;
- ``--config FILE`` (:func:`load_config_file`, YAML or JSON) takes the same options as keys
  (``methods``, ``set``, ``slurm_profile``, ``qos``, ... — a field name or its flag without dashes);
- the cluster sweep (``bench.slurm.cli``) reads the executor and resource fields.

Flags given on the command line override the file, which overrides the defaults. The folder
defaults (``./data``, ``./cache``, ``./results`` or ``BENCH_DATA_ROOT``, ``BENCH_CACHE_DIR``,
``BENCH_RESULTS_DIR``) are defined once in :data:`FOLDERS`, for every subcommand that takes a folder.

Importing this module is cheap (no torch): ``bench --help`` builds the parser from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.slurm.resources import Resources
from bench.spec import DEFAULT_BACKBONE, PROTOCOLS, TUNE_MODES

DEFAULT_METHODS = "zero_shot,linear_probe,coop,clip_adapter"  # the four methods of the CLIP-Adapter paper
DEFAULT_DATASETS = "synthetic"
PLUGINS_ENV = "BENCH_PLUGINS"


@dataclass(frozen=True)
class Folder:
    """A folder option: its flag, the environment variable that sets its default, the default."""

    flag: str
    env: str
    default: str
    help: str

    def value(self) -> Path:
        """The default now: the environment variable if set, else the built-in default."""
        return Path(os.environ.get(self.env) or self.default)


FOLDERS: Mapping[str, Folder] = {
    "data_root": Folder(
        "--data-root", "BENCH_DATA_ROOT", "data", "datasets live in DATA_ROOT/<dataset folder>"
    ),
    "cache_dir": Folder("--cache-dir", "BENCH_CACHE_DIR", "cache", "features, few-shot indices"),
    "results": Folder("--results", "BENCH_RESULTS_DIR", "results", "one JSON record per cell"),
}


def add_folder_argument(parser, name: str, help: str | None = None) -> None:  # noqa: A002
    """Add the folder option ``name`` (a key of :data:`FOLDERS`) to ``parser`` with its one default."""
    folder = FOLDERS[name]
    parser.add_argument(
        folder.flag,
        dest=name,
        type=Path,
        default=folder.value(),
        help=f"{help or folder.help} (default: ./{folder.default}, or {folder.env})",
    )


def add_folder_arguments(parser) -> None:
    """``--data-root``, ``--cache-dir``, ``--results`` as one argument group."""
    group = parser.add_argument_group(
        "folders (also set by " + ", ".join(f.env for f in FOLDERS.values()) + ")"
    )
    for name in FOLDERS:
        add_folder_argument(group, name)


def _opt(
    default: Any,
    help: str,
    *,
    kind: str = "str",
    group: str = "grid",
    flag: str | None = None,  # noqa: A002
    choices: tuple[str, ...] | None = None,
    metavar: str | None = None,
    minimum: int | None = None,
    aliases: tuple[str, ...] = (),
) -> Any:
    """A :class:`RunConfig` field. ``kind``: str | list (comma list; a list in a file) | int | float | bool |
    path | lines (repeatable flag; a list in a file) | map (repeatable KEY=VALUE; a mapping in a file) |
    overrides (repeatable METHOD.FIELD=VALUE; a list or a {method: {field: value}} mapping in a file)."""
    meta = {
        "help": help,
        "kind": kind,
        "group": group,
        "flag": flag,
        "choices": choices,
        "metavar": metavar,
        "minimum": minimum,
        "aliases": aliases,
    }
    if isinstance(default, (dict, tuple)):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


def _folder_field(name: str) -> Any:
    folder = FOLDERS[name]
    return field(
        default_factory=folder.value,
        metadata={
            "help": folder.help,
            "kind": "path",
            "group": "folders",
            "flag": folder.flag,
            "choices": None,
            "metavar": None,
            "minimum": None,
            "aliases": (),
        },
    )


_SWEEP = "sweep"


@dataclass(frozen=True)
class RunConfig:
    """The options of one ``bench run``. Grid lists are comma strings, as on the command line."""

    methods: str = _opt(
        DEFAULT_METHODS, f"comma list, fnmatch patterns or 'all' (default: {DEFAULT_METHODS})", kind="list"
    )
    datasets: str = _opt(
        DEFAULT_DATASETS,
        "comma list, fnmatch patterns or 'all' (the eleven few-shot datasets; default: synthetic)",
        kind="list",
    )
    protocol: str = _opt(
        "fewshot",
        "fewshot (all classes) or base2new (CoCoOp: train on the first half of the "
        "classes, score base and new classes)",
        choices=PROTOCOLS,
    )
    shift: str = _opt(
        "",
        "also score imagenet cells on these distribution-shift sets: comma list of imagenet_v2, "
        "imagenet_sketch, imagenet_a, imagenet_r, or 'all' (those whose data is present)",
        kind="list",
        metavar="SETS",
    )
    shots: str = _opt("all", "comma list or 'all' = 1,2,4,8,16", kind="list")
    seeds: str = _opt("1,2,3", "comma list (default: 1,2,3)", kind="list")
    backbone: str = _opt(
        DEFAULT_BACKBONE,
        "ARCH/WEIGHTS, comma-separated for several: RN50/openai, "
        "ViT-B-16/laion2b_s34b_b88k, ARCH/random, ARCH//path/to/ckpt.pt "
        f"(default: {DEFAULT_BACKBONE})",
        kind="list",
        aliases=("backbones",),
    )
    tune: str = _opt(
        "none",
        "hyperparameter search: none (paper defaults), val (Optuna on the few-shot val split), "
        "oracle (scored on test; results labelled ORACLE)",
        choices=TUNE_MODES,
    )
    trials: int = _opt(0, "finished trials per study with --tune val|oracle (e.g. 20)", kind="int", minimum=0)
    storage: str | None = _opt(
        None,
        "Optuna study storage: an RDB URL (postgresql://..., sqlite:///FILE) or "
        "journal:PATH for shared filesystems (default: sqlite in the results folder)",
        metavar="URL",
    )
    overrides: tuple[str, ...] = _opt(
        (),
        "override a method config field, e.g. clip_adapter.alpha=0.5 (repeatable)",
        kind="overrides",
        flag="--set",
        metavar="METHOD.FIELD=VALUE",
    )
    as_published: bool = _opt(
        False,
        "set every selected method to its official code's behaviour where ours "
        "differs (each method's as_published overrides, e.g. tip_adapter_f.precision=fp16; "
        "see docs/fidelity.md); they act as --set items, recorded and shown in report rows; "
        "an explicit --set wins",
        kind="bool",
    )
    sampling: str = _opt(
        "dassl",
        "few-shot subsets: dassl (Dassl's default: a class smaller than K is taken whole), "
        "dassl_repeat (Dassl's repeat=True: drawn with replacement to K) or dassl_full_val "
        "(Dassl's support set, the whole val split as val: Tip-Adapter's selection split; "
        "not for datasets without a val split, e.g. imagenet); recorded as split_protocol",
        choices=("dassl", "dassl_repeat", "dassl_full_val"),
    )
    plugins: str = _opt(
        "",
        "comma list of Python files, packages (folders) and dataset spec files (.yaml/.json) "
        f"that register methods and datasets (also {PLUGINS_ENV}; see docs/extending.md)",
        kind="list",
        metavar="PATHS",
    )
    device: str = _opt("auto", "auto, cpu, cuda, cuda:1", group="run")
    precision: str = _opt(
        "auto",
        "encoder precision (auto: bf16 on CUDA, fp32 on CPU)",
        group="run",
        choices=("auto", "fp32", "bf16"),
    )
    workers: int | None = _opt(
        None,
        "image-decoding processes (default: min(8, CPUs) on CUDA, 0 on CPU)",
        kind="int",
        group="run",
        minimum=0,
    )
    batch_size: int = _opt(
        128, "images per encoder forward during feature extraction", kind="int", group="run", minimum=1
    )
    force: bool = _opt(False, "redo cells that already have a record", kind="bool", group="run")
    batch_seeds: bool = _opt(
        False,
        "train the seeds of a cell together where the method can (CoOp, CLIP-Adapter: one stacked model, "
        "the same numbers to float rounding); each seed still gets its own record, which says so "
        "(diagnostics.batched_fit); untuned cells and fixed configs only",
        kind="bool",
        group="run",
    )
    trial_batch: int = _opt(
        1,
        "with --tune: ask Optuna for N trials at once and train them as one stacked model where the "
        "method can (CLIP-Adapter, CoOp); another search than one trial at a time (the sampler sees no "
        "score within a batch), so N > 1 is part of the tuned cells' run ids and study names; "
        "default 1: one trial at a time",
        kind="int",
        group="run",
        minimum=1,
        metavar="N",
    )
    dry_run: bool = _opt(
        False,
        "print the cells and how many are done (with --executor slurm: and the sbatch scripts), then exit",
        kind="bool",
        group="run",
    )
    no_progress: bool = _opt(False, "no progress bars", kind="bool", group="run")
    data_root: Path = _folder_field("data_root")
    cache_dir: Path = _folder_field("cache_dir")
    results: Path = _folder_field("results")
    executor: str = _opt(
        "local",
        "local: in this process (default); processes: one local subprocess per job; "
        "debug: the sweep's jobs in this process; slurm: a job array on Slurm via submitit",
        group=_SWEEP,
        choices=("local", "processes", "debug", "slurm"),
    )
    slurm_profile: str | None = _opt(
        None,
        "resources from slurm/profiles: gpu_short (default for slurm), gpu_long, "
        "cpu_debug (default for processes/debug), or a .json file with the same fields",
        group=_SWEEP,
        metavar="NAME|FILE.json",
    )
    partition: str | None = _opt(None, "Slurm partition", group=_SWEEP)
    gpus_per_task: int | None = _opt(None, "GPUs per job", kind="int", group=_SWEEP)
    cpus_per_task: int | None = _opt(
        None, "CPUs per job (also the image-decoding workers on GPU jobs)", kind="int", group=_SWEEP
    )
    mem_gb: float | None = _opt(None, "host memory per job, GB", kind="float", group=_SWEEP)
    time_min: int | None = _opt(
        None,
        "wall time per job; a task that reaches it checkpoints and requeues itself",
        kind="int",
        group=_SWEEP,
        flag="--time",
        metavar="MINUTES",
        aliases=("time",),
    )
    account: str | None = _opt(None, "Slurm account", group=_SWEEP)
    constraint: str | None = _opt(None, "Slurm node constraint, e.g. a100", group=_SWEEP)
    qos: str | None = _opt(None, "Slurm quality of service", group=_SWEEP)
    gres: str | None = _opt(
        None,
        "generic resources per job, e.g. gpu:a100:1 (replaces --gpus-per-task in the script)",
        group=_SWEEP,
    )
    reservation: str | None = _opt(None, "Slurm reservation", group=_SWEEP)
    exclude: str | None = _opt(None, "nodes to avoid, e.g. node[01-03]", group=_SWEEP, metavar="NODES")
    mail_type: str | None = _opt(None, "when Slurm mails, e.g. END,FAIL", group=_SWEEP)
    mail_user: str | None = _opt(None, "who Slurm mails", group=_SWEEP)
    slurm_additional_parameters: dict = _opt(
        {},
        "any other sbatch option, e.g. nice=10 (repeatable; merged into the profile's)",
        kind="map",
        group=_SWEEP,
        flag="--slurm-param",
        metavar="KEY=VALUE",
        aliases=("slurm_param",),
    )
    setup: tuple[str, ...] = _opt(
        (),
        "a shell line the job runs before the task, e.g. 'module load cuda' "
        "(repeatable; after the profile's)",
        kind="lines",
        group=_SWEEP,
        metavar="LINE",
    )
    cells_per_task: int | None = _opt(
        None, "cells run one after another in one array task", kind="int", group=_SWEEP
    )
    array_parallelism: int | None = _opt(
        None, "array tasks (or local processes) at once", kind="int", group=_SWEEP
    )
    detach: bool = _opt(
        False,
        "return after submitting (slurm); follow later with `bench status --watch`",
        kind="bool",
        group=_SWEEP,
    )
    poll: float | None = _opt(
        None,
        "seconds between two looks at the jobs (default: 5 for slurm, 1 otherwise)",
        kind="float",
        group=_SWEEP,
        metavar="SECONDS",
    )

    def plugin_paths(self) -> list[str]:
        return [p.strip() for p in self.plugins.split(",") if p.strip()]


_GROUPS = {
    "grid": "the grid",
    "run": "how cells run",
    "folders": None,
    _SWEEP: "executors and cluster sweeps (flags override the --slurm-profile)",
}
# the Slurm resources a flag (or a --slurm-profile key) sets: every field of slurm.resources.Resources
RESOURCE_OPTIONS = tuple(f.name for f in dataclasses.fields(Resources))
SWEEP_ONLY = (*RESOURCE_OPTIONS, "slurm_profile", "poll", "detach")


def option_fields() -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(RunConfig)


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Every :class:`RunConfig` field as a flag of ``parser``, plus ``--config``. A flag not given is absent
    from the parsed namespace (``SUPPRESS``), so :func:`resolve` can tell it from a default."""
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE.yaml|FILE.json",
        help="read these options from a YAML or JSON file (keys: the long options, e.g. methods, "
        "set, slurm_profile; see docs/examples/); flags given here override it",
    )
    groups: dict[str, Any] = {}
    for f in option_fields():
        meta = f.metadata
        title = (
            _GROUPS[meta["group"]]
            if meta["group"] != "folders"
            else "folders (also set by " + ", ".join(x.env for x in FOLDERS.values()) + ")"
        )
        group = groups.setdefault(meta["group"], parser.add_argument_group(title))
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": meta["help"]}
        kind = meta["kind"]
        if kind == "bool":
            kwargs["action"] = "store_true"
        elif kind in ("lines", "map", "overrides"):
            kwargs["action"] = "append"
        elif kind in ("int", "float", "path"):
            kwargs["type"] = _flag_type(kind, meta["minimum"])
        if kind == "path":
            kwargs["help"] += f" (default: ./{FOLDERS[f.name].default}, or {FOLDERS[f.name].env})"
        for key in ("choices", "metavar"):
            if meta[key] is not None and kind != "bool":
                kwargs[key] = meta[key]
        group.add_argument(flag_of(f), **kwargs)


def _flag_type(kind: str, minimum: int | None):
    def convert(text: str):
        value = {"int": int, "float": float, "path": Path}[kind](text)
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"{text} is below {minimum}; pass {minimum} or more")
        return value

    convert.__name__ = kind  # argparse names the type in "invalid int value"
    return convert


def resolve(given: Mapping[str, Any], config_path: Path | None = None) -> tuple[RunConfig, dict | None]:
    """The options of a run: defaults, then the config file's keys, then the flags ``given`` on the command line.

    Returns the config and the file's content (as loaded, for the sweep manifest), or None without a file.
    Flags given as repeatable items (``--set``, ``--setup``, ``--slurm-param``) arrive as lists of strings.
    """
    values: dict[str, Any] = {}
    content = None
    if config_path is not None:
        content, values = load_config_file(Path(config_path))
    for name, value in given.items():
        if name == "slurm_additional_parameters":
            value = {**values.get(name, {}), **_pairs(value, flag="--slurm-param")}
        elif name == "overrides":
            value = (
                *values.get(name, ()),
                *value,
            )  # later items win in parse_overrides: flags after the file
        elif name == "setup":
            value = tuple(value)
        values[name] = value
    return RunConfig(**values), content


def _pairs(items: list[str], *, flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BenchError(f"{item!r} is not KEY=VALUE", where=flag, fix=f"write e.g. {flag} nice=10")
        out[key.strip()] = value
    return out


def load_config_file(path: Path) -> tuple[dict, dict[str, Any]]:
    """Read a YAML or JSON run config: (its content, the :class:`RunConfig` values it sets).

    Errors are one line naming the file and the key: unreadable, not a mapping, unknown key, wrong type.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchError(
            f"cannot read the config file ({getattr(exc, 'strerror', None) or exc})",
            where=str(path),
            fix="pass a readable YAML or JSON file to --config",
        ) from exc
    content = _parse(text, path)
    if not isinstance(content, dict):
        raise BenchError(
            f"a config file holds a mapping of options, not a {type(content).__name__}",
            where=str(path),
            fix="write e.g. `methods: [zero_shot, linear_probe]`",
        )
    keys = _config_keys()
    values: dict[str, Any] = {}
    for key, raw in content.items():
        name = keys.get(str(key).replace("-", "_"))
        if name is None:
            close = difflib.get_close_matches(str(key).replace("-", "_"), keys, n=2)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise BenchError(
                f"unknown key {key!r}.{hint}",
                where=str(path),
                fix="keys are bench run's long options: "
                + ", ".join(sorted({*keys.values()} - {"overrides"} | {"set"})),
            )
        if name in values:
            raise BenchError(
                f"key {key!r} sets {name!r} a second time", where=str(path), fix="keep one of them"
            )
        values[name] = _value(name, raw, path, key)
    return content, values


def _parse(text: str, path: Path) -> Any:
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except ValueError as exc:
            raise BenchError(f"not valid JSON ({exc})", where=str(path), fix="fix the file") from exc
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise BenchError(f"not valid YAML{at} ({problem})", where=str(path), fix="fix the file") from exc


def _config_keys() -> dict[str, str]:
    """Accepted key -> field name: field names, flags without dashes, aliases."""
    keys = {}
    for f in option_fields():
        keys[f.name] = f.name
        keys[flag_of(f).lstrip("-").replace("-", "_")] = f.name
        keys.update({alias: f.name for alias in f.metadata["aliases"]})
    return keys


def _value(name: str, raw: Any, path: Path, key: Any) -> Any:
    """``raw`` (a value from the file) as the field's type, or a one-line error naming the key and the file."""
    f = {f.name: f for f in option_fields()}[name]
    meta, kind = f.metadata, f.metadata["kind"]

    def wrong(expected: str) -> BenchError:
        return BenchError(
            f"key {key!r} must be {expected}, not {raw!r}",
            where=str(path),
            fix=f"see `bench run --help` for {flag_of(f)}",
        )

    if raw is None:
        if f.default is None:
            return None
        raise wrong("given (remove the key to keep the default)")
    if kind == "bool":
        if not isinstance(raw, bool):
            raise wrong("true or false")
        return raw
    if kind in ("int", "float"):
        ok = isinstance(raw, int) if kind == "int" else isinstance(raw, (int, float))
        if isinstance(raw, bool) or not ok or (meta["minimum"] is not None and raw < meta["minimum"]):
            raise wrong("an integer" if kind == "int" else "a number")
        return float(raw) if kind == "float" else raw
    if kind == "list":
        if not isinstance(raw, (list, str, int)) or isinstance(raw, bool):
            raise wrong("a list of names/numbers or a comma string")
        items = raw if isinstance(raw, list) else [x.strip() for x in str(raw).split(",") if x.strip()]
        if not items or not all(isinstance(i, (str, int)) and not isinstance(i, bool) for i in items):
            raise wrong("a list of names/numbers or a comma string")
        if name == "plugins":  # plugin files travel with the config: relative to it
            items = [i if Path(i).is_absolute() else str(path.parent / i) for i in map(str, items)]
        return ",".join(str(i) for i in items)
    if kind == "lines":
        if not isinstance(raw, list) or not all(isinstance(i, str) for i in raw):
            raise wrong("a list of strings")
        return tuple(raw)
    if kind == "map":
        if not isinstance(raw, dict) or not all(
            isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in raw.values()
        ):
            raise wrong("a mapping of sbatch options to values")
        return {str(k): str(v) for k, v in raw.items()}
    if kind == "overrides":
        return _overrides(raw, wrong)
    if not isinstance(raw, str):
        raise wrong("a string")
    if meta["choices"] and raw not in meta["choices"]:
        raise wrong("one of " + ", ".join(meta["choices"]))
    if name == "slurm_profile" and raw.endswith(".json") and not Path(raw).is_absolute():
        return str(path.parent / raw)  # a profile file travels with the config: relative to it
    return Path(raw) if kind == "path" else raw


def _overrides(raw: Any, wrong) -> tuple[str, ...]:
    """``set:`` as a list of METHOD.FIELD=VALUE strings or a ``{method: {field: value}}`` mapping."""
    if isinstance(raw, list) and all(isinstance(i, str) for i in raw):
        return tuple(raw)
    if isinstance(raw, dict) and all(isinstance(v, dict) for v in raw.values()):
        try:
            return tuple(
                f"{method}.{name}={json.dumps(value, allow_nan=False)}"
                for method, fields in raw.items()
                for name, value in fields.items()
            )
        except (TypeError, ValueError):  # a YAML date, NaN, ...: not a config value
            raise wrong("a mapping {method: {field: value}} of numbers, strings, booleans or lists") from None
    raise wrong("a list of METHOD.FIELD=VALUE strings or a mapping {method: {field: value}}")
