"""Cross-modal linear probing (Lin et al., CVPR 2023, "Multimodality Helps Unimodality").

Official code: linzhiqiu/cross_modal_adaptation ``train.py``, ``engine/optimizer/default.py``
(``HYPER_DICT['linear']``), ``engine/model/head.py``, ``engine/model/logit.py``, ``eval.py``; the README's
command for the paper's numbers (``--modality cross_modal --classifier_head linear --classifier_init
zeroshot --logit 4.60517 --hyperparams linear --text-augmentation hand_crafted``).

- Head: ``logits = scale · f̂ Wᵀ`` (``LogitHead``: the input normalised, W (C, D) not, no bias; scale
  exp(4.60517) = 100), W initialised from the zero-shot weights: per class the mean of its raw template
  text features, normalised (``get_zero_shot_weights``).
- Samples: the support images' features and, as extra samples of their class, the text features of
  every (template, class) prompt (``hand_crafted``: Tip-Adapter's templates, i.e. the CoOp template;
  ImageNet CoOp's 7).
- Each iteration draws half the batch from the images and half from the texts (``CROSS_MODAL_BATCH_RATIO
  = 0.5``), each from its own shuffled loader with ``drop_last``, restarted when exhausted.
- AdamW (betas 0.9, 0.999), 12,800 iterations, linear warm-up over 50 iterations from 1e-5, then cosine.
- Every 100 iterations (iteration 0 included) the few-shot val accuracy is taken; the best (strict ``>``)
  weights are kept.
- Hyperparameters: lr ∈ {1e-3, 1e-4} × weight decay ∈ {0, 1e-2, 1e-4} × batch ∈ {8, 32} (a batch
  size is skipped unless its image and text halves are smaller than their datasets), the best by val
  accuracy (first in lr → wd → batch order on ties, as ``eval.py``).

``text_samples = False`` is the paper's uni-modal probe: the whole batch from the images, nothing else
changed. A field set to a value fixes it; ``None`` searches its official grid.

Deviations (docs/fidelity.md): the image samples are the centre view only (the paper's run adds one
horizontally flipped centre crop per image, ``--image-augmentation flip``); ``scale`` is the backbone's
logit scale (100 for OpenAI weights, as the code's constant).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from bench.errors import BenchError
from bench.methods.base import FewShotData, FitContext, Needs, check_choice, prompt_templates
from bench.methods.tip_adapter import default_prompts
from bench.methods.training import cpu_threads_for
from bench.seeding import derive_seed, torch_generator

LR_GRID = (1e-3, 1e-4)  # HYPER_DICT['linear']
WEIGHT_DECAY_GRID = (0.0, 1e-2, 1e-4)
BATCH_GRID = (8, 32)
TEXT_RATIO = 0.5  # train.py CROSS_MODAL_BATCH_RATIO
INITS = ("zeroshot", "random")


@dataclass(frozen=True)
class CrossModalLpConfig:
    BOUNDS: ClassVar[dict] = {"iters": (0, None), "warmup_iters": (0, None), "eval_every": (1, None)}
    lr: float | None = None  # None: searched over LR_GRID on val
    weight_decay: float | None = None  # None: searched over WEIGHT_DECAY_GRID
    batch_size: int | None = None  # None: searched over BATCH_GRID (images + texts per step)
    iters: int = 12800  # HYPER_DICT['linear']['max_iter']
    warmup_iters: int = 50  # linear warm-up from warmup_lr
    warmup_lr: float = 1e-5
    eval_every: int = 100  # train.py EVAL_FREQ: val accuracy for the best-iteration choice
    text_samples: bool = True  # False: the uni-modal probe
    init: str = "zeroshot"  # "zeroshot" (README) or "random" (nn.Linear's default init)
    prompts: str = "coop"  # default_config: ImageNet "coop_ensemble" (hand_crafted templates)


def lr_factor(step: int, cfg: CrossModalLpConfig) -> float | None:
    """lr multiplier of 0-based ``step`` (None: the absolute warm-up lr of step 0), as the code's
    ``LinearWarmupScheduler`` + ``CosineAnnealingLR(max_iter)``: warmup_lr at step 0, lr·step/warmup up to
    the end of the warm-up, then lr·½(1 + cos(π (step − warmup) / iters))."""
    if step < cfg.warmup_iters:
        return None if step == 0 else step / cfg.warmup_iters
    return 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup_iters) / cfg.iters))


def loader_batches(n: int, batch_size: int, steps: int, generator: torch.Generator) -> torch.Tensor:
    """(steps, batch_size) indices of a shuffled ``drop_last`` loader over n items, reshuffled when exhausted."""
    per_pass = n // batch_size
    passes = math.ceil(steps / per_pass)
    order = torch.stack(
        [torch.randperm(n, generator=generator)[: per_pass * batch_size] for _ in range(passes)]
    )
    return order.view(passes * per_pass, batch_size)[:steps]


def valid_batch_sizes(sizes: tuple[int, ...], n_images: int, n_texts: int, text_samples: bool) -> list[int]:
    """``get_valid_batch_sizes``: each half strictly smaller than its dataset (an empty half always fits)."""
    out = []
    for size in sizes:
        text = int(size * TEXT_RATIO) if text_samples else 0
        if (text == 0 or text < n_texts) and (size - text == 0 or size - text < n_images):
            out.append(size)
    return out


def _fallback_batch_size(size: int, n_images: int, n_texts: int, text_samples: bool) -> list[int]:
    """The grid's smallest batch halved until both halves fit (the official code has no answer here: its
    grid is empty for support sets this small, so it cannot train at all)."""
    while size > 1 and not valid_batch_sizes((size,), n_images, n_texts, text_samples):
        size //= 2
    return valid_batch_sizes((size,), n_images, n_texts, text_samples)


@dataclass(frozen=True)
class Hyper:
    lr: float
    weight_decay: float
    batch_size: int


class NormalizedLinear(torch.nn.Module):
    """``LogitHead``: logits = scale · normalise(f) · Wᵀ, with W (C, D) as trained (not normalised)."""

    def __init__(self, weight: torch.Tensor, scale: float):
        super().__init__()
        self.register_buffer("weight", weight)
        self.scale = scale

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(features.float(), dim=-1) @ self.weight.t()


def train_heads(
    init: torch.Tensor,
    hypers: list[Hyper],
    images: torch.Tensor,
    image_labels: torch.Tensor,
    texts: torch.Tensor | None,
    text_labels: torch.Tensor | None,
    val: torch.Tensor,
    val_labels: torch.Tensor,
    cfg: CrossModalLpConfig,
    scale: float,
    seed: int,
) -> list[tuple[float, int, torch.Tensor]]:
    """Train one head per hyperparameter setting of one batch size, side by side as a (G, C, D) stack; every
    setting draws its own batches. The cross-entropy gradient and AdamW's update (``torch.optim.AdamW``'s
    arithmetic, per-setting lr and weight decay) are written out so that one step is a few tensor ops for
    all G settings: 12,800 steps of Python-level optimiser calls would dominate the cell.

    Args:
        init: (C, D) initial weights. images: (N, D), texts: (T, D) or None, val: (V, D), all normalised.

    Returns:
        per setting: (best val accuracy, its iteration, its (C, D) weights).
    """
    batch, n_settings, n_classes = hypers[0].batch_size, len(hypers), init.shape[0]
    n_text = int(batch * TEXT_RATIO) if texts is not None else 0
    n_image = batch - n_text
    device = init.device
    index = []
    for h in hypers:
        generator = torch_generator(
            derive_seed(seed, "cross_modal_lp", "batches", h.lr, h.weight_decay, h.batch_size)
        )
        index.append(
            (
                loader_batches(len(images), n_image, cfg.iters, generator) if n_image else None,
                loader_batches(len(texts), n_text, cfg.iters, generator) if n_text else None,
            )
        )
    pool = images if texts is None else torch.cat([images, texts])
    pool_labels = image_labels if texts is None else torch.cat([image_labels, text_labels])
    # (iters, G, B) rows of `pool`: each setting's image half, then its text half
    rows = (
        torch.stack(
            [
                torch.cat([i for i in (img, None if txt is None else txt + len(images)) if i is not None], 1)
                for img, txt in index
            ],
            1,
        ).to(device)
        if cfg.iters
        else None
    )
    lr = torch.tensor([h.lr for h in hypers], device=device).view(-1, 1, 1)
    wd = torch.tensor([h.weight_decay for h in hypers], device=device).view(-1, 1, 1)
    beta1, beta2, eps = 0.9, 0.999, 1e-8  # AdamW defaults, engine/optimizer/optim.py ADAM_BETAS
    weight = init.expand(n_settings, -1, -1).clone()
    exp_avg, exp_avg_sq = torch.zeros_like(weight), torch.zeros_like(weight)
    best: list[tuple[float, int, torch.Tensor]] = [(-1.0, -1, init.clone()) for _ in hypers]
    for step in range(cfg.iters):
        factor = lr_factor(step, cfg)
        step_lr = torch.full_like(lr, cfg.warmup_lr) if factor is None else lr * factor
        x, y = pool[rows[step]], pool_labels[rows[step]]  # (G, B, D), (G, B)
        probs = (scale * torch.bmm(x, weight.transpose(1, 2))).softmax(-1)  # (G, B, C)
        probs -= F.one_hot(y, n_classes).to(probs.dtype)
        grad = scale / batch * torch.bmm(probs.transpose(1, 2), x)  # d(mean CE)/dW, (G, C, D)
        t = step + 1
        weight.mul_(1 - step_lr * wd)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**t)).add_(eps)
        weight.addcdiv_(exp_avg, denom * (1 - beta1**t) / step_lr, value=-1.0)
        if step % cfg.eval_every == 0:
            accuracy = ((val @ weight.transpose(1, 2)).argmax(2) == val_labels).double().mean(1)
            for g, acc in enumerate(accuracy.tolist()):
                if acc > best[g][0]:
                    best[g] = (acc, step, weight[g].clone())
    if cfg.iters == 0:
        accuracy = float(((val @ init.t()).argmax(1) == val_labels).double().mean())
        best = [(accuracy, -1, init.clone()) for _ in hypers]
    return best


class CrossModalLp:
    name = "cross_modal_lp"
    version = "1"
    trainable = True
    Config = CrossModalLpConfig

    def default_config(self, dataset: str, shots: int) -> CrossModalLpConfig:
        return CrossModalLpConfig(prompts=default_prompts(dataset))

    def needs(self, cfg: CrossModalLpConfig) -> Needs:
        return Needs(train_views=0)

    def search_space(self, trial: Any, dataset: str, shots: int, cfg: CrossModalLpConfig) -> dict[str, Any]:
        """``--tune``: lr and weight decay over the official grid's ranges (log scale) and the batch size,
        each trial one setting (the internal grid search is then off)."""
        return {
            "lr": trial.suggest_float("lr", 1e-5, 1e-2, log=True),
            "weight_decay": trial.suggest_float("weight_decay", 1e-5, 1e-1, log=True),
            "batch_size": trial.suggest_categorical("batch_size", list(BATCH_GRID)),
        }

    def fit(self, data: FewShotData, cfg: CrossModalLpConfig, ctx: FitContext) -> NormalizedLinear:
        check_choice(self.name, "init", cfg.init, INITS)
        device = ctx.device
        text = (
            ctx.text_features(prompt_templates(data, cfg.prompts), data.classnames).to(device).float()
        )  # (T, C, D)
        n_classes, dim = data.n_classes, text.shape[-1]
        if cfg.init == "zeroshot":
            init = F.normalize(
                text.mean(0), dim=-1
            )  # get_zero_shot_weights: mean of raw features, normalised
        else:  # nn.Linear's default init, U(-1/sqrt(D), 1/sqrt(D))
            generator = torch_generator(derive_seed(ctx.seed, "cross_modal_lp", "init"))
            init = ((torch.rand(n_classes, dim, generator=generator) * 2 - 1) / math.sqrt(dim)).to(device)
        images = F.normalize(data.train.center.to(device).float(), dim=-1)
        image_labels = data.train.labels.to(device)
        texts = text_labels = None
        if cfg.text_samples:
            texts = F.normalize(text.reshape(-1, dim), dim=-1)
            text_labels = torch.arange(n_classes, device=device).repeat(text.shape[0])
        sizes = valid_batch_sizes(
            (cfg.batch_size,) if cfg.batch_size else BATCH_GRID,
            len(images),
            0 if texts is None else len(texts),
            cfg.text_samples,
        )
        if not sizes:  # tiny sets (base2new at 1-2 shots), or a tuning trial's size: halved until it fits
            sizes = _fallback_batch_size(
                cfg.batch_size or min(BATCH_GRID),
                len(images),
                0 if texts is None else len(texts),
                cfg.text_samples,
            )
            ctx.record("batch_size_fallback", sizes)
        if not sizes:
            raise BenchError(
                f"no batch size fits {len(images)} support images"
                + (f" and {len(texts)} text samples" if texts is not None else ""),
                where="cross_modal_lp.batch_size",
                fix="set a smaller batch_size (each half must be "
                "smaller than its dataset, as the official code requires)",
            )
        val = F.normalize(data.val.center.to(device).float(), dim=-1)
        val_labels = data.val.labels.to(device)
        scale = ctx.logit_scale
        results: list[tuple[Hyper, tuple[float, int, torch.Tensor]]] = []
        lrs = (cfg.lr,) if cfg.lr else LR_GRID
        wds = (cfg.weight_decay,) if cfg.weight_decay is not None else WEIGHT_DECAY_GRID
        work = max(sizes) * n_classes * dim * len(lrs) * len(wds) * 3
        with cpu_threads_for(device, work):
            for size in sizes:  # one batch size at a time: its settings train side by side
                hypers = [Hyper(lr, wd, size) for lr, wd in itertools.product(lrs, wds)]
                trained = train_heads(
                    init,
                    hypers,
                    images,
                    image_labels,
                    texts,
                    text_labels,
                    val,
                    val_labels,
                    cfg,
                    scale,
                    ctx.seed,
                )
                results += list(zip(hypers, trained, strict=True))
        order = {(lr, wd, size): i for i, (lr, wd, size) in enumerate(itertools.product(lrs, wds, sizes))}
        results.sort(
            key=lambda r: order[(r[0].lr, r[0].weight_decay, r[0].batch_size)]
        )  # eval.py's sweep order
        best_hyper, (best_acc, best_step, weight) = max(results, key=lambda r: r[1][0])  # first of the best
        ctx.record(
            "search",
            [
                {
                    "lr": h.lr,
                    "weight_decay": h.weight_decay,
                    "batch_size": h.batch_size,
                    "val_top1": acc,
                    "best_iter": step,
                }
                for h, (acc, step, _) in results
            ],
        )
        ctx.record(
            "chosen",
            {
                "lr": best_hyper.lr,
                "weight_decay": best_hyper.weight_decay,
                "batch_size": best_hyper.batch_size,
                "val_top1": best_acc,
                "best_iter": best_step,
            },
        )
        return NormalizedLinear(weight, scale)
