"""The report as data: titled blocks of settings, notes and display tables, plus the
machine-readable payload. Renderers in :mod:`bench.reports.formats` turn it into text.

Display tables hold strings with ``±``, ``Δ``, ``—`` and ``†``; each renderer maps them to
its own markup (LaTeX: ``$\\pm$`` …), so every format shows the same numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pandas as pd

# The order papers use (CoOp's tables), then anything else alphabetically.
DATASET_TITLES = {
    "imagenet": "ImageNet",
    "caltech101": "Caltech101",
    "oxford_pets": "OxfordPets",
    "stanford_cars": "StanfordCars",
    "oxford_flowers": "Flowers102",
    "food101": "Food101",
    "fgvc_aircraft": "FGVCAircraft",
    "sun397": "SUN397",
    "dtd": "DTD",
    "eurosat": "EuroSAT",
    "ucf101": "UCF101",
    "imagenet_v2": "ImageNet-V2",
    "imagenet_sketch": "ImageNet-Sketch",
    "imagenet_a": "ImageNet-A",
    "imagenet_r": "ImageNet-R",
}
STANDARD_DATASETS = tuple(list(DATASET_TITLES)[:11])
METHOD_ORDER = (
    "zero_shot",
    "linear_probe",
    "linear_probe_zs",
    "coop",
    "cocoop",
    "kgcoop",
    "prograd",
    "maple",
    "clip_adapter",
    "clip_adapter_hyper",
    "tip_adapter",
    "tip_adapter_f",
    "taskres",
    "gda",
    "lp_pp",
    "cross_modal_lp",
    "clap",
    "clip_lora",
)
# The names the papers print (CoOp, CLIP-Adapter, Tip-Adapter, LP++, CLAP); ``bench report --names`` overrides them.
METHOD_NAMES = {
    "zero_shot": "Zero-shot CLIP",
    "linear_probe": "Linear probe",
    "linear_probe_zs": "ZS-LP",
    "coop": "CoOp",
    "clip_adapter": "CLIP-Adapter",
    "clip_adapter_hyper": "CLIP-Adapter (hypernetwork)",
    "tip_adapter": "Tip-Adapter",
    "tip_adapter_f": "Tip-Adapter-F",
    "lp_pp": "LP++",
    "clap": "CLAP",
    "cocoop": "CoCoOp",
    "kgcoop": "KgCoOp",
    "prograd": "ProGrad",
    "taskres": "TaskRes",
    "gda": "GDA",
    "cross_modal_lp": "Cross-modal LP",
    "clip_lora": "CLIP-LoRA",
    "maple": "MaPLe",
}
METRIC_TITLES = {
    "top1": "Top-1 accuracy",
    "top5": "Top-5 accuracy",
    "mean_per_class_recall": "Mean per-class recall",
    "val_top1": "Top-1 accuracy on the few-shot validation split",
}
TUNE_TITLES = {
    "none": "none (paper defaults)",
    "val": "on the few-shot validation split",
    "oracle": "ORACLE — tuned on the test split, not an honest few-shot number",
}


@dataclass(frozen=True)
class Block:
    """A heading (``level`` 2 for a table group, 3 inside it) with settings, notes and a table."""

    title: str
    level: int = 2
    settings: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()
    table: pd.DataFrame | None = None
    emphasis: tuple[tuple[int, str, str], ...] = ()  # (row position, column, "best" | "second")


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


SHOT_FREE_METHODS = ("zero_shot",)  # never see the support set: one number per dataset, whatever the shots


def is_shot_free(label: str) -> bool:
    """Whether a row label (``method[overrides] (prompts: …)``) names a method that ignores the support set.

    Decided by the method, not by the numbers: a trained method whose accuracy happens to stay flat
    across shots is still a trained method.
    """
    return re.split(r"[\[ ]", label, maxsplit=1)[0] in SHOT_FREE_METHODS


def display_name(label: str, names: dict[str, str]) -> str:
    """A row label as a paper prints it: ``clip_adapter[alpha=0.5]`` -> ``CLIP-Adapter [alpha=0.5]``.

    ``names`` maps a whole label or a method name to its display name; a method it does not
    name keeps its identifier.
    """
    if label in names:
        return names[label]
    base = re.split(r"[\[ ]", label, maxsplit=1)[0]
    if base not in names:
        return label
    rest = label[len(base) :]
    return names[base] + (" " + rest if rest.startswith("[") else rest)


def emphasis(groups: list[list[tuple[int, float]]]) -> list[tuple[int, str]]:
    """(position, "best" | "second") for each group of (position, value): the highest value is
    best (ties share it), the next one second where the group has three or more values."""
    marks = []
    for group in groups:
        values = sorted({round(v, 9) for _, v in group if v is not None and not pd.isna(v)}, reverse=True)
        if len([v for _, v in group if v is not None and not pd.isna(v)]) < 2:
            continue
        ranks = {values[0]: "best", **({values[1]: "second"} if len(values) > 1 and len(group) > 2 else {})}
        marks += [
            (i, ranks[round(v, 9)])
            for i, v in group
            if v is not None and not pd.isna(v) and round(v, 9) in ranks
        ]
    return marks


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


def mean_pm(mean, half_width, n: int, n_expected: int, digits: int = 2, spread: bool = True) -> str:
    """``"46.00 ± 0.82"``; a cell with fewer seeds than its table asks for says so (``(2/3 seeds)``).

    One seed has no spread: ``"70.00 (n=1)"``, never ``± 0.00``. ``spread=False`` shows the mean only.
    """
    mark = "" if n >= n_expected else f" ({n}/{n_expected} seeds)"
    if n == 1 and not mark:
        mark = " (n=1)"
    if n == 1 or not spread:
        return f"{number(mean, digits)}{mark}"
    return f"{number(mean, digits)} ± {number(half_width, digits)}{mark}"
