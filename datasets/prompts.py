"""Prompt sets as data: ``data/templates.json``, resolved lazily.

Each dataset has ``coop`` (CoOp's single per-dataset template), ``ensemble`` (CLIP's
published ensemble) and ``coop_ensemble`` (CoOp's ``ZeroshotCLIP2``: the 7 selected ImageNet
templates plus the dataset's own). Lists may reference what open_clip ships
(``{"from": "open_clip:OPENAI_IMAGENET_TEMPLATES"}``) rather than copying it; those are
expanded on first access, so listing datasets never imports open_clip (or torch).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from functools import cache
from importlib import resources

from bench.errors import BenchError


@cache
def _templates_file() -> dict:
    return json.loads((resources.files("bench.datasets") / "data" / "templates.json").read_text())


def _open_clip_templates(name: str) -> tuple[str, ...]:
    from open_clip import zero_shot_metadata

    templates = getattr(zero_shot_metadata, name)
    # open_clip stores them as lambdas (c -> str) or as "{}"-strings; both become "{}"-strings.
    return tuple(t("{}") if callable(t) else str(t) for t in templates)


def _expand(items: list) -> tuple[str, ...]:
    out: list[str] = []
    for item in items:
        if isinstance(item, str):
            out.append(item)
            continue
        source, _, name = str(item.get("from", "")).partition(":")
        if source != "open_clip" or not name:
            raise BenchError(
                f"unknown template reference {item!r}",
                where="bench/datasets/data/templates.json",
                fix='write {"from": "open_clip:NAME"} or a template string',
            )
        out.extend(_open_clip_templates(name))
    return tuple(out)


class PromptSets(Mapping):
    """Read-only ``set name -> templates`` whose values are expanded on first access."""

    def __init__(self, raw: Mapping[str, list]):
        self._raw = dict(raw)
        self._resolved: dict[str, tuple[str, ...]] = {}

    def __getitem__(self, name: str) -> tuple[str, ...]:
        if name not in self._resolved:
            self._resolved[name] = _expand(self._raw[name])
        return self._resolved[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __repr__(self) -> str:
        return f"PromptSets({sorted(self._raw)})"


def prompt_sets(dataset: str) -> PromptSets:
    """The prompt sets ``data/templates.json`` lists for ``dataset``."""
    return PromptSets(_templates_file()[dataset])
