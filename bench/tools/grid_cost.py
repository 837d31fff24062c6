"""What the full paper grid costs, predicted from a few measured per-step costs.

The grid the performance target names: zero-shot, linear probe, CoOp and CLIP-Adapter on the
eleven CoOp datasets at 1/2/4/8/16 shots and three seeds (660 cells). Affine costs (``a + b·x``) are fitted through two measured sizes (through zero with one).
Running it takes longer than
a benchmark session has, so ``bench perf`` measures what one cell of each method costs per step on
the device, and this module counts the steps of every cell from the methods' own defaults
(:meth:`default_config`: epochs by shots, batch size) and the datasets' class counts and split
sizes (the catalog), then adds them up. The model, per cell of C classes and K shots:

- CoOp: ``steps × (a + b·C)``: every step runs the text encoder over the C prompts.
- CLIP-Adapter: ``steps × t``: a small MLP on a batch of features, the same for every C.
- Linear probe: ``a + b·C²K`` per cell: L-BFGS iterations touch N·C = C²K logits, plus a fixed cost.
- Zero-shot: ``t_ref · C / C_ref``: one text encoding per class.
- Feature extraction: every test image once (centre view), every support image with its augmented
  views and every few-shot val image once per (shots, seed) draw (an upper bound: draws overlap).

``steps = epochs × (N // batch)`` with ``N = C·K`` support images, one step when N < batch (the
harness's guard against CoOp's empty EuroSAT loader).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.datasets.splits import VAL_SHOTS_CAP
from bench.spec import ALL_SHOTS, DEFAULT_SEEDS

GRID_METHODS = ("zero_shot", "linear_probe", "coop", "clip_adapter")
GRID_SHOTS = ALL_SHOTS
GRID_SEEDS = len(DEFAULT_SEEDS)


@dataclass(frozen=True)
class DatasetSize:
    name: str
    n_classes: int
    n_test: int


@dataclass(frozen=True)
class StepCosts:
    """Measured costs, seconds. ``coop_per_step``: class count C -> one CoOp step; ``linear_probe_cell``:
    C²K -> one linear-probe cell; ``zero_shot_cell``: one cell at ``ref_classes``; rates are images per
    second (augmented: source images per second, all their views included)."""

    coop_per_step: dict[int, float]
    adapter_per_step: float
    linear_probe_cell: dict[int, float]
    zero_shot_cell: float
    ref_classes: int
    centre_rate: float
    augmented_rate: float


def steps(n_images: int, batch_size: int, epochs: int) -> int:
    """Optimiser steps of one cell: its epochs times the batches the training loader makes of N images."""
    from bench.methods.training import batches_per_epoch

    return epochs * batches_per_epoch(n_images, batch_size)


def paper_datasets() -> list[DatasetSize]:
    """The eleven few-shot datasets with their official class counts and test sizes."""
    from bench.datasets import dataset_registry
    from bench.datasets.selection import fewshot_datasets

    registry = dataset_registry()
    return [
        DatasetSize(n, registry.get(n).n_classes, registry.get(n).split_sizes[2])
        for n in fewshot_datasets("all", registry)
    ]


def cell_steps(method: str, dataset: str, n_classes: int, shots: int) -> int:
    """Steps one cell of a trainable method takes at its defaults."""
    from bench.methods import method_registry

    cfg = method_registry().get(method)().default_config(dataset, shots)
    return steps(n_classes * shots, cfg.batch_size, cfg.epochs)


def affine(points: dict[int, float], size: float) -> float:
    """``a + b·size`` through the smallest and largest measured sizes (``b·size`` with one point), >= 0."""
    ordered = sorted(points.items())
    if len(ordered) == 1:
        ((x, y),) = ordered
        return y * size / x
    (x0, y0), (x1, y1) = ordered[0], ordered[-1]
    return max(y0 + (y1 - y0) / (x1 - x0) * (size - x0), 0.0)


def grid_seconds(costs: StepCosts, datasets: list[DatasetSize] | None = None) -> dict[str, float]:
    """Predicted seconds of the paper grid, per part: each method and ``extraction``; plus ``total``."""
    datasets = paper_datasets() if datasets is None else datasets
    out = dict.fromkeys((*GRID_METHODS, "extraction"), 0.0)
    for d in datasets:
        c = d.n_classes
        out["extraction"] += d.n_test / costs.centre_rate
        for k in GRID_SHOTS:
            out["extraction"] += GRID_SEEDS * (
                c * k / costs.augmented_rate + c * min(k, VAL_SHOTS_CAP) / costs.centre_rate
            )
            out["zero_shot"] += GRID_SEEDS * costs.zero_shot_cell * c / costs.ref_classes
            out["linear_probe"] += GRID_SEEDS * affine(costs.linear_probe_cell, c * c * k)
            out["coop"] += GRID_SEEDS * cell_steps("coop", d.name, c, k) * affine(costs.coop_per_step, c)
            out["clip_adapter"] += (
                GRID_SEEDS * cell_steps("clip_adapter", d.name, c, k) * costs.adapter_per_step
            )
    out["total"] = sum(out.values())
    return out
