"""GDA: Gaussian discriminant analysis on CLIP features, blended with zero-shot (Wang et al., ICLR 2024,
"A Hard-to-Beat Baseline for Training-free CLIP-based Adaptation").

Official code: mrflogs/ICLR24 ``main_few_shots.py`` (few-shot), ``main_base2new.py`` (new classes),
``configs/few_shots/*.yaml``. Training-free:

- Support features: every augmented view of every support image is one sample (``augment_epoch: 10``
  views, Tip-Adapter's ``train_tranform``: random-resized-crop (0.5, 1) + flip), L2-normalised.
- Class means μ_c over the samples of class c; one covariance shared by all classes, estimated with the
  code's "KS estimator" from the class-centred samples X (n × D):
  ``Σ = cov(X)`` (``torch.cov``, n − 1), ``P = D · pinv((n − 1) Σ + tr(Σ) I)``.
  ``covariance = "empirical"`` is ``main_base2new.py``'s estimator instead: ``P = pinv(mean_c cov(X_c))``.
- Uniform priors: ``w_c = P μ_c``, ``b_c = log(1/C) − ½ μ_cᵀ P μ_c``.
- ``logits = scale · f̂ Zᵀ + α (f̂ Wᵀ + b)`` with f̂ the normalised test feature and Z the normalised
  zero-shot weights (Tip-Adapter's prompts: the CoOp template; ImageNet CoOp's 7 templates).
- α: the first best of ``ALPHA_GRID`` on the validation features (strict ``>``; 0.1 if nothing scores).

New classes (``for_classes``, ``main_base2new.py``): each new class's mean is synthesised from its text
weight t and the k = 64 support samples nearest to t (``mean(k neighbours, 16 copies of t)``); the
precision is the mean over new classes of ``D · pinv((k − 1) S_t + tr(S_t) I)``, S_t the covariance of
the neighbours around t; α is kept.

Deviations (docs/fidelity.md): α is chosen on the few-shot val split (the code scores the full val
split, and test on ImageNet); statistics are computed in float64 (the code: fp16 features, float32
algebra); ``scale`` is the backbone's logit scale (the code hard-codes 100, the OpenAI value).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from bench.errors import BenchError
from bench.methods.base import FewShotData, FitContext, Needs, embed_classes, prompt_templates
from bench.methods.tip_adapter import default_prompts

ALPHA_GRID = (1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0)  # main_few_shots.py, main_base2new.py
COVARIANCES = ("shrinkage", "empirical")


@dataclass(frozen=True)
class GdaConfig:
    BOUNDS: ClassVar[dict] = {
        "alpha": (0, None),
        "new_class_neighbours": (2, None),
        "new_class_text_copies": (0, None),
    }
    alpha: float | None = None  # None: the first best of ALPHA_GRID on val (the official search)
    covariance: str = "shrinkage"  # "shrinkage" (few-shot code, KS estimator) or "empirical" (base2new code)
    train_views: int = 10  # augment_epoch: 10
    prompts: str = "coop"  # default_config: ImageNet "coop_ensemble"
    new_class_neighbours: int = 64  # main_base2new.py k
    new_class_text_copies: int = 16  # main_base2new.py: w.unsqueeze(0).repeat(16, 1)


def class_means(samples: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(C, D) mean of the samples of each class. samples: (n, D); labels: (n,)."""
    return torch.stack([samples[labels == c].mean(0) for c in range(n_classes)])


def shrinkage_precision(centred: torch.Tensor) -> torch.Tensor:
    """The code's "KS estimator": ``D · pinv((n − 1) Σ + tr(Σ) I)`` with Σ = ``torch.cov`` of the (n, D) rows."""
    n, dim = centred.shape
    cov = centred.T.cov()
    eye = torch.eye(dim, dtype=cov.dtype, device=cov.device)
    return dim * torch.linalg.pinv((n - 1) * cov + cov.trace() * eye)


def precision_matrix(
    samples: torch.Tensor, labels: torch.Tensor, means: torch.Tensor, covariance: str
) -> torch.Tensor:
    """(D, D) shared precision of ``samples`` (n, D) around their class ``means`` (C, D)."""
    if covariance == "shrinkage":
        return shrinkage_precision(samples - means[labels])
    if covariance == "empirical":
        counts = torch.bincount(labels, minlength=len(means))
        if int(counts.min()) < 2:
            raise BenchError(
                "the empirical covariance needs at least two samples per class",
                where="gda.covariance",
                fix="use covariance=shrinkage, or cache augmented views (train_views > 0)",
            )
        return torch.linalg.pinv(
            torch.stack([samples[labels == c].T.cov() for c in range(len(means))]).mean(0)
        )
    raise BenchError(
        f"unknown covariance estimator {covariance!r}",
        where="gda.covariance",
        fix=f"use one of: {', '.join(COVARIANCES)}",
    )


