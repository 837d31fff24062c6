"""What KgCoOp and ProGrad share: CoOp's context training with an objective that consults hand-crafted prompts.

Both keep CoOp's prompt learner (:func:`bench.methods.coop.build_prompt_learner`), its optimiser and
schedule, and add knowledge from the frozen CLIP's hand-crafted prompts: KgCoOp as a penalty on the
learned class embeddings, ProGrad through the zero-shot prediction's gradient. Each official repository
carries its own copy of CoOp's ``CUSTOM_TEMPLATES`` (with a few templates changed), which
:func:`hand_crafted_templates` resolves per dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from bench.methods.base import FewShotData, FitContext, embed_classes, prompt_templates
from bench.methods.coop import PromptLearner, text_tower
from bench.methods.training import SGDRecipe, accuracy, cpu_threads_for, train_on_features, val_reporter
from bench.seeding import derive_seed, torch_generator

OFFICIAL = "official"

Objective = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""(B, D) raw image features, (B,) labels, (C, D) current raw text features (float32) -> scalar loss."""


def hand_crafted_templates(
    data: FewShotData, choice: str, table: Mapping[str, str]
) -> tuple[str, tuple[str, ...]]:
    """(name, templates) of the hand-crafted prompts a method consults.

    ``choice = "official"``: the method's own per-dataset template (``table``, keyed by bench dataset
    name); a dataset the official code does not know falls back to the dataset's ``coop`` set.
    Any other ``choice`` names one of the dataset's prompt sets (``coop``, ``ensemble``, ...).
    """
    if choice == OFFICIAL and data.dataset in table:
        return OFFICIAL, (table[data.dataset],)
    name = "coop" if choice == OFFICIAL else choice
    return name, prompt_templates(data, name)


def hand_crafted_features(
    ctx: FitContext, classnames: tuple[str, ...], templates: tuple[str, ...]
) -> torch.Tensor:
    """(C, D) normalised text features of the hand-crafted prompts (templates ensembled as CLIP does)."""
    return embed_classes(ctx, classnames, templates)


def prompt_logits(features: torch.Tensor, text: torch.Tensor, scale: float) -> torch.Tensor:
    """(B, D) raw image features, (C, D) raw text features -> (B, C) ``scale · cos``, exactly as CoOp's training."""
    return scale * F.normalize(features, dim=-1) @ F.normalize(text.float(), dim=-1).t()


def train_context(
    learner: PromptLearner, data: FewShotData, cfg: Any, ctx: FitContext, objective: Objective | None = None
) -> list[float]:
    """CoOp's training of ``learner.ctx`` (same seeds, batches, schedule, text-tower truncation), with
    ``objective`` in place of cross-entropy when given; returns the mean loss per epoch.

    ``cfg`` needs ``epochs``, ``lr``, ``batch_size``, ``weight_decay``. With ``objective=None`` this is
    step for step what :class:`bench.methods.coop.Coop` computes (tests/test_new_methods_a.py).
    """
    tower, scale = text_tower(ctx.backbone.model), ctx.logit_scale

    def current_text() -> torch.Tensor:
        with ctx.backbone.autocast():
            return learner.text_features(tower).float()

    def logits_fn(features: torch.Tensor) -> torch.Tensor:
        return prompt_logits(features, current_text(), scale)

    loss = None if objective is None else (lambda x, y: objective(x, y, current_text()))
    x_val, y_val = data.val.center.to(ctx.device), data.val.labels
    report = val_reporter(ctx, lambda: accuracy(logits_fn(x_val), y_val), cfg.epochs)
    recipe = SGDRecipe(lr=cfg.lr, batch_size=cfg.batch_size, weight_decay=cfg.weight_decay)
    width, length = learner.prefix.shape[-1], int(learner.eot.max()) + 1
    # same cost estimate as CoOp's: forward + backward through the text tower for every class, per step
    work = 3 * data.n_classes * length * width * width * 12 * len(tower.transformer.resblocks)
    with cpu_threads_for(ctx.device, work):
        return train_on_features(
            [learner.ctx],
            logits_fn,
            data.train,
            cfg.epochs,
            recipe,
            torch_generator(derive_seed(ctx.seed, "loader")),
            ctx.device,
            report,
            loss=loss,
        )
