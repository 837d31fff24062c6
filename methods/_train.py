"""The CoOp/Dassl optimisation recipe, shared by every method that trains on cached features.

CoOp's configs (``configs/trainers/CoOp/rn50*.yaml`` + Dassl defaults): SGD, lr 0.002,
momentum 0.9, weight decay 5e-4, batch 32, cosine schedule over the epochs, one warm-up
epoch at a constant 1e-5. Dassl's ``ConstantWarmupScheduler`` hands over to the cosine
schedule after the warm-up without stepping it, so epoch e >= 1 runs at
``lr · ½(1 + cos(π (e - 1) / epochs))``. The train loader drops the last incomplete batch
only when the data holds at least one full batch (Dassl's fix for EuroSAT 1/2-shot, where
``drop_last`` left the loader empty and nothing was trained).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.methods.base import FeatureSet

IMAGENET_LIKE = frozenset({"imagenet"})


def coop_epochs(dataset: str, shots: int) -> int:
    """CoOp's epochs by shots (``COOP.md``): 50 for 1 shot, 100 for 2/4, 200 for 8/16; ImageNet 50."""
    if dataset in IMAGENET_LIKE or shots <= 1:
        return 50
    return 100 if shots <= 4 else 200


@dataclass(frozen=True)
class SGDRecipe:
    """Optimiser and schedule; the defaults are CoOp's."""

    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 32
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5


def dassl_lr(epoch: int, epochs: int, recipe: SGDRecipe) -> float:
    """Learning rate of 0-based ``epoch`` under Dassl's constant warm-up + cosine schedule."""
    if epoch < recipe.warmup_epochs:
        return recipe.warmup_lr
    return recipe.lr * 0.5 * (1 + math.cos(math.pi * (epoch - recipe.warmup_epochs) / epochs))


def batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch's shuffled index batches; the last partial batch is dropped only if a full one exists."""
    order = torch.randperm(n, generator=generator)
    drop_last = n >= batch_size
    stop = (n // batch_size) * batch_size if drop_last else n
    return [order[i:i + batch_size] for i in range(0, stop, batch_size)]


def train_on_features(
    params: list[torch.nn.Parameter],
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    train: FeatureSet,
    epochs: int,
    recipe: SGDRecipe,
    generator: torch.Generator,
    device: torch.device,
    on_epoch_end: Callable[[int], None] | None = None,
) -> list[float]:
    """Train ``params`` by cross-entropy on ``logits_fn(features)``; returns the mean loss per epoch.

    Each epoch every image is seen once, through one of its V cached views drawn at random
    (a fresh augmentation per epoch, as with live augmentation).

    Args:
        logits_fn: (B, D) raw image features -> (B, C) logits.
        train: support set, features (V, N, D).
    """
    features = train.features.to(device)
    labels = train.labels.to(device)
    optimizer = torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    losses: list[torch.Tensor] = []
    with torch.enable_grad():  # callers may hold no_grad / inference_mode
        for epoch in range(epochs):
            for group in optimizer.param_groups:
                group["lr"] = dassl_lr(epoch, epochs, recipe)
            losses.append(_train_epoch(optimizer, logits_fn, features, labels, recipe.batch_size, generator))
            if on_epoch_end is not None:
                on_epoch_end(epoch)
    return [float(loss) for loss in losses]


def _train_epoch(optimizer: torch.optim.Optimizer, logits_fn: Callable[[torch.Tensor], torch.Tensor],
                 features: torch.Tensor, labels: torch.Tensor, batch_size: int,
                 generator: torch.Generator) -> torch.Tensor:
    """One pass over the support set, each image through a random one of its views; returns the mean loss."""
    n_views, n = features.shape[:2]
    device = features.device
    views = torch.randint(n_views, (n,), generator=generator).to(device)
    total, count = torch.zeros((), device=device), 0  # summed on device: no host sync per step
    for index in batches(n, batch_size, generator):
        index = index.to(device)
        loss = F.cross_entropy(logits_fn(features[views[index], index]), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total, count = total + loss.detach() * len(index), count + len(index)
    return total / max(count, 1)
