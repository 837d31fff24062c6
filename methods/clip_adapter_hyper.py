"""CLIP-Adapter with learned residual ratios: α and β produced by a small hypernetwork Q.

The paper (Gao et al., IJCV 2023, §3.3 and §4.2.5) says only that, instead of hand-tuning
the ratios per dataset, "α, β = Q(f, W)": a hypernetwork predicts them from the visual
feature and/or the classifier weights, and is trained with the adapters. No code exists
(CLIP-Adapter issue #8 is unanswered). Our interpretation, kept as small as the sentence:

- α is per image, from the visual feature: ``α(f) = σ(q_v(f / ‖f‖))``.
- β is per class, from that class's classifier weight: ``β_c = σ(q_t(W_c / ‖W_c‖))``, so it is
  recomputed for new class names (base-to-new transfer keeps working).
- ``q_v`` and ``q_t`` are each ``Linear(D, D/q_reduction) → ReLU → Linear(D/q_reduction, 1)``; the last
  layer starts at zero weight and bias ``logit(α₀)`` (``logit(β₀)``), so training starts exactly
  at fixed-ratio CLIP-Adapter with the paper's α₀ for the dataset and β₀ = 0.2.
- Everything (adapters and Q) trains jointly with cross-entropy under CoOp's recipe, as
  ``clip_adapter``; logits are ``scale · normalise(α(f)·A_v(f) + (1−α(f))·f) ·
  normalise(β·A_t(W) + (1−β)·W)ᵀ`` with β broadcast per class.
- Default branch ``"both"``: the paper uses the learned ratios for the text-only and both
  variants (§4.2.5); ``branch="visual"`` learns only α, ``"text"`` only β.

The learned ratios are observable: every cell records the mean/std/min/max of α over the
support images (``alpha_train``: each image's first cached augmented view, the set's ``center``
slot, since the support set is cached as augmented views only) and over the few-shot val images
(``alpha_val``: centre view), and of β over the classes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from bench.methods.base import FewShotData, FitContext, Needs, prompt_templates
from bench.methods.clip_adapter import (
    ALPHA_BY_DATASET,
    DEFAULT_ALPHA,
    Adapter,
    check_branch,
    class_text_means,
    fit_adapters,
    seeded_adapter,
)
from bench.methods.training import coop_epochs
from bench.seeding import derive_seed


@dataclass(frozen=True)
class ClipAdapterHyperConfig:
    BOUNDS: ClassVar[dict] = {"alpha_init": (0, 1), "beta_init": (0, 1), "q_reduction": (1, None)}
    branch: str = "both"  # which ratios are learned: "visual" (α), "text" (β) or "both"
    alpha_init: float = DEFAULT_ALPHA  # α₀; default_config sets clip_adapter's per-dataset α
    beta_init: float = 0.2  # β₀ (clip_adapter's β)
    reduction: int = 4  # adapter bottleneck D / reduction
    q_reduction: int = 16  # hypernetwork hidden width D / q_reduction
    prompts: str = "coop"
    train_views: int = 10
    epochs: int = 200  # default_config sets CoOp's epochs by shots
    lr: float = 0.002
    batch_size: int = 32
    weight_decay: float = 5e-4


class RatioNet(torch.nn.Module):
    """Q: (B, D) features -> (B,) ratios in (0, 1); starts at the constant ``init`` for every input."""

    def __init__(self, dim: int, q_reduction: int, init: float):
        super().__init__()
        hidden = max(1, dim // q_reduction)
        self.hidden = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.ReLU())
        self.out = torch.nn.Linear(hidden, 1)
        eps = 1e-6
        init = min(max(init, eps), 1 - eps)
        with torch.no_grad():
            self.out.weight.zero_()
            self.out.bias.fill_(math.log(init / (1 - init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.out(self.hidden(F.normalize(x, dim=-1)))).squeeze(-1)


class HyperAdapterClassifier(torch.nn.Module):
    """CLIP-Adapter whose α (per image) and β (per class) come from :class:`RatioNet` s."""

    def __init__(
        self,
        visual: Adapter | None,
        text: Adapter | None,
        q_visual: RatioNet | None,
        q_text: RatioNet | None,
        class_means: torch.Tensor,
        scale: float,
        templates: tuple[str, ...],
    ):
        super().__init__()
        self.visual, self.text, self.q_visual, self.q_text = visual, text, q_visual, q_text
        self.scale, self.templates = scale, templates
        self.register_buffer("class_means", class_means)

    def alpha(self, features: torch.Tensor) -> torch.Tensor:
        """(N,) α per image (zeros without a visual branch)."""
        return self.q_visual(features) if self.q_visual is not None else features.new_zeros(len(features))

    def beta(self) -> torch.Tensor:
        """(C,) β per class (zeros without a text branch)."""
        return (
            self.q_text(self.class_means)
            if self.q_text is not None
            else self.class_means.new_zeros(len(self.class_means))
        )

    def class_weights(self) -> torch.Tensor:
        w = self.class_means
        if self.text is not None:
            beta = self.beta()[:, None]
            w = beta * self.text(w) + (1 - beta) * w
        return F.normalize(w, dim=-1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.visual is not None:
            alpha = self.alpha(features)[:, None]
            features = alpha * self.visual(features) + (1 - alpha) * features
        return self.scale * F.normalize(features, dim=-1) @ self.class_weights().t()

    def for_classes(self, classnames: tuple[str, ...], ctx: FitContext) -> HyperAdapterClassifier:
        """The trained adapters and hypernetworks on another label space (β recomputed per new class)."""
        means = class_text_means(ctx, classnames, self.templates)
        return HyperAdapterClassifier(
            self.visual, self.text, self.q_visual, self.q_text, means, self.scale, self.templates
        )


def _stats(values: torch.Tensor) -> dict[str, float]:
    values = values.detach().double().cpu()
    return {
        "mean": float(values.mean()),
        "std": float(values.std(unbiased=False)),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def _build(
    dim: int, cfg: ClipAdapterHyperConfig, means: torch.Tensor, ctx: FitContext, templates: tuple[str, ...]
) -> HyperAdapterClassifier:
    seed = ctx.seed
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "init", "hyper"))
        q_visual = RatioNet(dim, cfg.q_reduction, cfg.alpha_init) if cfg.branch != "text" else None
        q_text = RatioNet(dim, cfg.q_reduction, cfg.beta_init) if cfg.branch != "visual" else None
    visual = seeded_adapter(dim, cfg.reduction, derive_seed(seed, "init")) if cfg.branch != "text" else None
    text = (
        seeded_adapter(dim, cfg.reduction, derive_seed(seed, "init", "text"))
        if cfg.branch != "visual"
        else None
    )
    return HyperAdapterClassifier(visual, text, q_visual, q_text, means, ctx.logit_scale, templates)


class ClipAdapterHyper:
    name = "clip_adapter_hyper"
    version = "1"
    trainable = True
    Config = ClipAdapterHyperConfig

    def default_config(self, dataset: str, shots: int) -> ClipAdapterHyperConfig:
        return ClipAdapterHyperConfig(
            alpha_init=ALPHA_BY_DATASET.get(dataset, DEFAULT_ALPHA), epochs=coop_epochs(dataset, shots)
        )

    def needs(self, cfg: ClipAdapterHyperConfig) -> Needs:
        return Needs(train_views=cfg.train_views)

    def search_space(
        self, trial: Any, dataset: str, shots: int, cfg: ClipAdapterHyperConfig
    ) -> dict[str, Any]:
        """The ratios are learned; only the learning rate is searched (log-uniform, 10x around CoOp's 0.002)."""
        return {"lr": trial.suggest_float("lr", 2e-4, 2e-2, log=True)}

    def fit(self, data: FewShotData, cfg: ClipAdapterHyperConfig, ctx: FitContext) -> HyperAdapterClassifier:
        check_branch(cfg.branch, self.name)
        templates = prompt_templates(data, cfg.prompts)
        means = class_text_means(ctx, data.classnames, templates)
        model = _build(means.shape[1], cfg, means, ctx, templates).to(ctx.device)
        fit_adapters(model, data, cfg, ctx)
        with torch.no_grad():
            if model.q_visual is not None:
                # the support set is cached as augmented views only: "center" is each image's first view
                ctx.record("alpha_train", _stats(model.alpha(data.train.center.to(ctx.device))))
                ctx.record("alpha_val", _stats(model.alpha(data.val.center.to(ctx.device))))
            if model.q_text is not None:
                ctx.record("beta", _stats(model.beta()))
        return model
