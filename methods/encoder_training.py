"""Encoder-in-the-loop training: live augmentation, the encoders inside the step, hooks into open_clip.

Every other method trains on cached frozen features. The methods here (CLIP-LoRA, MaPLe, and CoOp /
CLIP-Adapter with ``augment="live"``) need the image encoder in the training step, so this module
gives them:

- **Live views** (:func:`live_view`, :func:`pixel_batches`): Dassl's training transform
  (random-resized-crop (0.08, 1) + flip, the backbone's interpolation and normalisation) drawn
  fresh every epoch through DataLoader workers. Each (epoch, image) crop is seeded by
  ``derive_seed(seed, "live", epoch)`` and the image path (:class:`bench.images.ImageViews`), so a
  run is reproducible whatever the worker count. ``augment=False`` gives the centre view, exactly
  the pixels the feature cache encodes.
- **The encoders in the step** (:func:`image_features`): channels-last pixels and the backbone's
  autocast (bf16 on CUDA) as extraction does, gradients on; open_clip's own gradient
  checkpointing (:func:`grad_checkpointing`) where memory needs it.
- **Hooks that wrap open_clip's modules** (:func:`wrapped`, :func:`pre_hooks`): an attention module
  swapped for a wrapper holding the original (LoRA), or forward pre-hooks on transformer blocks
  and ``ln_pre`` (MaPLe's deep prompts). Both are installed for the duration of a ``with`` block and
  removed after it, so the shared frozen backbone is never left modified.
- **The loop** (:func:`train_steps`): optimiser steps over live batches; only ``loss.detach()`` is
  kept between steps, so no autograd graph (and no activation) survives a step.
- **Scoring support** (:func:`encode_source`): a classifier's adapted encoder over a whole image
  set, batched, for the runner's scoring.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import replace

import torch
import torch.nn.functional as F

from bench.errors import BenchError, NonFiniteError
from bench.images import CENTER, ImageViews, ViewSpec
from bench.methods.base import FeatureSet, ImageSource, check_choice
from bench.seeding import derive_seed

AUGMENTS = ("cached", "live")
PRECISIONS = ("auto", "fp16")  # the backbone's autocast (bf16 on CUDA, fp32 on CPU); the official codes' fp16
EVAL_IMAGE_BATCH = 256  # images per forward when scoring through an adapted encoder


def loader_workers(device: torch.device) -> int:
    """DataLoader processes: none on the CPU (decoding competes with the step for the same cores), up to 8
    on CUDA (Dassl's ``NUM_WORKERS``)."""
    return 0 if device.type != "cuda" else min(8, os.cpu_count() or 1)


def live_view(
    seed: int, epoch: int, augment: bool = True, scale: tuple[float, float] = (0.08, 1.0)
) -> ViewSpec:
    """The view of every support image in ``epoch``: one fresh random crop (``augment``) or the centre view."""
    if not augment:
        return CENTER
    return replace(ViewSpec.augment(1, seed=derive_seed(seed, "live", epoch)), scale=tuple(scale))


def pixel_batches(
    source: ImageSource, view: ViewSpec, order: Sequence[torch.Tensor], device: torch.device
) -> Iterator[torch.Tensor]:
    """(B, 3, S, S) pixels of each index batch of ``order``, decoded and augmented by DataLoader workers."""
    dataset = ImageViews(source.root, list(source.paths), source.preprocessing, view)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=[b.tolist() for b in order],
        num_workers=loader_workers(device),
        pin_memory=device.type == "cuda",
    )
    for views, errors in loader:
        bad = [e for e in errors if e]
        if bad:
            raise BenchError(bad[0])
        yield views[:, 0]


