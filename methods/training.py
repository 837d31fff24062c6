"""The CoOp/Dassl optimisation recipe, shared by every method that trains on cached features.

CoOp's configs (``configs/trainers/CoOp/rn50*.yaml`` + Dassl defaults): SGD, lr 0.002,
momentum 0.9, weight decay 5e-4, batch 32, cosine schedule over the epochs, one warm-up
epoch at a constant 1e-5. Dassl's ``ConstantWarmupScheduler`` hands over to the cosine
schedule after the warm-up without stepping it, so epoch e >= 1 runs at
``lr · ½(1 + cos(π (e - 1) / epochs))``. The train loader drops the last incomplete batch
only when the data holds at least one full batch (Dassl's fix for EuroSAT 1/2-shot, where
``drop_last`` left the loader empty and nothing was trained).

Augmentation comes from cached views: each epoch every support image is seen once, through
one of its V cached augmented views drawn at random (:func:`view_batches`). CLAP samples
its batches from the pool of all V·N augmented features instead (:func:`pool_batches`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from bench.errors import NonFiniteError
from bench.methods.base import FeatureSet, FitContext

IMAGENET_LIKE = frozenset({"imagenet"})
SMALL_PROBLEM = 50_000_000  # multiply-adds per step below which one CPU thread beats several

Batches = list[tuple[torch.Tensor, torch.Tensor]]
"""One epoch: (view indices, image indices) per batch, int64 on the CPU."""


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
    optimizer: str = (
        "sgd"  # "adam": Dassl's build_optimizer Adam (betas 0.9/0.999, L2 weight decay), as TaskRes trains
    )


def make_optimizer(params: list[torch.nn.Parameter], recipe: SGDRecipe) -> torch.optim.Optimizer:
    """The recipe's optimiser over ``params`` (Dassl's ``build_optimizer`` for ``sgd`` and ``adam``)."""
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay, betas=(0.9, 0.999))
    if recipe.optimizer != "sgd":
        raise ValueError(f"unknown optimizer {recipe.optimizer!r}")
    return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)


def dassl_lr(epoch: int, epochs: int, recipe: SGDRecipe) -> float:
    """Learning rate of 0-based ``epoch`` under Dassl's constant warm-up + cosine schedule."""
    if epoch < recipe.warmup_epochs:
        return recipe.warmup_lr
    return recipe.lr * 0.5 * (1 + math.cos(math.pi * (epoch - recipe.warmup_epochs) / epochs))


def batches_per_epoch(n: int, batch_size: int) -> int:
    """How many batches :func:`batches` makes of ``n`` items: full ones only, or one partial batch when
    ``n < batch_size`` (CoOp's old EuroSAT bug: ``drop_last`` left such a loader empty)."""
    return n // batch_size if n >= batch_size else min(n, 1)


def batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch's shuffled index batches; the last partial batch is dropped only if a full one exists."""
    order = torch.randperm(n, generator=generator)
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(batches_per_epoch(n, batch_size))]


def view_batches(n_views: int, n: int, batch_size: int, generator: torch.Generator) -> Batches:
    """Every image once, each through a random one of its ``n_views`` views (a fresh augmentation per epoch)."""
    views = torch.randint(n_views, (n,), generator=generator)
    return [(views[index], index) for index in batches(n, batch_size, generator)]


