"""RunResult: the versioned record of one cell, one JSON file each, written atomically.

Reports read these records and nothing else. Layout::

    <results>/<backbone slug>/<dataset>/<method>/k<shots:02d>-s<seed>-<run_id[:8]>.json

``run_id`` hashes everything that defines the cell before it runs (spec, method and dataset
versions, backbone identity, split protocol), so a changed method version or checkpoint
lands in a new file instead of being mistaken for a finished cell.

Schema v2: one typed section per concern (:class:`Spec`, :class:`BackboneInfo`, :class:`DataInfo`,
:class:`PromptInfo`, :class:`TuningInfo`, :class:`Metrics`, :class:`Timing`, :class:`Memory`,
:class:`Provenance`, :class:`ErrorInfo`), each field documented where it is declared, plus the
method's own ``config`` and ``diagnostics``. v1 files have the same sections and are read too.
Records are built in one place (:meth:`RunResult.build`, called by the runner) and read through
these classes everywhere; ``tests/golden/record_*.json`` pin the shape.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from bench.errors import BenchError
from bench.fileio import atomic_write_json

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)  # v1 files have the same sections; v2 only states that they are typed
SPEC_KEYS = ("method", "dataset", "shots", "seed", "backbone")  # what places a record in a report


class Section:
    """A record section: a frozen dataclass read from and written to one JSON object.

    Reading is strict: an unknown key, a missing required field or a value of the wrong JSON type is
    one error naming the file and the field, so a record of another shape is never half-read.
    """

    NAME: ClassVar[str] = ""

    @classmethod
    def from_json(cls, raw: Any, source: str) -> Any:
        if not isinstance(raw, dict):
            raise _bad(source, f"field {cls.NAME!r} must be a JSON object")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise _bad(source, f"unknown field {cls.NAME}.{unknown[0]}")
        for f in dataclasses.fields(cls):
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if f.name not in raw:
                if required:
                    raise _bad(source, f"{cls.NAME} lacks {f.name}")
                continue
            if not _is_json_type(raw[f.name], hints[f.name]):
                raise _bad(source, f"{cls.NAME}.{f.name} is {raw[f.name]!r}, not {_type_name(hints[f.name])}")
        return cls(**raw)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def __getitem__(self, key: str) -> Any:
        """Read-only mapping access (``record.metrics["top1"]``) for scripts and notebooks."""
        if key not in {f.name for f in dataclasses.fields(self)}:
            raise KeyError(key)
        return getattr(self, key)


def _is_json_type(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits an annotation (str, int, float, bool, dict, list, unions with None)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(_is_json_type(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is Any:
        return True
    origin = typing.get_origin(hint) or hint
    if origin is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin)


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def _bad(source: str, what: str) -> BenchError:
    return BenchError(what, where=source, fix="delete it and re-run the cell (bench run rewrites it)")


@dataclass(frozen=True)
class Spec(Section):
    """What was asked: the cell (:class:`bench.spec.RunSpec`) and the versions that define it."""

    NAME: ClassVar[str] = "spec"
    method: str  # registered method name
    dataset: str  # registered dataset name
    shots: int  # K images per class in the support set
    seed: int  # the few-shot draw and every generator of the cell derive from it
    backbone: str  # ARCH/WEIGHTS as given on the command line
    tune: str = "none"  # none | val | oracle
    trials: int = 0  # finished Optuna trials asked for (tuned cells)
    overrides: dict = field(default_factory=dict)  # --set fields of this method
    protocol: str = "fewshot"  # fewshot | base2new
    shift: list = field(default_factory=list)  # test-only sets also scored (imagenet cells)
    method_version: str | None = None  # the method's version (part of the run id)
    dataset_version: str | None = None  # the dataset spec's version (part of the run id)


@dataclass(frozen=True)
class BackboneInfo(Section):
    """The frozen CLIP the cell ran (a failed record may know only its ``id``)."""

    NAME: ClassVar[str] = "backbone"
    id: str  # ARCH/WEIGHTS, or hf-hub:ORG/NAME
    arch: str | None = None  # open_clip (or bundled) architecture name
    weights: str | None = None  # tag, "random", checkpoint path or "hub"
    identity: str | None = None  # weights identity (tag or file sha256) | activation: part of the run id
    weights_sha256: str | None = None  # sha256 over the loaded state dict
    precision: str | None = None  # fp32 | bf16 (autocast) for the encoders
    activation: str | None = None  # quick_gelu | gelu: what the transformers were built with
    activation_source: str | None = None  # why that activation (tag config, arch name, OpenAI file, ...)
    weights_origin: str | None = None  # openai | other | unknown | none (random init)
    paper_arch: str | None = None  # architecture published numbers match, None when none applies
    open_clip: str | None = None  # open_clip version that built the model
    embed_dim: int | None = None  # D of the joint embedding
    logit_scale: float | None = None  # exp(logit_scale): CLIP's temperature (100 for OpenAI's)
    checkpoint_meta: dict | None = None  # the checkpoint's "meta" dict (e.g. the demo's pretraining recipe)


@dataclass(frozen=True)
class DataInfo(Section):
    """The data the number was computed on."""

    NAME: ClassVar[str] = "data"
    split_protocol: str | None = None  # dassl | dassl_repeat | dassl_full_val, [+val_from_train]: the draw
    protocol: str | None = None  # fewshot | base2new
    split_file: str | None = None  # relative to the data root
    split_file_sha256: str | None = None
    fewshot_index_sha256: str | None = (
        None  # the few-shot index file (train/val subsets) of this shot and seed
    )
    val_shots: int | None = (
        None  # images per class of the few-shot val split: min(K, 4); None: whole val split
    )
    miniature: bool | None = None  # a generated miniature of a real layout, not the real data
    n_classes: int | None = None  # classes the method saw
    n_train: int | None = None  # support images
    n_val: int | None = None  # few-shot val images
    n_test: int | None = None  # test images scored
    preprocessing: dict | None = None  # bench.backbone.Preprocessing: size, resize, interpolation, mean, std
    train_view: dict | None = None  # bench.images.ViewSpec of the support features (centre or augmented)
    n_base_classes: int | None = None  # base2new: classes trained on
    n_new_classes: int | None = None  # base2new: classes only scored
    n_test_base: int | None = None  # base2new: test images of base classes
    transfer: dict | None = None  # shift set -> its split file, sha256, classes


@dataclass(frozen=True)
class PromptInfo(Section):
    """The prompt set a method built its text classifier from."""

    NAME: ClassVar[str] = "prompts"
    set: str  # name in datasets/data/templates.json (coop, ensemble, ...)
    templates: list | None = None  # the templates, each with one {}
    sha256: str | None = None  # over the template list


@dataclass(frozen=True)
class TuningInfo(Section):
    """How hyperparameters were chosen (``mode`` none: the paper defaults, nothing else)."""

    NAME: ClassVar[str] = "tuning"
    mode: str  # none | val | oracle
    searched: bool | None = None  # False: the method declares no search space
    note: str | None = None
    scored_on: str | None = None  # val | test (oracle)
    trials: int | None = None  # trials this study has finished
    target_trials: int | None = None
    study_trials: int | None = None
    complete: int | None = None
    pruned: int | None = None
    best_trial: int | None = None
    best_params: dict | None = None
    best_val_top1: float | None = None
    best_test_top1: float | None = None  # oracle mode only
    default_params: dict | None = None
    default_val_top1: float | None = None
    default_test_top1: float | None = None
    search_space: dict | None = None  # Optuna distributions as JSON
    study: str | None = None
    storage: str | None = None  # described without credentials
    protocol: str | None = None  # sampler, pruner and selection rule (part of tuned run ids)
    sampler: dict | None = None
    pruner: dict | None = None
    val_shots: int | None = None


@dataclass(frozen=True)
class Metrics(Section):
    """Scores as fractions in [0, 1]; None where a metric does not apply (top-5 with under 5 classes)."""

    NAME: ClassVar[str] = "metrics"
    top1: float | None = None
    top5: float | None = None
    mean_per_class_recall: float | None = None
    val_top1: float | None = None  # on the few-shot val split
    base_top1: float | None = None  # base2new
    new_top1: float | None = None  # base2new
    harmonic_mean: float | None = None  # base2new: 2·base·new / (base + new)
    transfer: dict | None = None  # shift set -> {"top1", "n_test", ...}


@dataclass(frozen=True)
class Timing(Section):
    """Wall-clock seconds of the cell's phases."""

    NAME: ClassVar[str] = "timing_s"
    total: float | None = None
    features: float | None = None  # reading the support/val features
    tune: float | None = None  # the Optuna search
    fit: float | None = None  # the final fit
    test_features: float | None = None
    eval: float | None = None


