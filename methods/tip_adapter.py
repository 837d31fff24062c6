"""Tip-Adapter(-F): a key-value cache of the support set added to zero-shot CLIP (-F: keys fine-tuned).

Zhang et al., "Tip-Adapter: Training-free Adaption of CLIP for Few-shot Classification", ECCV 2022
(arXiv 2207.09519).

With f̂ the normalised image feature, W the zero-shot classifier, K the cache keys (one per
support image: the mean of its augmented views' features, normalised) and V their one-hot
labels:

    logits = logit_scale · f̂·Wᵀ + α · exp(−β (1 − f̂·Kᵀ)) · V

α is the residual ratio and β the sharpness, as in the ECCV paper and the official code (an
earlier arXiv version swapped the two names; Tip-Adapter issue #4). ``tip_adapter`` is
training-free; ``tip_adapter_f`` makes the keys learnable and fine-tunes them.

Defaults and where they come from (official ``configs/*.yaml``, ``main.py``, ``utils.py``;
reference notes §2.5):
- Cache from ``train_views`` = 10 augmented views per image (``augment_epoch``) cropped with
  RandomResizedCrop scale (0.5, 1) + flip (``main.py``'s ``train_tranform``).
- Per-dataset initial (β, α), search ranges and Tip-F epochs (:data:`TIP_DEFAULTS`); datasets
  the paper does not cover get β = α = 1 and ranges [0.1, 10) (our choice, not the paper's).
- ``search_hp``: the (β, α) grid of ``utils.py:search_hp`` — 200 β values in [0.1, scale_β) and
  20 α values in [0.1, scale_α), the first best in β-major order — scored on the few-shot val
  split (min(K, 4) per class; Tip's code uses the dataset's val split, and the test set on
  ImageNet, which we never do).
- Tip-F: keys are a learnable ``Linear`` initialised to the cache; AdamW lr 0.001, eps 1e-4
  (weight decay: PyTorch's AdamW default 0.01), cosine schedule over all steps, batch 256 (last
  partial batch kept), 20 epochs (EuroSAT 100), cross-entropy with the initial (β, α). The epoch
  whose keys score best on the few-shot **val** split is kept (Tip's code picks it on test; the
  authors agreed in issue #11 that val is right), then (β, α) are searched on val as above.
- Zero-shot weights from the dataset's CoOp template; ImageNet uses the ``coop_ensemble`` prompt
  set, CoOp's 7 ``IMAGENET_TEMPLATES_SELECT`` (the paper ensembles prompts on ImageNet; Tip's
  ``datasets/imagenet.py`` lists the same 7).
- ``logit_scale`` from the backbone (100 for OpenAI weights; Tip hard-codes 100).

Deviation: Tip-F's training images are drawn from the same cached views as the cache (one per
image per epoch) instead of fresh live augmentations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from bench.methods.base import FewShotData, FitContext, Needs, check_choice, embed_classes, prompt_templates
from bench.methods.training import Batches, accuracy, check_loss, cpu_threads_for, run_epoch
from bench.seeding import derive_seed, torch_generator

TIP_AUGMENT_SCALE = (0.5, 1.0)
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}


def train_dtype(precision: str, method: str) -> torch.dtype:
    """The dtype a method trains its parameters in: ``"fp32"`` (ours) or ``"fp16"`` (official codes that
    train in CLIP's half precision: Tip-Adapter-F, LP++)."""
    check_choice(method, "precision", precision, PRECISIONS, see="docs/fidelity.md")
    return PRECISIONS[precision]


@dataclass(frozen=True)
class TipDefaults:
    """One row of Tip-Adapter's ``configs/<dataset>.yaml``."""

    init_beta: float
    init_alpha: float
    scale_beta: float
    scale_alpha: float
    epochs: int = 20


TIP_DEFAULTS = {
    "imagenet": TipDefaults(1.0, 1.17, 7.0, 3.0),
    "caltech101": TipDefaults(1.0, 3.0, 12.0, 5.0),
    "dtd": TipDefaults(1.0, 2.0, 13.0, 13.0),
    "eurosat": TipDefaults(1.0, 2.0, 12.0, 10.0, epochs=100),
    "fgvc_aircraft": TipDefaults(1.0, 5.0, 30.0, 30.0),
    "food101": TipDefaults(1.0, 1.17, 10.0, 10.0),
    "oxford_flowers": TipDefaults(1.0, 10.0, 50.0, 50.0),
    "oxford_pets": TipDefaults(1.0, 1.17, 7.0, 3.0),
    "stanford_cars": TipDefaults(1.0, 3.0, 20.0, 10.0),
    "sun397": TipDefaults(1.0, 1.17, 12.0, 10.0),
    "ucf101": TipDefaults(1.0, 3.0, 7.0, 3.0),
}
OTHER_DATASETS = TipDefaults(1.0, 1.0, 10.0, 10.0)  # not from the paper


def default_prompts(dataset: str) -> str:
    """Tip-Adapter, LP++ and CLAP ensemble CoOp's 7 selected templates on ImageNet, one template elsewhere."""
    return "coop_ensemble" if dataset == "imagenet" else "coop"


@dataclass(frozen=True)
class TipAdapterConfig:
    BOUNDS: ClassVar[dict] = {
        "alpha": (0, None),
        "beta": (0, None),
        "search_steps_alpha": (1, None),
        "search_steps_beta": (1, None),
    }
    alpha: float = 1.0  # residual ratio α (initial value when search_hp); per dataset
    beta: float = 1.0  # sharpness β (initial value when search_hp); per dataset
    search_hp: bool = True  # grid-search (β, α) on the few-shot val split
    scale_alpha: float = 10.0  # α grid: search_steps_alpha values in [0.1, scale_alpha)
    scale_beta: float = 10.0  # β grid: search_steps_beta values in [0.1, scale_beta)
    search_steps_alpha: int = 20
    search_steps_beta: int = 200
    prompts: str = "coop"
    train_views: int = 10  # augmented views averaged into each key (augment_epoch)


@dataclass(frozen=True)
class TipAdapterFConfig(TipAdapterConfig):
    epochs: int = 20  # 100 on EuroSAT
    lr: float = 0.001
    batch_size: int = 256
    eps: float = 1e-4  # AdamW eps
    weight_decay: float = 0.01  # torch.optim.AdamW default (Tip passes none)
    precision: str = "fp32"  # "fp16": keys, features and AdamW state in half precision (the official code)


class TipClassifier(torch.nn.Module):
    """logits = scale · f̂·Wᵀ + α · exp(−β(1 − f̂·Kᵀ)) · V for raw features f (N, D)."""

    def __init__(
        self,
        weights: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        alpha: float,
        beta: float,
        scale: float,
    ):
        super().__init__()
        self.register_buffer("weights", weights)  # (C, D) normalised zero-shot classifier
        self.register_buffer("keys", keys)  # (N_cache, D)
        self.register_buffer("values", values)  # (N_cache, C) one-hot
        self.alpha, self.beta, self.scale = alpha, beta, scale

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return tip_logits(
            F.normalize(features, dim=-1),
            self.weights,
            self.keys,
            self.values,
            self.alpha,
            self.beta,
            self.scale,
        )


def tip_logits(
    normed: torch.Tensor,
    weights: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    alpha: float,
    beta: float,
    scale: float,
) -> torch.Tensor:
    """(N, C) Tip-Adapter logits of normalised features (N, D)."""
    cache = torch.exp(-beta * (1 - normed @ keys.t())) @ values
    return scale * normed @ weights.t() + alpha * cache


def cache_model(data: FewShotData, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys (N, D): each support image's mean feature over its views, normalised; values (N, C) one-hot."""
    keys = F.normalize(data.train.features.to(device).mean(0), dim=-1)
    values = F.one_hot(data.train.labels.to(device), data.n_classes).float()
    return keys, values


def search_ratios(
    normed: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    cfg: TipAdapterConfig,
    scale: float,
) -> tuple[float, float, float]:
    """Tip's (β, α) grid on val features (N, D) normalised -> (β, α, val accuracy), first best in β-major order."""
    betas = [i * (cfg.scale_beta - 0.1) / cfg.search_steps_beta + 0.1 for i in range(cfg.search_steps_beta)]
    alpha_grid = [
        i * (cfg.scale_alpha - 0.1) / cfg.search_steps_alpha + 0.1 for i in range(cfg.search_steps_alpha)
    ]
    alphas = torch.tensor(alpha_grid, device=normed.device)
    clip_logits, affinity = scale * normed @ weights.t(), normed @ keys.t()
    labels = labels.to(normed.device)
    scores = torch.empty(len(betas), len(alphas), dtype=torch.float64, device=normed.device)
    for i, beta in enumerate(betas):
        cache = torch.exp(-beta * (1 - affinity)) @ values
        predictions = (clip_logits[None] + alphas[:, None, None] * cache[None]).argmax(-1)
        scores[i] = (predictions == labels).double().mean(-1)
    best = int(scores.flatten().argmax())
    i, j = divmod(best, len(alphas))
    return betas[i], alpha_grid[j], float(scores[i, j])


def _ratios(
    data: FewShotData,
    cfg: TipAdapterConfig,
    weights: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    ctx: FitContext,
) -> tuple[float, float]:
    """(α, β): the config's, or the val-grid's when ``search_hp``; recorded either way."""
    alpha, beta = cfg.alpha, cfg.beta
    if cfg.search_hp:
        val = F.normalize(data.val.center.to(ctx.device), dim=-1)
        work = (
            len(val) * len(keys) * (data.n_classes + 2) + cfg.search_steps_alpha * len(val) * data.n_classes
        )
        with cpu_threads_for(ctx.device, work):
            beta, alpha, score = search_ratios(
                val, data.val.labels, weights, keys, values, cfg, ctx.logit_scale
            )
        ctx.record("search_val_top1", score)
    ctx.record("alpha", alpha)
    ctx.record("beta", beta)
    return alpha, beta


class TipAdapter:
    """Tip-Adapter: training-free; a cache of the support set added to zero-shot CLIP, (β, α) searched on val."""

    name = "tip_adapter"
    version = "1"
    trainable = False  # training-free: the support set becomes the cache
    Config = TipAdapterConfig
    # bench run --as-published: config overrides that make this method behave as its official code.
    # Not a config switch (docs/fidelity.md): the (β, α) search on the full val split; selection on test
    # (ImageNet) is `--tune oracle`, which labels the result oracle.
    as_published: ClassVar[dict[str, Any]] = {}

    def default_config(self, dataset: str, shots: int) -> TipAdapterConfig:
        return TipAdapterConfig(**_dataset_fields(dataset))

    def needs(self, cfg: TipAdapterConfig) -> Needs:
        return Needs(train_views=cfg.train_views, augment_scale=TIP_AUGMENT_SCALE)

    def search_space(self, trial: Any, dataset: str, shots: int, cfg: TipAdapterConfig) -> dict[str, Any]:
        """α and β over Tip's per-dataset search ranges (Tip-F: used for fine-tuning and at test); the
        internal val grid is switched off."""
        return _ratio_space(trial, dataset)

    def fit(self, data: FewShotData, cfg: TipAdapterConfig, ctx: FitContext) -> TipClassifier:
        weights = embed_classes(ctx, data.classnames, prompt_templates(data, cfg.prompts))
        keys, values = cache_model(data, ctx.device)
        with torch.no_grad():
            alpha, beta = _ratios(data, cfg, weights, keys, values, ctx)
        return TipClassifier(weights, keys, values, alpha, beta, ctx.logit_scale)


def _dataset_fields(dataset: str) -> dict[str, Any]:
    row = TIP_DEFAULTS.get(dataset, OTHER_DATASETS)
    return {
        "alpha": row.init_alpha,
        "beta": row.init_beta,
        "scale_alpha": row.scale_alpha,
        "scale_beta": row.scale_beta,
        "prompts": default_prompts(dataset),
    }


def _ratio_space(trial: Any, dataset: str) -> dict[str, Any]:
    row = TIP_DEFAULTS.get(dataset, OTHER_DATASETS)
    return {
        "alpha": trial.suggest_float("alpha", 0.1, row.scale_alpha),
        "beta": trial.suggest_float("beta", 0.1, row.scale_beta),
        "search_hp": False,
    }


def _all_view_batches(n_views: int, n: int, batch_size: int, generator: torch.Generator) -> Batches:
    """Tip-F's loader: shuffled, the last partial batch kept; one random cached view per image."""
    views = torch.randint(n_views, (n,), generator=generator)
    return [(views[index], index) for index in torch.randperm(n, generator=generator).split(batch_size)]


def finetune_keys(
    data: FewShotData,
    cfg: TipAdapterFConfig,
    weights: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    ctx: FitContext,
) -> torch.Tensor:
    """Tip-F: train the keys (N, D); returns the keys (float32) of the epoch with the best few-shot val accuracy.

    With ``cfg.precision == "fp16"`` the keys, features, zero-shot weights and cache values are half
    precision, as in the official ``main.py`` (``nn.Linear(...).to(clip_model.dtype)``, CLIP's fp16
    features): AdamW's state is then fp16 too, its second moment underflows to 0 for small gradients
    (steps ~lr·m/eps instead of ~lr) and weight decay rounds away (1 − lr·0.01 is 1 in fp16). The loss
    is taken on the logits cast to float32 (CPUs lack some fp16 kernels); scoring uses float32 keys.
    """
    dtype = train_dtype(cfg.precision, "tip_adapter_f")
    learned = torch.nn.Parameter(keys.clone().to(dtype))
    weights, values = weights.to(dtype), values.to(dtype)
    optimizer = torch.optim.AdamW([learned], lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay)
    n = data.train.features.shape[1]
    total_steps = max(1, cfg.epochs * math.ceil(n / cfg.batch_size))
    step = [0]

    def cosine_step() -> None:  # CosineAnnealingLR(T_max = all steps), stepped per batch as in main.py
        step[0] += 1
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step[0] / total_steps))

    def logits(normed: torch.Tensor) -> torch.Tensor:
        return tip_logits(
            normed.to(dtype), weights, learned, values, cfg.alpha, cfg.beta, ctx.logit_scale
        ).float()

    def loss_fn(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits(F.normalize(features, dim=-1)), labels)

    train, labels = data.train.features.to(ctx.device), data.train.labels.to(ctx.device)
    val = F.normalize(data.val.center.to(ctx.device), dim=-1)
    generator = torch_generator(derive_seed(ctx.seed, "loader"))
    best_score, best_keys, history = -1.0, learned.detach().float().clone(), []
    for epoch in range(cfg.epochs):
        with torch.enable_grad():
            loss = run_epoch(
                optimizer, loss_fn, train, labels, cfg.batch_size, generator, _all_view_batches, cosine_step
            )
        check_loss(loss, epoch)
        with torch.no_grad():
            score = accuracy(logits(val), data.val.labels)
        history.append(score)
        if score > best_score:
            best_score, best_keys = score, learned.detach().float().clone()
        if ctx.report is not None:
            ctx.report(epoch + 1, score)
    ctx.record("val_top1_by_epoch", history)
    ctx.record("best_epoch", int(history.index(best_score)) + 1 if history else 0)
    return best_keys


