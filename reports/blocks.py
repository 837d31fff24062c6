"""The report as data: titled blocks of settings, notes and display tables, plus the
machine-readable payload. Renderers in :mod:`bench.reports.formats` turn it into text.

Display tables hold strings with ``±``, ``Δ``, ``—`` and ``†``; each renderer maps them to
its own markup (LaTeX: ``$\\pm$`` …), so every format shows the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

# The order papers use (CoOp's tables), then anything else alphabetically.
DATASET_TITLES = {
    "imagenet": "ImageNet", "caltech101": "Caltech101", "oxford_pets": "OxfordPets", "stanford_cars": "StanfordCars",
    "oxford_flowers": "Flowers102", "food101": "Food101", "fgvc_aircraft": "FGVCAircraft", "sun397": "SUN397",
    "dtd": "DTD", "eurosat": "EuroSAT", "ucf101": "UCF101",
    "imagenet_v2": "ImageNet-V2", "imagenet_sketch": "ImageNet-Sketch", "imagenet_a": "ImageNet-A",
    "imagenet_r": "ImageNet-R",
}
STANDARD_DATASETS = tuple(list(DATASET_TITLES)[:11])
METHOD_ORDER = ("zero_shot", "linear_probe", "coop", "clip_adapter", "clip_adapter_hyper", "tip_adapter",
                "tip_adapter_f", "lp_pp", "clap")
METRIC_TITLES = {"top1": "Top-1 accuracy", "top5": "Top-5 accuracy", "mean_per_class_recall": "Mean per-class recall",
                 "val_top1": "Top-1 accuracy on the few-shot validation split"}
TUNE_TITLES = {"none": "none (paper defaults)", "val": "on the few-shot validation split",
               "oracle": "ORACLE — tuned on the test split, not an honest few-shot number"}


@dataclass(frozen=True)
class Block:
    """A heading (``level`` 2 for a table group, 3 inside it) with settings, notes and a table."""

    title: str
    level: int = 2
    settings: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()
    table: pd.DataFrame | None = None


@dataclass(frozen=True)
class Report:
    """Everything one ``bench report`` shows.

    Attributes:
        title, intro: the document heading and the paragraphs under it.
        blocks: in display order.
        payload: the JSON document (plain dicts, lists, numbers, strings, ``None``).
        long: the CSV table (one row per cell and metric, or the paired comparison).
    """

    title: str
    intro: tuple[str, ...]
    blocks: tuple[Block, ...]
    payload: dict = field(default_factory=dict)
    long: pd.DataFrame = field(default_factory=pd.DataFrame)


def dataset_title(name: str) -> str:
    return DATASET_TITLES.get(name, name)


def dataset_sort_key(name: str) -> tuple:
    order = list(DATASET_TITLES)
    return (order.index(name), "") if name in order else (len(order), name)


def method_sort_key(label: str) -> tuple:
    base = label.split("[")[0].split(" ")[0]
    return (METHOD_ORDER.index(base), label) if base in METHOD_ORDER else (len(METHOD_ORDER), label)


def number(value, digits: int = 2) -> str:
    """``12.345 -> "12.35"``; missing values are ``—``."""
    if value is None or pd.isna(value):
        return "—"
    return f"{value:.{digits}f}"


def signed(value, digits: int = 2) -> str:
    """``+1.20`` / ``−0.35`` (a real minus sign) / ``—``."""
    if value is None or pd.isna(value):
        return "—"
    text = f"{value:+.{digits}f}"
    return text.replace("-", "−")


def mean_pm(mean, half_width, n: int, n_expected: int) -> str:
    """``"46.00 ± 0.82"``; a cell with fewer seeds than its table asks for says so."""
    mark = "" if n >= n_expected else f" ({n}/{n_expected} seeds)"
    return f"{number(mean)} ± {number(half_width)}{mark}"