@dataclass(frozen=True)
class Memory(Section):
    NAME: ClassVar[str] = "memory"
    peak_device_bytes: int | None = None  # the cell's own peak on a GPU
    peak_host_rss_bytes: int | None = None  # the process's peak RSS so far


@dataclass(frozen=True)
class Provenance(Section):
    """Where and with what the number was produced."""

    NAME: ClassVar[str] = "provenance"
    bench_version: str | None = None
    python: str | None = None
    torch: str | None = None
    torchvision: str | None = None
    open_clip: str | None = None
    numpy: str | None = None
    optuna: str | None = None
    hostname: str | None = None
    platform: str | None = None
    git_sha: str | None = None
    git_dirty: bool | None = None
    device: str | None = None  # the device the cell computed on
    cuda: str | None = None  # CUDA version, on a GPU
    device_name: str | None = None
    torch_threads: int | None = None
    slurm_job_id: str | None = None
    slurm_array_job_id: str | None = None
    slurm_array_task_id: str | None = None
    slurm_restart_count: str | None = None
    started_at: str | None = None  # UTC, ISO 8601
    finished_at: str | None = None


@dataclass(frozen=True)
class ErrorInfo(Section):
    NAME: ClassVar[str] = "error"
    type: str
    message: str
    traceback_tail: str = ""


