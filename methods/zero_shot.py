"""Zero-shot CLIP: classify by cosine similarity to prompt embeddings.

Defaults: CoOp's single per-dataset template (``trainers/zsclip.py: CUSTOM_TEMPLATES``,
``prompts="coop"``). Any other prompt set of the dataset averages the normalised features of its
templates and normalises again (CLIP's prompt ensembling): ``"ensemble"`` is CLIP's published
ensemble (80 templates on ImageNet); ``"coop_ensemble"`` is CoOp's ``ZeroshotCLIP2``, the 7
``IMAGENET_TEMPLATES_SELECT`` (plus the CoOp template outside ImageNet), the set behind the
published 60.32/60.33 on ImageNet (Tip-Adapter's ``exp.log`` and paper).
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
    prompts: str = (
        "coop"  # prompt set: "coop" (one template), "coop_ensemble" (CoOp's 7) or "ensemble" (CLIP's)
    )


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
