"""CLAP and ZS-LP: linear probes initialised from zero-shot prototypes, CLAP with a class-adaptive penalty.

Silva-Rodríguez, Hajimiri, Ben Ayed, Dolz, "A Closer Look at the Few-Shot Adaptation of Large
Vision-Language Models", CVPR 2024 (arXiv 2312.12730).

A linear probe on normalised features whose class prototypes w_c start at the zero-shot text
prototypes t_c (the mean of the class's raw prompt features); logits = logit_scale ·
cos(f, w_c). CLAP adds a class-adaptive penalty that keeps each prototype near its zero-shot
start, weighted by how well zero-shot already does on that class:

    L = CE + (1/C) Σ_c λ_c ‖w_c − t_c‖²,    λ_c = mean over the support samples of class c of
                                             the zero-shot softmax probability of class c.

No validation set is used (the paper's point): fixed hyperparameters, last epoch.

Defaults and where they come from (official ``trainers/adapters.py``,
``configs/trainers/SGD_lr1e-1_B256_ep300.yaml``, ``scripts/adapt.sh``,
``experiments/experiment_CLAP.txt``):
- constraint ``l2`` with λ from the zero-shot performance on the augmented support set, fixed during
  training (``init_lagrangian_multipliers``; the default runs use neither the ``balanced`` nor the
  ``adaptative`` variants). ``linear_probe_zs`` is the same probe with no constraint (``ZS none``).
- 20 augmented views per support image (``epochs_aumentation = 20``; Dassl's random-resized-crop
  (0.08, 1) + flip), encoded once; every epoch draws as many batches of 256 as Dassl's loader over
  the N images would give (N // 256, or 1 when N < 256) from a shuffle of the pool of all 20·N
  features (``TrainerXCostume.run_epoch``).
- SGD lr 0.1, momentum 0.9 (Dassl default), weight decay 0, 300 epochs, cosine schedule with one
  warm-up epoch at a constant 1e-5.
- Prompts: the dataset's CoOp template; ImageNet: the ``coop_ensemble`` set, the 7
  ``IMAGENET_TEMPLATES_SELECT`` (CLAP also adds the CoOp template "a photo of a {}.", an 8th).
- Class names: ``classnames="clean"`` (default) prompts with the names every method here uses (CoOp's
  ``"_"`` -> ``" "``); ``"raw"`` with the split file's names as written (``american_bulldog``,
  ``Apply_Eye_Makeup``), as the official ``_get_base_text_features`` does: it formats its templates
  with ``self.dm.dataset.classnames``, Dassl's names, never cleaned. They differ on Caltech101,
  OxfordPets, Food101, SUN397 and UCF101 (docs/fidelity.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from bench.errors import BenchError
from bench.methods.base import FewShotData, FitContext, Needs, check_choice, prompt_templates
from bench.methods.tip_adapter import default_prompts
from bench.methods.training import (
    SGDRecipe,
    accuracy,
    cpu_threads_for,
    pool_batches,
    train_on_features,
    val_reporter,
)
from bench.seeding import derive_seed, torch_generator

CONSTRAINTS = ("l2", "none")
CLASSNAME_STYLES = ("clean", "raw")


@dataclass(frozen=True)
class ClapConfig:
    constraint: str = "l2"  # "l2" (CLAP) or "none" (ZS-LP)
    epochs: int = 300
    lr: float = 0.1
    batch_size: int = 256
    weight_decay: float = 0.0
    prompts: str = "coop"  # default_config: "coop_ensemble" on ImageNet
    train_views: int = 20  # augmented views per support image (epochs_aumentation)
    classnames: str = "clean"  # "raw": the split file's names, underscores kept (the official code)


@dataclass(frozen=True)
class ZsLinearProbeConfig:
    epochs: int = 300
    lr: float = 0.1
    batch_size: int = 256
    weight_decay: float = 0.0
    prompts: str = "coop"
    train_views: int = 20
    classnames: str = "clean"  # "raw": the split file's names, underscores kept (the official code)


class PrototypeClassifier(torch.nn.Module):
    """logits = scale · normalise(f) · normalise(W)ᵀ, W (C, D) the learned prototypes."""

    def __init__(self, prototypes: torch.Tensor, scale: float):
        super().__init__()
        self.prototypes = torch.nn.Parameter(prototypes)
        self.scale = scale

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(features, dim=-1) @ F.normalize(self.prototypes, dim=-1).t()


def class_multipliers(
    model: PrototypeClassifier, train_views: torch.Tensor, labels: torch.Tensor, n_classes: int
) -> torch.Tensor:
    """λ (C,): per class, the mean zero-shot probability of the true class over its augmented support features.

    Args:
        train_views: (V, N, D) raw features. labels: (N,).
    """
    with torch.no_grad():
        probs = model(train_views.flatten(0, 1)).softmax(-1)
        targets = labels.repeat(train_views.shape[0])
        own = probs.gather(1, targets[:, None]).squeeze(1)
        sums = torch.zeros(n_classes, device=own.device).index_add_(0, targets, own)
        return sums / torch.bincount(targets, minlength=n_classes).clamp(min=1)


def prompt_classnames(data: FewShotData, style: str) -> tuple[str, ...]:
    """The C class names the prompts are built from: ``"clean"`` (ours) or ``"raw"`` (the split file's)."""
    if style not in CLASSNAME_STYLES:
        raise BenchError(
            f"unknown class-name style {style!r}",
            where="config field 'classnames'",
            fix=f"use one of: {', '.join(CLASSNAME_STYLES)}",
        )
    return (data.raw_classnames or data.classnames) if style == "raw" else data.classnames


def fit_clap(data: FewShotData, cfg: Any, constraint: str, ctx: FitContext) -> PrototypeClassifier:
    """Train the zero-shot-initialised probe, with CLAP's penalty when ``constraint == "l2"``."""
    check_choice("clap", "constraint", constraint, CONSTRAINTS)
    templates = prompt_templates(data, cfg.prompts)
    zero_shot = ctx.text_features(templates, prompt_classnames(data, cfg.classnames)).to(ctx.device).mean(0)
    # (C, D): the mean of the raw (unnormalised) template features, as _get_base_text_features
    model = PrototypeClassifier(zero_shot.clone(), ctx.logit_scale).to(ctx.device)
    train = data.train.features.to(ctx.device)
    penalty = None
    if constraint == "l2":
        multipliers = class_multipliers(model, train, data.train.labels.to(ctx.device), data.n_classes)
        ctx.record(
            "lambda",
            {
                "mean": float(multipliers.mean()),
                "min": float(multipliers.min()),
                "max": float(multipliers.max()),
            },
        )

        def penalty() -> torch.Tensor:
            return (multipliers * (model.prototypes - zero_shot).pow(2).sum(-1)).mean()

    recipe = SGDRecipe(lr=cfg.lr, batch_size=cfg.batch_size, weight_decay=cfg.weight_decay)
    x_val, y_val = data.val.center.to(ctx.device), data.val.labels
    report = val_reporter(
        ctx, lambda: accuracy(model(x_val), y_val), cfg.epochs
    )  # pruning only; no selection
    dim = zero_shot.shape[1]
    with cpu_threads_for(ctx.device, cfg.batch_size * dim * data.n_classes * 3):
        losses = train_on_features(
            [model.prototypes],
            model,
            data.train,
            cfg.epochs,
            recipe,
            torch_generator(derive_seed(ctx.seed, "loader")),
            ctx.device,
            report,
            penalty=penalty,
            sampler=pool_batches,
        )
    ctx.record("train_loss_first_last", [losses[0], losses[-1]] if losses else [])
    model.requires_grad_(False)
    return model


class Clap:
    """CLAP: a zero-shot-initialised linear probe with a class-adaptive penalty toward the text prototypes."""

    name = "clap"
    version = "1"
    trainable = True
    Config = ClapConfig
    # bench run --as-published: the official code prompts with Dassl's raw class names (docs/fidelity.md)
    as_published: ClassVar[dict[str, Any]] = {"classnames": "raw"}

    def default_config(self, dataset: str, shots: int) -> ClapConfig:
        return ClapConfig(prompts=default_prompts(dataset))

    def needs(self, cfg: ClapConfig) -> Needs:
        return Needs(train_views=cfg.train_views)

    def fit(self, data: FewShotData, cfg: ClapConfig, ctx: FitContext) -> PrototypeClassifier:
        return fit_clap(data, cfg, cfg.constraint, ctx)


class ZeroShotLinearProbe:
    """ZS-LP (CLAP paper §3): the linear probe initialised with the zero-shot prototypes, no constraint."""

    name = "linear_probe_zs"
    version = "1"
    trainable = True
    Config = ZsLinearProbeConfig
    as_published: ClassVar[dict[str, Any]] = {"classnames": "raw"}

    def default_config(self, dataset: str, shots: int) -> ZsLinearProbeConfig:
        return ZsLinearProbeConfig(prompts=default_prompts(dataset))

    def needs(self, cfg: ZsLinearProbeConfig) -> Needs:
        return Needs(train_views=cfg.train_views)

    def search_space(self, trial: Any, dataset: str, shots: int, cfg: ZsLinearProbeConfig) -> dict[str, Any]:
        """``--tune``: the learning rate, log scale around CLAP's 0.1. CLAP itself is validation-free by
        design and declares no search space."""
        return {"lr": trial.suggest_float("lr", 1e-3, 1.0, log=True)}

    def fit(self, data: FewShotData, cfg: ZsLinearProbeConfig, ctx: FitContext) -> PrototypeClassifier:
        return fit_clap(data, cfg, "none", ctx)