SECTIONS: dict[str, type[Section]] = {
    cls.NAME: cls
    for cls in (
        Spec,
        BackboneInfo,
        DataInfo,
        PromptInfo,
        TuningInfo,
        Metrics,
        Timing,
        Memory,
        Provenance,
        ErrorInfo,
    )
}


@dataclass(frozen=True)
class RunResult:
    """One cell's record: typed sections (see each class), plus the method's own ``config`` (its Config
    dataclass as JSON) and ``diagnostics`` (what it chose to record), whose keys depend on the method."""

    schema_version: int
    run_id: str
    status: str  # "ok" | "failed"
    spec: Spec
    backbone: BackboneInfo
    data: DataInfo
    config: dict
    tuning: TuningInfo
    metrics: Metrics
    timing_s: Timing
    memory: Memory
    provenance: Provenance
    prompts: PromptInfo | None = None
    diagnostics: dict = field(default_factory=dict)
    error: ErrorInfo | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def build(cls, record: dict, *, source: str = "record") -> RunResult:
        """A record from plain sections (what the runner assembles), checked as a file would be."""
        plain = json.loads(json.dumps(record))  # tuples become lists, as in a file
        return cls.from_json({"schema_version": SCHEMA_VERSION, **plain}, source=source)

    @classmethod
    def from_json(cls, record: dict, *, source: str = "record") -> RunResult:
        if not isinstance(record, dict):
            raise BenchError(
                f"a result record is a JSON object, not {type(record).__name__}",
                where=source,
                fix="delete it and re-run the cell",
            )
        version = record.get("schema_version")
        if version not in READABLE_SCHEMAS:
            raise BenchError(
                f"result schema version {version!r} is not supported (this bench reads "
                f"{', '.join(map(str, READABLE_SCHEMAS))})",
                where=source,
                fix="re-run the cell with this version of bench, or use the bench that wrote it",
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(record) - known)
        if unknown:
            raise BenchError(
                f"unknown result fields {unknown}", where=source, fix="this file was not written by bench"
            )
        missing = sorted(
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in record
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        )
        if missing:
            raise BenchError(
                f"incomplete result record (no {', '.join(missing)})",
                where=source,
                fix="delete it and re-run the cell",
            )
        values = dict(record)
        for name, section in SECTIONS.items():
            if values.get(name) is not None or name not in ("prompts", "error"):
                values[name] = section.from_json(values.get(name), source)
        for name in ("config", "diagnostics"):
            if not isinstance(values.get(name, {}), dict):
                raise _bad(source, f"field {name!r} must be a JSON object")
        result = cls(**{**values, "schema_version": SCHEMA_VERSION})
        result.check(source)
        return result

    def check(self, source: str) -> None:
        """What reports rely on beyond the types: a known status, numeric metrics, an ok record's top-1."""
        if self.status not in ("ok", "failed"):
            raise _bad(source, f"field 'status' is {self.status!r}, expected 'ok' or 'failed'")
        top1 = self.metrics.top1
        if self.ok and not (top1 is not None and 0 <= top1 <= 1):
            raise _bad(source, f"an ok record needs metrics.top1 as a fraction in [0, 1], found {top1!r}")


def result_path(
    results_root: Path, backbone_slug: str, dataset: str, method: str, shots: int, seed: int, run_id: str
) -> Path:
    return Path(results_root) / backbone_slug / dataset / method / f"k{shots:02d}-s{seed}-{run_id[:8]}.json"


