"""Which datasets a ``bench run`` uses: few-shot cells (``--datasets``) and transfer targets (``--shift``)."""

from __future__ import annotations

from pathlib import Path

from bench.datasets.spec import DatasetSpec
from bench.errors import BenchError
from bench.registry import Registry


def is_present(spec: DatasetSpec, data_root: Path) -> bool:
    """The dataset's split file (or class list) and image folder exist under ``data_root``."""
    folder = Path(data_root) / spec.folder
    return (folder / spec.split_file).is_file() and (folder / spec.image_dir).is_dir()


def refuse_test_only(spec: DatasetSpec) -> None:
    """A test-only distribution-shift set cannot be trained on: one error saying how to score it."""
    if spec.test_only:
        raise BenchError(
            f"{spec.name!r} is a test-only distribution-shift set",
            where="--datasets",
            fix=f"score classifiers trained on it with --datasets {spec.shift_of} --shift {spec.name}",
        )


def fewshot_datasets(requested: str, registry: Registry) -> list[str]:
    """``--datasets`` -> names. ``all`` is every real few-shot dataset (the eleven: no generated set, no
    test-only set); patterns skip test-only sets; naming a test-only set is an error."""
    out: list[str] = []
    for item in filter(None, (s.strip() for s in requested.split(","))):
        explicit = item != "all" and not any(ch in item for ch in "*?[")
        for name in registry.expand(item):
            spec = registry.get(name)
            if explicit:
                refuse_test_only(spec)
            if spec.test_only or (item == "all" and spec.generator) or name in out:
                continue
            out.append(name)
    if not out:
        raise BenchError(
            f"{requested!r} names no few-shot dataset",
            where="--datasets",
            fix="name at least one (see `bench data list`), or 'all'",
        )
    return out


def shift_targets(
    requested: str, datasets: list[str], registry: Registry, data_root: Path
) -> dict[str, tuple[str, ...]]:
    """``--shift`` -> {trained dataset: shift sets}. ``all``: every shift set of a requested dataset whose data
    is present; a set named explicitly must be present (its name goes into the run id)."""
    if not requested.strip():
        return {}
    shift_sets = [n for n in registry.names() if registry.get(n).test_only]
    wanted = shift_sets if requested.strip() == "all" else registry.expand(requested)
    out: dict[str, list[str]] = {}
    for name in wanted:
        spec = registry.get(name)
        if not spec.test_only:
            raise BenchError(
                f"{name!r} is not a distribution-shift set",
                where="--shift",
                fix=f"choose among: {', '.join(shift_sets)}",
            )
        if spec.shift_of not in datasets:
            if requested.strip() == "all":
                continue
            raise BenchError(
                f"{name!r} scores classifiers trained on {spec.shift_of!r}, which is not run",
                where="--shift",
                fix=f"add {spec.shift_of} to --datasets",
            )
        if not is_present(spec, data_root):
            if requested.strip() == "all":
                continue
            raise BenchError(
                f"data of {name!r} not found",
                where=str(Path(data_root) / spec.folder),
                fix=f"see `bench data prepare {name}`, or leave it out of --shift",
            )
        out.setdefault(spec.shift_of, []).append(name)
    return {dataset: tuple(names) for dataset, names in out.items()}