def to_device(pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Pixels on ``device``, channels-last on CUDA (as :meth:`Backbone.encode_images` feeds the encoder)."""
    pixels = pixels.to(device, non_blocking=True)
    return pixels.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else pixels


def encoder_autocast(backbone, precision: str = "auto"):
    """The autocast an encoder-in-the-loop forward runs under: ``"auto"`` the backbone's (bf16 on CUDA,
    off on the CPU, as extraction); ``"fp16"`` float16 autocast on any device, as the official CLIP-LoRA
    (``torch.autocast(dtype=torch.float16)``) and MaPLe (``PREC: fp16``) run."""
    if precision == "fp16":
        return torch.autocast(device_type=backbone.device.type, dtype=torch.float16)
    return backbone.autocast()


def check_precision(precision: str, method: str) -> None:
    check_choice(method, "precision", precision, PRECISIONS, see="docs/fidelity.md")


def image_features(backbone, pixels: torch.Tensor, precision: str = "auto") -> torch.Tensor:
    """(B, 3, S, S) -> (B, D) float32 raw features through ``backbone.model.encode_image`` with gradients
    (whatever hooks are installed), under :func:`encoder_autocast`."""
    with encoder_autocast(backbone, precision):
        return backbone.model.encode_image(to_device(pixels, backbone.device)).float()


@torch.no_grad()
def encode_source(
    encode: Callable[[torch.Tensor], torch.Tensor],
    source: ImageSource,
    device: torch.device,
    view: ViewSpec = CENTER,
    batch_size: int = EVAL_IMAGE_BATCH,
) -> torch.Tensor:
    """(N, D) float32 on the CPU: ``encode`` ((B, 3, S, S) -> (B, D)) over every image of ``source``."""
    order = list(torch.arange(len(source.paths)).split(batch_size))
    chunks = [
        encode(to_device(pixels, device)).float().cpu()
        for pixels in pixel_batches(source, view, order, device)
    ]
    return torch.cat(chunks) if chunks else torch.empty(0, 0)


def encoded_set(
    encode: Callable[[torch.Tensor], torch.Tensor], data: FeatureSet, device: torch.device
) -> FeatureSet:
    """``data`` with its features replaced by ``encode`` over its images (centre view): what an adapted
    encoder sees at test time. Raises when the set carries no images."""
    if data.images is None:
        raise BenchError(
            "this classifier adapted the image encoder, and the feature set it is scored on carries "
            "no images",
            where="scoring",
            fix="score it through the runner (bench run)",
        )
    features = encode_source(encode, data.images, device)
    return FeatureSet(features[None], data.labels, data.images)


@contextmanager
def grad_checkpointing(model: torch.nn.Module, enable: bool) -> Iterator[None]:
    """open_clip's own activation checkpointing of both transformers for the ``with`` block (then restored)."""
    towers = [
        t
        for t in (
            getattr(model, "transformer", None),
            getattr(getattr(model, "visual", None), "transformer", None),
            getattr(getattr(model, "text", None), "transformer", None),
        )
        if hasattr(t, "grad_checkpointing")
    ]
    before = [t.grad_checkpointing for t in towers]
    for tower in towers:
        tower.grad_checkpointing = enable or tower.grad_checkpointing
    try:
        yield
    finally:
        for tower, flag in zip(towers, before, strict=True):
            tower.grad_checkpointing = flag


@contextmanager
def wrapped(replacements: Sequence[tuple[torch.nn.Module, str, torch.nn.Module]]) -> Iterator[None]:
    """Swap ``parent.name`` for a wrapper module for the ``with`` block, then put the original back.

    Args:
        replacements: (parent module, attribute name, wrapper) triples; each wrapper holds the original.
    """
    originals = [(parent, name, getattr(parent, name)) for parent, name, _ in replacements]
    try:
        for parent, name, wrapper in replacements:
            setattr(parent, name, wrapper)
        yield
    finally:
        for parent, name, original in originals:
            setattr(parent, name, original)


@contextmanager
def pre_hooks(hooks: Sequence[tuple[torch.nn.Module, Callable]]) -> Iterator[None]:
    """Forward pre-hooks (``hook(module, args, kwargs) -> (args, kwargs)``) for the ``with`` block."""
    with ExitStack() as stack:
        for module, hook in hooks:
            stack.callback(module.register_forward_pre_hook(hook, with_kwargs=True).remove)
        yield