def write_result(path: Path, result: RunResult) -> None:
    atomic_write_json(path, result.to_json())


def read_result(path: Path) -> RunResult:
    try:
        record = json.loads(Path(path).read_text())
    except ValueError as exc:
        raise BenchError(
            f"not valid JSON ({exc})", where=str(path), fix="delete it and re-run the cell"
        ) from exc
    except OSError as exc:  # a folder, a dangling link, no permission: one line naming it
        raise BenchError(
            f"cannot read this record ({exc.strerror or type(exc).__name__})",
            where=str(path),
            fix="remove it, or make it a readable record file",
        ) from exc
    return RunResult.from_json(record, source=str(path))


def load_results(results_root: Path) -> list[RunResult]:
    """Every record under ``results_root`` (hidden temporary files are skipped)."""
    root = Path(results_root)
    if not root.is_dir():
        raise BenchError(
            "results folder not found", where=str(root), fix="run `bench run` first or pass --results"
        )
    return [read_result(p) for p in sorted(root.rglob("k*-s*-*.json")) if not p.name.startswith(".")]


# --- Feature extraction passes (issue 23) -------------------------------------------------------------------
# ``bench run`` encodes every image its cells read in a pre-pass (bench.runner.prepare_features) before any
# cell starts, so no cell's ``timing_s`` holds that time. Each pre-pass of one backbone x dataset appends an
# ExtractionPass to <results>/<backbone slug>/<dataset>/extraction.json; reports add them to the cells' totals.

EXTRACTION_FILE = "extraction.json"
EXTRACTION_SCHEMA = 1


@dataclass(frozen=True)
class ExtractionPass(Section):
    """One feature pre-pass over a backbone x dataset (what the cells of one ``bench run`` read)."""

    NAME: ClassVar[str] = "extraction pass"
    backbone: str  # ARCH/WEIGHTS as given on the command line
    dataset: str
    seconds: float  # wall-clock seconds of the pass (cache reads included)
    images_encoded: int  # images pushed through the image encoder (0: all cached)
    images_per_s: float | None  # images_encoded / seconds; None when nothing was encoded
    finished_at: str  # UTC, ISO 8601
    run_ids: list = field(default_factory=list)  # the cells the pass prepared features for


def extraction_path(results_root: Path, backbone_slug: str, dataset: str) -> Path:
    return Path(results_root) / backbone_slug / dataset / EXTRACTION_FILE


def read_extraction_passes(path: Path) -> list[ExtractionPass]:
    """The passes in one extraction file (strict, as records are)."""
    try:
        raw = json.loads(Path(path).read_text())
    except ValueError as exc:
        raise BenchError(
            f"not valid JSON ({exc})", where=str(path), fix="delete it (bench run rewrites it)"
        ) from exc
    if (
        not isinstance(raw, dict)
        or raw.get("schema_version") != EXTRACTION_SCHEMA
        or set(raw) != {"schema_version", "passes"}
        or not isinstance(raw["passes"], list)
    ):
        raise BenchError(
            f"not an extraction file of schema {EXTRACTION_SCHEMA}",
            where=str(path),
            fix="delete it (bench run rewrites it)",
        )
    return [ExtractionPass.from_json(p, str(path)) for p in raw["passes"]]


def append_extraction_pass(results_root: Path, backbone_slug: str, entry: ExtractionPass) -> Path:
    """Add ``entry`` to its backbone x dataset file (read, append, atomic rewrite)."""
    path = extraction_path(results_root, backbone_slug, entry.dataset)
    passes = read_extraction_passes(path) if path.is_file() else []
    atomic_write_json(
        path, {"schema_version": EXTRACTION_SCHEMA, "passes": [p.to_json() for p in (*passes, entry)]}
    )
    return path


def load_extraction_passes(results_root: Path) -> list[ExtractionPass]:
    """Every extraction pass recorded under ``results_root``."""
    return [
        p for path in sorted(Path(results_root).rglob(EXTRACTION_FILE)) for p in read_extraction_passes(path)
    ]


def grid_wall_seconds(results: list[RunResult], passes: list[ExtractionPass]) -> dict[str, float]:
    """What a grid took: the cells' own ``timing_s.total`` plus the extraction passes that prepared them
    (a pass counts when it prepared at least one of ``results``); ``total`` = cells + extraction."""
    ids = {r.run_id for r in results}
    cells = sum(r.timing_s.total or 0.0 for r in results)
    extraction = sum(p.seconds for p in passes if ids & set(p.run_ids))
    return {"cells": cells, "extraction": extraction, "total": cells + extraction}
