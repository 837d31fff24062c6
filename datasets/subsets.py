"""Class subsets: CoCoOp's base/new halves and the mapping of a shift set onto ImageNet's labels."""

from __future__ import annotations

import math
from collections.abc import Sequence

from bench.datasets.spec import LabeledImages
from bench.errors import BenchError


def n_base_classes(n_classes: int) -> int:
    """CoCoOp's ``subsample_classes``: the first ``ceil(C / 2)`` labels are base, the rest new."""
    return math.ceil(n_classes / 2)


def indices_with_labels(
    images: LabeledImages, indices: Sequence[int], low: int, high: int
) -> tuple[int, ...]:
    """The entries of ``indices`` whose label lies in ``[low, high)``, in order."""
    return tuple(i for i in indices if low <= images.labels[i] < high)


def class_columns(
    trained_ids: Sequence[str] | None, target_ids: Sequence[str] | None, target: str
) -> tuple[int, ...]:
    """For each class of a shift set, the column of the trained classifier that scores it.

    Classes are matched by id (wnid), so ImageNet-A/-R's 200 classes select 200 of ImageNet's
    1,000 logits, as CoOp's evaluation on them does (it builds the classifier from their names).
    """
    if trained_ids is None or target_ids is None:
        raise BenchError(
            f"{target!r} has no class ids to map onto the trained classes",
            where="--shift",
            fix="shift sets apply to imagenet only",
        )
    position = {wnid: column for column, wnid in enumerate(trained_ids)}
    missing = [wnid for wnid in target_ids if wnid not in position]
    if missing:
        raise BenchError(
            f"{len(missing)} classes of {target!r} are not among the trained classes, first {missing[0]}",
            where="--shift",
            fix="use the full ImageNet training set (and the matching shift set)",
        )
    return tuple(position[wnid] for wnid in target_ids)
