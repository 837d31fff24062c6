"""CLIP-Adapter (Gao et al., IJCV 2023 / arXiv 2110.04544), visual branch.

A bottleneck ``Linear(D, D/r, bias=False) → ReLU → Linear(D/r, D, bias=False) → ReLU`` on
the raw image feature f, blended residually: ``f' = α·A(f) + (1 − α)·f``, then cosine
logits against the frozen zero-shot class embeddings, scaled by CLIP's logit scale. Only
the adapter trains (cross-entropy).

Defaults and where they come from:
- ``alpha = 0.2``, ``reduction = 4``, bias-free layers with ReLU after each: the official
  ``clip_adapter.py`` (``Adapter(1024, 4)``, ``ratio = 0.2``); the bottleneck is D/4 for any
  backbone width instead of the hard-coded 1024.
- Optimiser: the official code trains with whatever CoOp config it is run with (README:
  "follow CoOp's command"): SGD lr 0.002, batch 32, cosine, 1 warm-up epoch at 1e-5,
  epochs by shots (:func:`bench.methods._train.coop_epochs`).
- Augmentation: CoOp's random-resized-crop + flip, taken from ``train_views`` cached
  views per image (a fresh one per epoch) instead of re-encoding every epoch.
- Prompts: CoOp's single per-dataset template (``CUSTOM_TEMPLATES`` in the official file).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.methods._train import SGDRecipe, coop_epochs, train_on_features
from bench.methods.base import FewShotData, FitContext, Needs, embed_classes, prompt_templates
from bench.seeding import derive_seed, torch_generator


@dataclass(frozen=True)
class ClipAdapterConfig:
    alpha: float = 0.2           # residual ratio α (official code)
    reduction: int = 4           # bottleneck D / reduction (official code)
    prompts: str = "coop"        # prompt set for the frozen classifier
    train_views: int = 10        # cached augmented views per support image
    epochs: int = 200            # default_config sets CoOp's epochs by shots
    lr: float = 0.002
    batch_size: int = 32
    weight_decay: float = 5e-4


class Adapter(torch.nn.Module):
    """The CLIP-Adapter bottleneck: (B, D) -> (B, D)."""

    def __init__(self, dim: int, reduction: int):
        super().__init__()
        self.fc = torch.nn.Sequential(
            torch.nn.Linear(dim, dim // reduction, bias=False), torch.nn.ReLU(),
            torch.nn.Linear(dim // reduction, dim, bias=False), torch.nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class VisualAdapterClassifier(torch.nn.Module):
    """logits = scale · normalise(α·A(f) + (1 − α)·f) · Wᵀ, W (C, D) normalised and frozen."""

    def __init__(self, adapter: Adapter, alpha: float, weights: torch.Tensor, scale: float,
                 templates: tuple[str, ...]):
        super().__init__()
        self.adapter, self.alpha, self.scale, self.templates = adapter, alpha, scale, templates
        self.register_buffer("weights", weights)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        blended = self.alpha * self.adapter(features) + (1 - self.alpha) * features
        return self.scale * F.normalize(blended, dim=-1) @ self.weights.t()

    def for_classes(self, classnames: tuple[str, ...], ctx: FitContext) -> VisualAdapterClassifier:
        """The trained adapter against another label space's zero-shot embeddings."""
        weights = embed_classes(ctx, classnames, self.templates)
        return VisualAdapterClassifier(self.adapter, self.alpha, weights, self.scale, self.templates)


class ClipAdapter:
    name = "clip_adapter"
    version = "1"
    trainable = True
    Config = ClipAdapterConfig

    def default_config(self, dataset: str, shots: int) -> ClipAdapterConfig:
        return ClipAdapterConfig(epochs=coop_epochs(dataset, shots))

    def needs(self, cfg: ClipAdapterConfig) -> Needs:
        return Needs(train_views=cfg.train_views)

    def search_space(self, trial, dataset: str, shots: int) -> dict:
        """``--tune``: the residual ratio α ∈ [0, 1], which the paper searches per dataset (§4.2.4)."""
        return {"alpha": trial.suggest_float("alpha", 0.0, 1.0)}

    def fit(self, data: FewShotData, cfg: ClipAdapterConfig, ctx: FitContext) -> VisualAdapterClassifier:
        templates = prompt_templates(data, cfg.prompts)
        weights = embed_classes(ctx, data.classnames, templates)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(ctx.seed, "init"))
            adapter = Adapter(weights.shape[1], cfg.reduction)
        model = VisualAdapterClassifier(adapter, cfg.alpha, weights, ctx.logit_scale, templates).to(ctx.device)
        recipe = SGDRecipe(lr=cfg.lr, batch_size=cfg.batch_size, weight_decay=cfg.weight_decay)
        model.train()
        losses = train_on_features(list(adapter.parameters()), model, data.train, cfg.epochs, recipe,
                                   torch_generator(derive_seed(ctx.seed, "loader")), ctx.device)
        model.eval()
        ctx.record("train_loss_first_last", [losses[0], losses[-1]] if losses else [])
        return model