def discriminant(means: torch.Tensor, precision: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear discriminant with uniform priors -> (W (C, D), b (C,))."""
    weight = means @ precision
    bias = -math.log(len(means)) - 0.5 * (weight * means).sum(1)
    return weight, bias


def choose_alpha(
    zero_shot: torch.Tensor, gda: torch.Tensor, labels: torch.Tensor
) -> tuple[float, list[float]]:
    """The official α search: the first α of ``ALPHA_GRID`` with the best val accuracy (strict ``>``, starting
    from 0 and α = 0.1). zero_shot, gda: (N, C) logits of the val features. -> (α, accuracy per α)."""
    best_acc, best_alpha, scores = 0.0, 0.1, []
    for alpha in ALPHA_GRID:
        acc = float(((zero_shot + alpha * gda).argmax(1) == labels).double().mean())
        scores.append(acc)
        if acc > best_acc:
            best_acc, best_alpha = acc, alpha
    return best_alpha, scores


class GdaClassifier(torch.nn.Module):
    """logits = scale · f̂ Zᵀ + α (f̂ Wᵀ + b); f̂ the normalised (N, D) features, Z (C, D), W (C, D), b (C,)."""

    def __init__(
        self,
        zero_shot: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        alpha: float,
        scale: float,
        *,
        classnames: tuple[str, ...],
        templates: tuple[str, ...],
        samples: torch.Tensor,
        cfg: GdaConfig,
    ):
        super().__init__()
        self.register_buffer("zero_shot", zero_shot.float())
        self.register_buffer("weight", weight.float())
        self.register_buffer("bias", bias.float())
        self.register_buffer("samples", samples)  # (n, D) normalised support samples, for new classes
        self.alpha, self.scale, self.classnames, self.templates, self.cfg = (
            alpha,
            scale,
            classnames,
            templates,
            cfg,
        )
        self.fitted: tuple[
            GdaClassifier, ...
        ] = ()  # a synthesised classifier keeps the fitted one (not a submodule)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = F.normalize(features.float(), dim=-1)
        return self.scale * x @ self.zero_shot.t() + self.alpha * (x @ self.weight.t() + self.bias)

    def for_classes(self, classnames: tuple[str, ...], ctx: FitContext) -> GdaClassifier:
        """The fitted classifier for its own classes; for others, ``main_base2new.py``'s synthesis from text."""
        fitted = self.fitted[0] if self.fitted else self
        if tuple(classnames) == fitted.classnames:
            return fitted
        text = embed_classes(ctx, tuple(classnames), self.templates)
        weight, bias = synthesise_new_classes(
            self.samples.double(),
            text.double(),
            self.cfg.new_class_neighbours,
            self.cfg.new_class_text_copies,
        )
        new = GdaClassifier(
            text,
            weight,
            bias,
            self.alpha,
            self.scale,
            classnames=tuple(classnames),
            templates=self.templates,
            samples=self.samples,
            cfg=self.cfg,
        )
        new.fitted = (fitted,)
        return new


def synthesise_new_classes(
    samples: torch.Tensor, text: torch.Tensor, k: int, copies: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``main_base2new.py``: GDA (W (C', D), b (C',)) for classes with text weights ``text`` (C', D) and no samples."""
    k = min(k, len(samples))
    neighbours = [samples[torch.topk(t @ samples.T, k=k).indices] for t in text]
    means = torch.stack(
        [torch.cat([nb, t.expand(copies, -1)]).mean(0) for nb, t in zip(neighbours, text, strict=True)]
    )
    dim = samples.shape[1]
    eye = torch.eye(dim, dtype=samples.dtype, device=samples.device)
    precisions = []
    for nb, t in zip(neighbours, text, strict=True):
        cov = (nb - t).T @ (nb - t) / (k - 1)
        precisions.append(dim * torch.linalg.pinv((k - 1) * cov + cov.trace() * eye))
    return discriminant(means, torch.stack(precisions).mean(0))


class Gda:
    name = "gda"
    version = "1"
    trainable = False
    Config = GdaConfig

    def default_config(self, dataset: str, shots: int) -> GdaConfig:
        return GdaConfig(prompts=default_prompts(dataset))

    def needs(self, cfg: GdaConfig) -> Needs:
        return Needs(train_views=cfg.train_views, augment_scale=(0.5, 1.0))

    def search_space(self, trial: Any, dataset: str, shots: int, cfg: GdaConfig) -> dict[str, Any]:
        """``--tune``: α over the official grid's range, continuously (log scale)."""
        return {"alpha": trial.suggest_float("alpha", ALPHA_GRID[0], ALPHA_GRID[-1], log=True)}

    def fit(self, data: FewShotData, cfg: GdaConfig, ctx: FitContext) -> GdaClassifier:
        templates = prompt_templates(data, cfg.prompts)
        zero_shot = embed_classes(ctx, data.classnames, templates)
        views = data.train.features.to(ctx.device)
        samples = F.normalize(
            views.reshape(-1, views.shape[-1]).double(), dim=-1
        )  # view-major: view v, image i
        labels = data.train.labels.to(ctx.device).repeat(views.shape[0])
        means = class_means(samples, labels, data.n_classes)
        weight, bias = discriminant(means, precision_matrix(samples, labels, means, cfg.covariance))
        classifier = GdaClassifier(
            zero_shot,
            weight,
            bias,
            0.0,
            ctx.logit_scale,
            classnames=data.classnames,
            templates=templates,
            samples=samples.float(),
            cfg=cfg,
        )
        alpha = cfg.alpha
        if alpha is None:
            x_val = F.normalize(data.val.center.to(ctx.device).float(), dim=-1)
            zs_val = ctx.logit_scale * x_val @ classifier.zero_shot.t()
            gda_val = x_val @ classifier.weight.t() + classifier.bias
            alpha, scores = choose_alpha(zs_val, gda_val, data.val.labels.to(ctx.device))
            ctx.record("alpha_val_accuracy", dict(zip(map(str, ALPHA_GRID), scores, strict=True)))
        classifier.alpha = float(alpha)
        ctx.record("alpha", float(alpha))
        ctx.record("samples", int(len(samples)))
        return classifier
