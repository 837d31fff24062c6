"""TaskRes: a learned residual on the frozen zero-shot text classifier (Yu et al., CVPR 2023).

Official ``trainers/taskres.py`` (``TaskResLearner``, ``CustomCLIP``, ``_get_base_text_features``):
``W = t + α·x``, logits ``= scale · cos(f, W_c)``, cross-entropy, with t (C, D) the **raw** (not normalised)
text features of the hand-crafted prompts averaged over templates, and x (C, D) learned from **zero**.
With α = 0 the classifier is zero-shot CLIP's (up to float rounding: zero-shot normalises each template's
feature first, which changes nothing with one template but the last bit).

Defaults (``train_regular.sh``, ``configs/trainers/TaskRes/adam_lr2e-*_B256_ep*.yaml``, Dassl defaults):
- α = 0.5 on every dataset but Flowers102 (α = 1.0);
- Adam (betas 0.9/0.999, L2 weight decay 5e-4: Dassl's ``build_optimizer``), lr 2e-3 (ImageNet 2e-4),
  batch 256, 100 epochs at 1/2/4 shots and 200 at 8/16, cosine, 1 warm-up epoch at 1e-5; last epoch;
- prompts: CoOp's template (``CUSTOM_TEMPLATES``, the same as ours); ImageNet the 7
  ``IMAGENET_TEMPLATES_SELECT`` (the official code adds CoOp's template as an 8th).

The residual is one vector per training class, so the classifier is tied to those classes (no
``for_classes``: base-to-new reports it as not transferable).

Not implemented: the "enhanced base" TaskRes* (``train_enhance.sh``), whose base comes from a text
projection fine-tuned elsewhere and downloaded (``strong_base/``); its training code is not released.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from bench.methods.base import FewShotData, FitContext, Needs, check_choice, prompt_templates
from bench.methods.training import SGDRecipe, accuracy, cpu_threads_for, train_on_features, val_reporter
from bench.seeding import derive_seed, torch_generator

IMAGENET_LIKE = frozenset({"imagenet"})
OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class TaskResConfig:
    BOUNDS: ClassVar[dict] = {"alpha": (0, None)}
    alpha: float = 0.5  # residual scale α (official TRAINER.TaskRes.RESIDUAL_SCALE); Flowers102 1.0
    prompts: str = "coop"  # prompt set of the base classifier; ImageNet "coop_ensemble" (default_config)
    train_views: int = 10  # cached augmented views per support image
    epochs: int = 200  # default_config: 100 at 1/2/4 shots, 200 at 8/16
    lr: float = 2e-3  # ImageNet 2e-4
    batch_size: int = 256
    weight_decay: float = 5e-4
    optimizer: str = "adam"  # "adam" (official) or "sgd" (momentum 0.9)


class ResidualClassifier(torch.nn.Module):
    """logits = scale · normalise(f) · normalise(t + α·x)ᵀ; base t and residual x (C, D)."""

    def __init__(self, base: torch.Tensor, residual: torch.Tensor, alpha: float, scale: float):
        super().__init__()
        self.register_buffer("weights", F.normalize(base + alpha * residual.detach(), dim=-1))
        self.scale = scale

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(features, dim=-1) @ self.weights.t()


def base_classifier(data: FewShotData, cfg: TaskResConfig, ctx: FitContext) -> torch.Tensor:
    """(C, D) float32: the raw text features of the prompts, averaged over templates (not normalised)."""
    templates = prompt_templates(data, cfg.prompts)
    return ctx.text_features(templates, data.classnames).to(ctx.device).float().mean(0)


class TaskRes:
    name = "taskres"
    version = "1"
    trainable = True
    Config = TaskResConfig

    def default_config(self, dataset: str, shots: int) -> TaskResConfig:
        imagenet = dataset in IMAGENET_LIKE
        return TaskResConfig(
            alpha=1.0 if dataset == "oxford_flowers" else 0.5,
            prompts="coop_ensemble" if imagenet else "coop",
            lr=2e-4 if imagenet else 2e-3,
            epochs=100 if shots <= 4 else 200,
        )

    def needs(self, cfg: TaskResConfig) -> Needs:
        return Needs(train_views=cfg.train_views)

    def search_space(self, trial: Any, dataset: str, shots: int, cfg: TaskResConfig) -> dict[str, Any]:
        """``--tune``: α, which the paper studies (0.5 everywhere, 1.0 on Flowers102), log-uniform over [0.1, 2]."""
        return {"alpha": trial.suggest_float("alpha", 0.1, 2.0, log=True)}

    def fit(self, data: FewShotData, cfg: TaskResConfig, ctx: FitContext) -> ResidualClassifier:
        check_choice(self.name, "optimizer", cfg.optimizer, OPTIMIZERS)
        base = base_classifier(data, cfg, ctx)
        residual = torch.nn.Parameter(torch.zeros_like(base))
        scale = ctx.logit_scale

        def logits_fn(features: torch.Tensor) -> torch.Tensor:
            weights = F.normalize(base + cfg.alpha * residual, dim=-1)
            return scale * F.normalize(features, dim=-1) @ weights.t()

        x_val, y_val = data.val.center.to(ctx.device), data.val.labels
        report = val_reporter(ctx, lambda: accuracy(logits_fn(x_val), y_val), cfg.epochs)
        recipe = SGDRecipe(
            lr=cfg.lr, batch_size=cfg.batch_size, weight_decay=cfg.weight_decay, optimizer=cfg.optimizer
        )
        with cpu_threads_for(ctx.device, 3 * cfg.batch_size * base.numel()):
            losses = train_on_features(
                [residual],
                logits_fn,
                data.train,
                cfg.epochs,
                recipe,
                torch_generator(derive_seed(ctx.seed, "loader")),
                ctx.device,
                report,
            )
        ctx.record("train_loss_first_last", [losses[0], losses[-1]] if losses else [])
        ctx.record(
            "residual_norm_ratio",
            float((cfg.alpha * residual.detach()).norm(dim=-1).mean() / base.norm(dim=-1).mean()),
        )
        return ResidualClassifier(base, residual, cfg.alpha, scale)
