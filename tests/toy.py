"""Shared scaffolding for method tests: the tiny CLIP at CLIP's trained temperature, and toy few-shot data."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from bench.backbone import Backbone, BackboneRef, load_backbone
from bench.methods.base import FeatureSet, FewShotData, FitContext

CLIP_LOGIT_SCALE = 100.0  # exp(logit_scale) of every released CLIP; a random init has 1/0.07
SINGLE_PROMPT = {"coop": ("a photo of a {}.",)}


def clip_scaled_backbone() -> Backbone:
    """``bench-tiny/random`` with logit scale 100, so training signals have real CLIP's size."""
    backbone = load_backbone(BackboneRef.parse("bench-tiny/random"), torch.device("cpu"))
    backbone.model.logit_scale.data.fill_(math.log(CLIP_LOGIT_SCALE))
    return backbone


def direct_text_features(backbone: Backbone):
    """``text_features(templates, classnames) -> (T, C, D)`` straight from the encoder (no cache)."""

    def text(templates, classnames):
        prompts = [t.format(c) for t in templates for c in classnames]
        return backbone.encode_text(backbone.tokenize(prompts)).view(len(templates), len(classnames), -1)

    return text


def toy_context(backbone: Backbone, seed: int = 1) -> FitContext:
    return FitContext(
        backbone=backbone, device=torch.device("cpu"), seed=seed, text_features=direct_text_features(backbone)
    )


def clustered_data(
    names: tuple[str, ...],
    per_class: int,
    views: int,
    *,
    noise: float = 1.0,
    seed: int = 0,
    dim: int = 64,
    prompts: Mapping[str, tuple[str, ...]] = SINGLE_PROMPT,
) -> FewShotData:
    """Gaussian clusters around random class means of norm 3: support (views, C·per_class, dim), val 4 per class."""
    generator = torch.Generator().manual_seed(seed)
    n = len(names)
    means = F.normalize(torch.randn(n, dim, generator=generator), dim=-1) * 3
    labels = torch.arange(n).repeat_interleave(per_class)
    train = FeatureSet(
        means[labels][None] + noise * torch.randn(views, len(labels), dim, generator=generator), labels
    )
    val_labels = torch.arange(n).repeat_interleave(4)
    val = FeatureSet(
        means[val_labels][None] + noise * torch.randn(1, len(val_labels), dim, generator=generator),
        val_labels,
    )
    return FewShotData("toy", per_class, names, prompts, train, val)
