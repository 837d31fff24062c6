"""Evaluation protocols: which classes a method sees, how the test split is scored, what the record says.

The runner loads features and calls a protocol for everything that depends on it; a protocol holds no
state and reads no files. Adding one is one class registered in :data:`PROTOCOLS` (its name is what
``bench run --protocol`` takes and what records and reports carry).

- ``fewshot``: every class, K shots each; top-1/top-5/mean per-class recall on the whole test split.
- ``base2new`` (CoCoOp): the few-shot subsets are drawn over all classes, then restricted to the first
  ⌈C/2⌉ (base) classes; the test split is scored on base classes among base classes, new among new
  (the classifier's ``for_classes``), and their harmonic mean.

Distribution-shift transfer (``--shift``, ImageNet to -V2/-Sketch/-A/-R) is scored on top of the
few-shot protocol: :func:`check_shift` validates it, the runner scores each set through
:func:`bench.scoring.RestrictedClassifier`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from bench.errors import BenchError

if TYPE_CHECKING:  # imported lazily: bench.spec reads the protocol names at CLI start-up
    from bench.datasets.spec import DatasetSplits
    from bench.datasets.splits import FewShotIndices

ScoreFn = Callable[[Any, Any], dict[str, Any]]
"""``score(classifier, feature_set) -> metrics``: the session's scorer on its device."""


class FewShot:
    """Every class, K shots each, scored on the whole test split."""

    name: ClassVar[str] = "fewshot"
    transfers: ClassVar[bool] = True  # shift sets can be scored on top of it

    def classes(
        self, splits: DatasetSplits, fewshot: FewShotIndices
    ) -> tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...]]:
        """(class names, support indices, val indices) a method sees."""
        return splits.classnames, fewshot.train, fewshot.val

    def score(
        self, classifier: Any, test: Any, splits: DatasetSplits, score: ScoreFn, **_: Any
    ) -> dict[str, Any]:
        """Test metrics as fractions."""
        return score(classifier, test)

    def record(self, splits: DatasetSplits) -> dict[str, Any]:
        """What the record's ``data`` section says about the protocol."""
        return {"protocol": self.name}


class BaseToNew(FewShot):
    """CoCoOp's base-to-new generalisation: train on the base half of the classes, score base and new."""

    name: ClassVar[str] = "base2new"
    transfers: ClassVar[bool] = False

    def classes(
        self, splits: DatasetSplits, fewshot: FewShotIndices
    ) -> tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...]]:
        from bench.datasets.subsets import indices_with_labels, n_base_classes

        m = n_base_classes(len(splits.classnames))
        return (
            splits.classnames[:m],
            indices_with_labels(splits.train, fewshot.train, 0, m),
            indices_with_labels(splits.val, fewshot.val, 0, m),
        )

    def score(
        self,
        classifier: Any,
        test: Any,
        splits: DatasetSplits,
        score: ScoreFn,
        *,
        ctx: Any = None,
        eval_batch_size: int = 8192,
        **_: Any,
    ) -> dict[str, Any]:
        """Base / new / harmonic-mean top-1 (:func:`bench.scoring.score_base_to_new`); ``top1`` is base."""
        from bench.datasets.subsets import n_base_classes
        from bench.scoring import score_base_to_new

        n_base = n_base_classes(len(splits.classnames))
        return score_base_to_new(classifier, test, splits.classnames, n_base, ctx, eval_batch_size)

    def record(self, splits: DatasetSplits) -> dict[str, Any]:
        from bench.datasets.subsets import n_base_classes

        n, m = len(splits.classnames), n_base_classes(len(splits.classnames))
        return {
            "protocol": self.name,
            "n_base_classes": m,
            "n_new_classes": n - m,
            "n_test_base": sum(label < m for label in splits.test.labels),
        }


PROTOCOLS: dict[str, FewShot] = {p.name: p for p in (FewShot(), BaseToNew())}


def get_protocol(name: str) -> FewShot:
    """The protocol called ``name``, or a one-line error listing the known ones."""
    if name not in PROTOCOLS:
        raise BenchError(
            f"unknown protocol {name!r}", where="--protocol", fix=f"use one of: {', '.join(PROTOCOLS)}"
        )
    return PROTOCOLS[name]


def check_shift(dataset: Any, targets: tuple[Any, ...], protocol: str, cell: str) -> None:
    """Shift sets score classifiers trained on the set they shift from, under a protocol that transfers.

    Args:
        dataset: the trained dataset's :class:`~bench.datasets.spec.DatasetSpec`; targets: the shift sets'.
    """
    from bench.datasets.selection import refuse_test_only

    refuse_test_only(dataset)
    for target in targets:
        if target.shift_of != dataset.name or not get_protocol(protocol).transfers:
            raise BenchError(
                f"{target.name!r} cannot be scored for {cell}",
                where="--shift",
                fix=f"shift sets score classifiers trained on {target.shift_of} with --protocol fewshot",
            )
