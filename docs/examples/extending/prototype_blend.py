"""Prototype blend: zero-shot text weights mixed with the mean image feature of each class."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.methods.base import CosineClassifier, Needs, embed_classes, prompt_templates


@dataclass(frozen=True)
class BlendConfig:
    blend: float = 0.5  # 0: zero-shot CLIP; 1: the class means of the support images alone
    prompts: str = "coop"  # which of the dataset's prompt sets builds the text weights


class PrototypeBlend:
    name, version, trainable, Config = "prototype_blend", "1", False, BlendConfig

    def default_config(self, dataset, shots):
        return BlendConfig()

    def needs(self, cfg):
        return Needs()  # the cached centre view of the support images is enough

    def fit(self, data, cfg, ctx):
        templates = prompt_templates(data, cfg.prompts)
        text = embed_classes(ctx, data.classnames, templates)  # (C, D), normalised
        images = F.normalize(data.train.center.to(ctx.device), dim=-1)  # (N, D)
        means = torch.zeros_like(text).index_add_(0, data.train.labels.to(ctx.device), images)
        weights = F.normalize((1 - cfg.blend) * text + cfg.blend * F.normalize(means, dim=-1), dim=-1)
        return CosineClassifier(weights, ctx.logit_scale, templates)


BENCH_METHODS = {"prototype_blend": PrototypeBlend}