def text_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The text transformer's residual blocks (the CLIP itself or ``model.text``)."""
    tower = model.text if hasattr(model, "text") else model
    return tower.transformer.resblocks


def vision_blocks(model: torch.nn.Module) -> torch.nn.ModuleList | None:
    """The vision transformer's residual blocks, or ``None`` for a ResNet image tower."""
    transformer = getattr(model.visual, "transformer", None)
    return transformer.resblocks if transformer is not None else None


@contextmanager
def seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global RNG for the ``with`` block and restore it after: dropout draws from it (the
    library insists), and the cell's seed must still decide every draw."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def epoch_order(
    n: int, batch_size: int, generator: torch.Generator, drop_last: bool = True
) -> list[torch.Tensor]:
    """One epoch's shuffled index batches. ``drop_last``: Dassl's rule (drop the partial batch only when a
    full one exists); ``False``: keep it (CLIP-LoRA's loader, ``drop_last=False``)."""
    from bench.methods.training import batches

    if drop_last:
        return batches(n, batch_size, generator)
    return list(torch.randperm(n, generator=generator).split(batch_size))


def train_steps(
    params: Sequence[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    source: ImageSource,
    labels: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    seed: int,
    device: torch.device,
    augment: bool = True,
    scale: tuple[float, float] = (0.08, 1.0),
    max_steps: int | None = None,
    drop_last: bool = True,
    epoch_lr: Callable[[int], float] | None = None,
    after_step: Callable[[int], None] | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
    work: int = 0,
    scaler: torch.amp.GradScaler | None = None,
) -> list[float]:
    """Optimiser steps on ``loss_fn(pixels (B, 3, S, S), labels (B,))`` over live views; returns the mean
    loss per epoch.

    Each epoch shuffles the support set (``generator``), draws every image's view for that epoch
    (:func:`live_view`) and steps once per batch. Only the detached loss is kept after a step.

    Args:
        labels: (N,) int64, the rows of ``source``.
        max_steps: stop after this many steps in all (CLIP-LoRA counts iterations, not epochs).
        epoch_lr: the learning rate of each 0-based epoch (Dassl's per-epoch schedule), set before it.
        after_step: called with the 0-based step index after every optimiser step (per-step schedules).
        work: multiply-adds per step, roughly (:func:`step_work`): a small problem trains on one CPU thread.
        scaler: dynamic loss scaling for float16 forwards (CLIP-LoRA's ``GradScaler``); a step whose scaled
            gradients overflow is skipped, as torch's scaler does.
    """
    from bench.methods.training import cpu_threads_for

    labels = labels.to(device)
    losses: list[float] = []
    step = 0
    with torch.enable_grad(), cpu_threads_for(device, work):
        for epoch in range(epochs):
            if max_steps is not None and step >= max_steps:
                break
            if epoch_lr is not None:
                for group in optimizer.param_groups:
                    group["lr"] = epoch_lr(epoch)
            order = epoch_order(len(labels), batch_size, generator, drop_last)
            view = live_view(seed, epoch, augment, scale)
            total, count = torch.zeros((), device=device), 0
            for index, pixels in zip(order, pixel_batches(source, view, order, device), strict=False):
                loss = loss_fn(pixels, labels[index.to(device)])
                optimizer.zero_grad(set_to_none=True)
                if scaler is None:
                    loss.backward()
                    optimizer.step()
                else:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                total, count = total + loss.detach() * len(index), count + len(index)
                del loss  # the graph of this step goes now, not after the next forward
                if after_step is not None:
                    after_step(step)
                step += 1
                if max_steps is not None and step >= max_steps:
                    break
            losses.append(float(total / max(count, 1)))
            if not math.isfinite(losses[-1]):
                raise NonFiniteError(f"diverged at epoch {epoch + 1} (training loss {losses[-1]})")
            if on_epoch_end is not None:
                on_epoch_end(epoch)
    return losses


def step_work(model: torch.nn.Module, batch_size: int, n_classes: int) -> int:
    """Rough multiply-adds of one encoder-in-the-loop step: every image-tower weight once per image, every
    text-transformer weight once per class prompt (token embeddings excluded: a lookup, not a product)."""
    visual = sum(p.numel() for p in model.visual.parameters())
    text = sum(p.numel() for p in text_blocks(model).parameters())
    return batch_size * visual + n_classes * text


def epochs_for_steps(n: int, batch_size: int, steps: int, drop_last: bool = False) -> int:
    """Epochs a loader over ``n`` images needs to give ``steps`` batches."""
    from bench.methods.training import batches_per_epoch

    per_epoch = batches_per_epoch(n, batch_size) if drop_last else math.ceil(n / batch_size)
    return math.ceil(steps / max(per_epoch, 1))


def cosine_annealing(step: int, total: int, lr: float, eta_min: float) -> float:
    """torch's ``CosineAnnealingLR(T_max=total, eta_min)`` after ``step`` scheduler steps."""
    return eta_min + (lr - eta_min) * (1 + math.cos(math.pi * step / total)) / 2


def live_features(backbone, source: ImageSource, view: ViewSpec) -> torch.Tensor:
    """(N, D) frozen-encoder features of one view of every image (CoOp / CLIP-Adapter ``augment="live"``),
    in the batches the feature cache would use, so ``view = CENTER`` reproduces the cached centre view."""
    return encode_source(backbone.encode_images, source, backbone.device, view, batch_size=128)


def check_augment(augment: str, method: str) -> None:
    check_choice(method, "augment", augment, AUGMENTS)


def normalised_logits(scale: float, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """scale · cos(image, text): (B, D), (C, D) -> (B, C) float32."""
    return scale * F.normalize(image.float(), dim=-1) @ F.normalize(text.float(), dim=-1).t()


def train_on_live_features(
    params: list[torch.nn.Parameter],
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    train: FeatureSet,
    epochs: int,
    recipe,
    generator: torch.Generator,
    backbone,
    seed: int,
    on_epoch_end: Callable[[int], None] | None = None,
    scale: tuple[float, float] = (0.08, 1.0),
) -> list[float]:
    """:func:`bench.methods.training.train_on_features` with live augmentation (``augment="live"``): every
    epoch, each support image is encoded anew by the frozen encoder through one fresh random crop (what
    Dassl's loader does every epoch), instead of one of its cached views being drawn.

    The encoder is frozen, so encoding an epoch's crops up front and then stepping through shuffled
    batches computes what re-encoding each batch would. Returns the mean loss per epoch.

    Args:
        logits_fn: (B, D) raw image features -> (B, C) logits. train: the support set with its images.
    """
    from bench.methods.training import check_loss, dassl_lr, make_optimizer, run_epoch

    if train.images is None:
        raise BenchError(
            "live augmentation needs the support images and got none",
            where="FewShotData.train.images",
            fix="run it through the runner (bench run), which attaches the images",
        )
    device = backbone.device
    optimizer = make_optimizer(params, recipe)
    labels = train.labels.to(device)
    losses: list[float] = []

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits_fn(x), y)

    with torch.enable_grad():
        for epoch in range(epochs):
            for group in optimizer.param_groups:
                group["lr"] = dassl_lr(epoch, epochs, recipe)
            crops = (
                live_features(backbone, train.images, live_view(seed, epoch, True, scale))
                .clone()[None]
                .to(device)
            )
            losses.append(float(run_epoch(optimizer, loss_fn, crops, labels, recipe.batch_size, generator)))
            check_loss(losses[-1], epoch)
            if on_epoch_end is not None:
                on_epoch_end(epoch)
    return losses
