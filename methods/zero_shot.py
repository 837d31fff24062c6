"""Zero-shot CLIP: classify by cosine similarity to prompt embeddings.

Defaults: CoOp's single per-dataset template (``trainers/zsclip.py: CUSTOM_TEMPLATES``,
``prompts="coop"``); ``prompts="ensemble"`` averages the normalised features of the
dataset's template ensemble (CLIP's prompt ensembling, CoOp's ``ZeroshotCLIP2``).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.methods.base import (
    CosineClassifier,
    FewShotData,
    FitContext,
    Needs,
    embed_classes,
    prompt_templates,
)


@dataclass(frozen=True)
class ZeroShotConfig:
    prompts: str = "coop"  # prompt set: "coop" (one template, CoOp) or "ensemble"


class ZeroShot:
    name = "zero_shot"
    version = "1"
    trainable = False
    Config = ZeroShotConfig

    def default_config(self, dataset: str, shots: int) -> ZeroShotConfig:
        return ZeroShotConfig()

    def needs(self, cfg: ZeroShotConfig) -> Needs:
        return Needs(train_views=0)

    def fit(self, data: FewShotData, cfg: ZeroShotConfig, ctx: FitContext) -> CosineClassifier:
        templates = prompt_templates(data, cfg.prompts)
        return CosineClassifier(embed_classes(ctx, data.classnames, templates), ctx.logit_scale, templates)
