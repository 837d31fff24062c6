"""Scoring a classifier on cached features: the metrics every result record carries.

Only the runner calls these on test features, after ``fit`` has returned (and tuning calls
them on the few-shot val split, or on test in the labelled ``oracle`` mode).
"""

from __future__ import annotations

from typing import Any

import torch

from bench.errors import NonFiniteError
from bench.methods.base import FeatureSet, FitContext


@torch.no_grad()
def score(
    classifier, data: FeatureSet, device: torch.device, batch_size: int = 8192
) -> dict[str, float | None]:
    """top-1, top-5 (None with fewer than 5 classes) and mean per-class recall of the centre view, as fractions.

    A classifier with ``encode_images`` (an adapted image encoder: CLIP-LoRA, MaPLe) is scored on its own
    features of ``data``'s images, encoded here in batches, not on the frozen cache's.

    Args:
        classifier: (B, D) raw image features on ``device`` -> (B, C) logits.
        data: features (V, N, D) (only view 0 is scored) and labels (N,).
    """
    if isinstance(classifier, torch.nn.Module):
        classifier.eval()
    if hasattr(classifier, "encode_images"):
        from bench.methods.encoder_training import encoded_set

        data = encoded_set(classifier.encode_images, data, device)
    chunks = []
    for start in range(0, data.features.shape[1], batch_size):
        chunks.append(classifier(data.center[start : start + batch_size].to(device)).float().cpu())
    logits, labels = torch.cat(chunks), data.labels
    _check_finite(logits)
    correct = logits.argmax(1) == labels
    recall = torch.stack([correct[labels == c].double().mean() for c in labels.unique()])
    top5 = None
    if logits.shape[1] >= 5:
        top5 = float((logits.topk(5, dim=1).indices == labels[:, None]).any(1).double().mean())
    return {
        "top1": float(correct.double().mean()),
        "top5": top5,
        "mean_per_class_recall": float(recall.mean()),
    }


def _check_finite(logits: torch.Tensor) -> None:
    """A NaN row's argmax is 0, so a non-finite logit would be scored as a guess: refuse it instead."""
    bad = (~torch.isfinite(logits)).any(1).nonzero().flatten()
    if len(bad):
        raise NonFiniteError(
            f"{len(bad)} of {len(logits)} images have non-finite logits (first: row {int(bad[0])})"
        )


def labels_subset(data: FeatureSet, low: int, high: int) -> FeatureSet:
    """The images with labels in ``[low, high)``, relabelled to start at 0."""
    keep = (data.labels >= low) & (data.labels < high)
    images = data.images.subset(keep) if data.images is not None else None
    return FeatureSet(data.features[:, keep], data.labels[keep] - low, images)


class RestrictedClassifier:
    """``classifier``'s logits at ``columns`` only (a shift set's classes); keeps its ``encode_images``."""

    def __init__(self, classifier, columns: torch.Tensor):
        self.classifier, self.columns = classifier, columns
        if hasattr(classifier, "encode_images"):
            self.encode_images = classifier.encode_images

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features).index_select(1, self.columns)


def score_base_to_new(
    classifier,
    test: FeatureSet,
    classnames: tuple[str, ...],
    n_base: int,
    ctx: FitContext,
    batch_size: int = 8192,
) -> dict[str, Any]:
    """CoCoOp's base-to-new scores: the base classes' metrics plus ``base_top1``, ``new_top1`` and their
    harmonic mean. New classes are scored with ``classifier.for_classes`` (the learned parameters on the
    new class names); a classifier tied to its training labels has none, and ``new_top1`` is ``None``.
    """
    metrics = score(classifier, labels_subset(test, 0, n_base), ctx.device, batch_size)
    base, new = metrics["top1"], None
    if hasattr(classifier, "for_classes"):
        retargeted = classifier.for_classes(classnames[n_base:], ctx)
        new = score(retargeted, labels_subset(test, n_base, len(classnames)), ctx.device, batch_size)["top1"]
    harmonic = None if new is None else (2 * base * new / (base + new) if base + new > 0 else 0.0)
    return {**metrics, "base_top1": base, "new_top1": new, "harmonic_mean": harmonic}