class TipAdapterF(TipAdapter):
    """Tip-Adapter-F: Tip-Adapter with the cache keys fine-tuned, the epoch chosen on the few-shot val split.

    It shares Tip-Adapter's cached views (``needs``) and search space."""

    name = "tip_adapter_f"
    version = "1"
    trainable = True
    Config = TipAdapterFConfig
    as_published: ClassVar[dict[str, Any]] = {
        "precision": "fp16"
    }  # main.py trains fp16 keys (docs/fidelity.md)

    def default_config(self, dataset: str, shots: int) -> TipAdapterFConfig:
        epochs = TIP_DEFAULTS.get(dataset, OTHER_DATASETS).epochs
        return TipAdapterFConfig(**_dataset_fields(dataset), epochs=epochs)

    def fit(self, data: FewShotData, cfg: TipAdapterFConfig, ctx: FitContext) -> TipClassifier:
        weights = embed_classes(ctx, data.classnames, prompt_templates(data, cfg.prompts))
        keys, values = cache_model(data, ctx.device)
        n, dim = keys.shape
        with cpu_threads_for(ctx.device, cfg.batch_size * dim * (n + data.n_classes) * 2):
            keys = finetune_keys(data, cfg, weights, keys, values, ctx)
        with torch.no_grad():
            alpha, beta = _ratios(data, cfg, weights, keys, values, ctx)
        return TipClassifier(weights, keys, values, alpha, beta, ctx.logit_scale)