def pool_batches(n_views: int, n: int, batch_size: int, generator: torch.Generator) -> Batches:
    """CLAP's sampling: as many batches as Dassl's loader over the N images would give, drawn from
    a shuffle of the pool of all V·N augmented features (pool index p = view p // N, image p % N)."""
    order = torch.randperm(n_views * n, generator=generator)
    n_batches = n // batch_size if n >= batch_size else 1
    chunks = [order[i * batch_size : (i + 1) * batch_size] for i in range(n_batches)]
    return [(chunk // n, chunk % n) for chunk in chunks]


Sampler = Callable[[int, int, int, torch.Generator], Batches]


def train_on_features(
    params: list[torch.nn.Parameter],
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    train: FeatureSet,
    epochs: int,
    recipe: SGDRecipe,
    generator: torch.Generator,
    device: torch.device,
    on_epoch_end: Callable[[int], None] | None = None,
    *,
    penalty: Callable[[], torch.Tensor] | None = None,
    sampler: Sampler = view_batches,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> list[float]:
    """Train ``params`` with the recipe's optimiser (SGD by default) under Dassl's schedule; returns the
    mean loss per epoch.

    The loss is cross-entropy on ``logits_fn(features)`` plus ``penalty()`` when given (CLAP's
    constraint), or ``loss(features, labels)`` when given (a method's own objective, e.g. ProGrad's
    projected gradient); ``logits_fn`` then only serves the caller's reporting.

    Args:
        logits_fn: (B, D) raw image features -> (B, C) logits.
        train: support set, features (V, N, D).
        sampler: how an epoch's batches are drawn (:func:`view_batches` or :func:`pool_batches`).
        loss: (B, D) raw image features, (B,) labels -> scalar loss; replaces cross-entropy + penalty.
    """
    optimizer = make_optimizer(params, recipe)

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if loss is not None:
            return loss(x, y)
        value = F.cross_entropy(logits_fn(x), y)
        return value + penalty() if penalty is not None else value

    features, labels = train.features.to(device), train.labels.to(device)
    losses: list[torch.Tensor] = []
    with torch.enable_grad():  # callers may hold no_grad / inference_mode
        for epoch in range(epochs):
            for group in optimizer.param_groups:
                group["lr"] = dassl_lr(epoch, epochs, recipe)
            losses.append(
                run_epoch(optimizer, loss_fn, features, labels, recipe.batch_size, generator, sampler)
            )
            check_loss(losses[-1], epoch)
            if on_epoch_end is not None:
                on_epoch_end(epoch)
    return [float(loss) for loss in losses]


def run_epoch(
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    features: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    sampler: Sampler = view_batches,
    after_step: Callable[[], None] | None = None,
) -> torch.Tensor:
    """One epoch of optimiser steps on ``loss_fn(features (B, D), labels (B,))``; returns the mean loss.

    Args:
        features: (V, N, D) on the training device. labels: (N,).
        after_step: called after every optimiser step (a per-step LR scheduler).
    """
    n_views, n = features.shape[:2]
    device = features.device
    total, count = torch.zeros((), device=device), 0  # summed on device: no host sync per step
    for views, index in sampler(n_views, n, batch_size, generator):
        views, index = views.to(device), index.to(device)
        loss = loss_fn(features[views, index], labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step()
        total, count = total + loss.detach() * len(index), count + len(index)
    return total / max(count, 1)


def check_loss(loss: torch.Tensor | float, epoch: int) -> None:
    """Raise :class:`~bench.errors.NonFiniteError` ``diverged at epoch N`` (N = ``epoch + 1``) when an
    epoch's loss is NaN or infinite: a diverged fit never reaches scoring, so it is never an ``ok`` record."""
    value = float(loss)
    if not math.isfinite(value):
        raise NonFiniteError(f"diverged at epoch {epoch + 1} (training loss {value})")


@contextmanager
def cpu_threads_for(device: torch.device, work: int) -> Iterator[None]:
    """One torch thread while training a small problem on the CPU.

    On a busy machine torch's thread pool spins on tiny matrices (a 2-core CI box ran CLIP-Adapter's
    200 epochs 50x slower with 2 threads than with 1). ``work``: multiply-adds per step, roughly.
    """
    previous = torch.get_num_threads()
    single = device.type == "cpu" and work < SMALL_PROBLEM
    if single:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if single:
            torch.set_num_threads(previous)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy (fraction) of (N, C) logits against (N,) labels."""
    return float((logits.argmax(1) == labels.to(logits.device)).double().mean())


def val_reporter(
    ctx: FitContext, val_accuracy: Callable[[], float], epochs: int, every: int = 10
) -> Callable[[int], None] | None:
    """An ``on_epoch_end`` that hands the few-shot val accuracy to ``ctx.report`` every ``every`` epochs
    and after the last one, and the epoch count to ``ctx.progress_step``; ``None`` when nobody listens
    (no extra evaluation then)."""
    if ctx.report is None and ctx.progress_step is None:
        return None

    def on_epoch_end(epoch: int) -> None:
        if ctx.progress_step is not None:
            ctx.progress_step(epoch + 1, epochs, "epoch")
        if ctx.report is not None and ((epoch + 1) % every == 0 or epoch + 1 == epochs):
            with torch.no_grad():
                score = val_accuracy()
            ctx.report(epoch + 1, score)

    return on_epoch_end


def fit_each(fit: Callable, data: list, cfg: Any, ctxs: list) -> list:
    """``fit_many``'s fallback where cells cannot share steps: ``fit(data, cfg, ctx)`` per cell, each record
    saying so (``diagnostics.stacked_fit: false``), since the runner's ``batched_fit`` note would otherwise
    read as one stacked model."""
    out = []
    for d, c in zip(data, ctxs, strict=True):
        c.record("stacked_fit", False)
        out.append(fit(d, cfg, c))
    return out


def train_stacked(
    params: list[torch.Tensor],
    stacked_logits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    features: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    recipe: SGDRecipe,
    generators: list[torch.Generator],
    ctxs: list[FitContext],
    *,
    recipes: list[SGDRecipe] | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
) -> list[torch.Tensor]:
    """S cells trained as one stacked model (issue 22): each cell draws its own batches from its own
    generator, as :func:`train_on_features` would, and the cells' mean losses are summed so each cell's
    gradient is its own; one optimizer step serves all.

    ``recipes`` (one per cell; the trials of one cell, ``--trial-batch``) may differ in ``lr`` and
    ``weight_decay`` only: the cells are then stepped by :class:`MemberSGD`, SGD with a learning rate and
    a weight decay per cell, each following its own Dassl schedule.

    Args:
        stacked_logits: ``(views, index) -> (S, B, C)`` logits of the cells' batches; ``views`` and
            ``index`` are (S, B) int64 (the view and the image of each cell's batch rows).
        features: (S, V, N, D) cached support features; labels: (S, N).

    Returns:
        the per-epoch mean losses, each (S,).

    Raises:
        NonFiniteError: a cell's loss diverged (``diverged at epoch N``).
    """
    device = features.device
    member = recipes is not None and len(set(recipes)) > 1
    optimizer = MemberSGD(params, recipes, device) if member else make_optimizer(params, recipe)
    n_views, n = features.shape[1:3]
    cells = torch.arange(len(ctxs), device=device)[:, None]
    losses: list[torch.Tensor] = []
    for epoch in range(epochs):
        if isinstance(optimizer, MemberSGD):
            optimizer.set_epoch(epoch, epochs)
        else:
            for group in optimizer.param_groups:
                group["lr"] = dassl_lr(epoch, epochs, recipe)
        plans = [view_batches(n_views, n, recipe.batch_size, g) for g in generators]
        total, count = torch.zeros(len(ctxs), device=device), 0
        for steps in zip(*plans, strict=True):
            views = torch.stack([v for v, _ in steps]).to(device)
            index = torch.stack([i for _, i in steps]).to(device)
            y = labels[cells, index]
            out = stacked_logits(views, index)
            per_cell = F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1)
            optimizer.zero_grad(set_to_none=True)
            per_cell.sum().backward()
            optimizer.step()
            total, count = total + per_cell.detach() * index.shape[1], count + index.shape[1]
        losses.append(total / max(count, 1))
        for value in losses[-1]:
            check_loss(value, epoch)
        for c in ctxs:
            if c.progress_step is not None:
                c.progress_step(epoch + 1, epochs, "epoch")
        if on_epoch_end is not None:
            on_epoch_end(epoch)
    return losses


class MemberSGD:
    """SGD over stacked parameters (S, ...) whose S slices each have their own learning rate and weight
    decay: torch's SGD update (momentum, no dampening, L2 weight decay added to the gradient) with (S, 1, ...)
    tensors in place of its scalars, so a slice follows exactly the steps its own ``torch.optim.SGD`` would
    take, to float rounding.

    Args:
        recipes: one per slice; they may differ in ``lr`` and ``weight_decay`` only.
    """

    def __init__(self, params: list[torch.Tensor], recipes: list[SGDRecipe], device: torch.device):
        shared = {dataclasses.replace(r, lr=0.0, weight_decay=0.0) for r in recipes}
        if len(shared) != 1 or recipes[0].optimizer != "sgd":
            raise ValueError("per-member recipes may differ in lr and weight_decay only, with optimizer sgd")
        self.params, self.recipes, self.device = params, recipes, device
        self.momentum = recipes[0].momentum
        self.decay = torch.tensor([r.weight_decay for r in recipes], device=device)
        self.lr = torch.zeros(len(recipes), device=device)
        self.buffers: list[torch.Tensor | None] = [None] * len(params)

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Each slice's learning rate under its own Dassl schedule."""
        self.lr = torch.tensor([dassl_lr(epoch, epochs, r) for r in self.recipes], device=self.device)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            shape = (-1,) + (1,) * (p.dim() - 1)
            grad = p.grad + self.decay.view(shape) * p
            if self.momentum != 0:
                buf = self.buffers[i]
                if buf is None:
                    buf = self.buffers[i] = grad.clone()
                else:
                    buf.mul_(self.momentum).add_(grad)
                grad = buf
            p.sub_(self.lr.view(shape) * grad)
