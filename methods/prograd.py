"""ProGrad: CoOp whose gradient is kept from conflicting with the zero-shot prediction's (Zhu et al., ICCV 2023).

Every step (official ``ProGrad.public/trainers/prograd.py`` ``ProGradLoss`` and
``Dassl.ProGrad.pytorch/dassl/engine/trainer.py`` ``prograd_backward_and_update``):
- G_d = ∇ CE(student logits, y), the domain direction;
- G_g = ∇ KL, with ``KL = mean_i Σ_c −softmax(z_i/T)_c · log_softmax(s_i/T)_c · T²`` (the cross-entropy to
  the teacher, whose gradient is the KL's), z the frozen zero-shot logits ``scale · cos(f, t_c^clip)`` of
  the hand-crafted prompts, s the student's;
- per parameter tensor (only the context here): if cos(G_d, G_g) < 0 the update direction is
  ``G_d − λ (G_d · Ĝ_g) Ĝ_g`` (Ĝ_g = G_g / ‖G_g‖), else G_d unchanged. The KL itself is never added to the
  loss: it only supplies a direction. SGD (with its weight decay) then steps on that gradient.

Defaults (``configs/trainers/ProGrad/rn50*.yaml``, ``scripts/prograd.sh``, ``README.md``, ``train.py``):
- λ = 1 (``LOSS.LAMBDA``), except 0.8 for Flowers102, DTD and EuroSAT at 8 and 16 shots (README); T = 1.
- 16 context vectors; ``CTX_INIT: True``: the dataset's teacher template without " {}." ("a photo of a"),
  placed at the end of the 16 vectors, the vectors before it zero; class token at the end.
- CoOp's optimiser and epochs: SGD 0.002, batch 32, 50 / 100 / 200 epochs by shots (rn50_ep50 /
  rn50_ep100 / rn50), cosine, 1 warm-up epoch at 1e-5; last epoch.
- Teacher prompts: ProGrad's own ``CUSTOM_TEMPLATES`` (five differ from CoOp's: Pets, Flowers, Aircraft,
  DTD, Food101).

Deviations (docs/fidelity.md): cached augmented views as CoOp; the phrase's context counts tokens (the
official code counts words, so "a type of pet, a photo of a" leaves its last token outside the context).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from bench.errors import BenchError
from bench.methods._guided import (
    OFFICIAL,
    Objective,
    hand_crafted_features,
    hand_crafted_templates,
    prompt_logits,
    train_context,
)
from bench.methods.base import FewShotData, FitContext, Needs
from bench.methods.coop import (
    CoopConfig,
    TransferablePromptClassifier,
    build_prompt_learner,
    final_text_features,
    init_context,
    text_tower,
)
from bench.methods.training import coop_epochs
from bench.seeding import derive_seed, torch_generator

# ProGrad.public/trainers/prograd.py CUSTOM_TEMPLATES, keyed by bench dataset name
PROGRAD_TEMPLATES = {
    "oxford_pets": "a type of pet, a photo of a {}.",
    "oxford_flowers": "a type of flower, a photo of a {}.",
    "fgvc_aircraft": "a type of aircraft, a photo of a {}.",
    "dtd": "a texture of {}.",
    "eurosat": "a centered satellite photo of {}.",
    "stanford_cars": "a photo of a {}.",
    "food101": "a type of food, a photo of {}.",
    "sun397": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "ucf101": "a photo of a person doing {}.",
    "imagenet": "a photo of a {}.",
}
LAMBDA_08 = frozenset({"oxford_flowers", "dtd", "eurosat"})  # README: λ = 0.8 there at 8 and 16 shots
TEMPLATE = "template"  # ctx_init: the teacher template's words before "{}"


@dataclass(frozen=True)
class ProGradConfig:
    BOUNDS: ClassVar[dict] = {"lam": (0, None), "temperature": (1e-3, None), "n_ctx": (1, None)}
    lam: float = 1.0  # λ, share of the conflicting component removed; 0 = no projection (CoOp)
    temperature: float = 1.0  # T of the KL to the zero-shot prediction (LOSS.T)
    teacher: str = OFFICIAL  # hand-crafted prompts: "official" (ProGrad's templates) or a prompt set
    n_ctx: int = 16
    ctx_init: str = TEMPLATE  # "template", a phrase (both right-aligned after zero vectors), "" = random
    class_token_position: str = "end"  # "end", "middle" or "front"
    train_views: int = 10  # cached augmented views per support image
    epochs: int = 200  # default_config sets CoOp's epochs by shots
    lr: float = 0.002
    batch_size: int = 32
    weight_decay: float = 5e-4


def project(domain: torch.Tensor, general: torch.Tensor, lam: float) -> tuple[torch.Tensor, bool]:
    """ProGrad's update direction from G_d (``domain``) and G_g (``general``), same shape; and whether they conflicted.

    A zero gradient has no direction (the official code would divide by 0): nothing is projected then.
    """
    d_norm, g_norm = torch.linalg.norm(domain), torch.linalg.norm(general)
    if d_norm == 0 or g_norm == 0:
        return domain, False
    unit = general / g_norm
    if torch.dot((domain / d_norm).flatten(), unit.flatten()) >= 0:
        return domain, False
    return domain - lam * torch.dot(domain.flatten(), unit.flatten()) * unit, True


def teacher_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``ProGradLoss``'s KL term: (B, C) student and teacher logits -> scalar."""
    soft = F.softmax(teacher / temperature, dim=-1)
    return (-soft * F.log_softmax(student / temperature, dim=-1) * temperature**2).sum(1).mean()


def context_init(
    backbone: Any, cfg: ProGradConfig, phrase: str, n_classes: int, generator: torch.Generator
) -> tuple[torch.Tensor, str]:
    """(n_ctx, W) context and its stand-in text: random (``ctx_init = ""``, CoOp's draw) or ``phrase``'s token
    embeddings at the end of ``n_ctx`` vectors, the ones before it zero (ProGrad's ``PromptLearner``)."""
    if not cfg.ctx_init:
        return init_context(backbone, CoopConfig(n_ctx=cfg.n_ctx, ctx_init=""), n_classes, generator)
    if phrase:
        vectors, phrase = init_context(backbone, CoopConfig(ctx_init=phrase), n_classes, generator)
    else:  # a template with nothing before "{}" ("{} texture."): all context vectors start at zero
        vectors = torch.zeros(0, text_tower(backbone.model).token_embedding.weight.shape[1])
    if len(vectors) > cfg.n_ctx:
        raise BenchError(
            f"the context phrase {phrase!r} has {len(vectors)} tokens, more than n_ctx = {cfg.n_ctx}",
            where="config field prograd.n_ctx",
            fix=f"set n_ctx to at least {len(vectors)}",
        )
    padding = cfg.n_ctx - len(vectors)
    vectors = torch.cat([torch.zeros(padding, vectors.shape[1]), vectors])
    return vectors, " ".join(["X"] * padding + ([phrase] if phrase else []))


def init_phrase(cfg: ProGradConfig, templates: tuple[str, ...]) -> str:
    """The phrase ``ctx_init`` names: the first teacher template's words before "{}" for ``"template"``."""
    return templates[0].split("{}")[0].strip() if cfg.ctx_init == TEMPLATE else cfg.ctx_init


class ProGrad:
    name = "prograd"
    version = "1"
    trainable = True
    Config = ProGradConfig

    def default_config(self, dataset: str, shots: int) -> ProGradConfig:
        return ProGradConfig(
            epochs=coop_epochs(dataset, shots), lam=0.8 if dataset in LAMBDA_08 and shots >= 8 else 1.0
        )

    def needs(self, cfg: ProGradConfig) -> Needs:
        return Needs(train_views=cfg.train_views)

    def search_space(self, trial: Any, dataset: str, shots: int, cfg: ProGradConfig) -> dict[str, Any]:
        """``--tune``: λ in [0, 1] (the paper's ablation; the README picks 0.8 or 1 per dataset)."""
        return {"lam": trial.suggest_float("lam", 0.0, 1.0)}

    def fit(self, data: FewShotData, cfg: ProGradConfig, ctx: FitContext) -> TransferablePromptClassifier:
        teacher_set, templates = hand_crafted_templates(data, cfg.teacher, PROGRAD_TEMPLATES)
        vectors, ctx_text = context_init(
            ctx.backbone,
            cfg,
            init_phrase(cfg, templates),
            data.n_classes,
            torch_generator(derive_seed(ctx.seed, "init")),
        )
        learner = build_prompt_learner(
            ctx.backbone, data.classnames, vectors, ctx_text, cfg.class_token_position
        )
        steps = {"all": 0, "projected": 0}
        objective = None
        if cfg.lam != 0:  # λ = 0 leaves every gradient as CoOp's: CoOp's objective, computed as CoOp does
            objective = projected_objective(
                learner.ctx,
                hand_crafted_features(ctx, data.classnames, templates),
                cfg,
                ctx.logit_scale,
                steps,
            )
        losses = train_context(learner, data, cfg, ctx, objective)
        ctx.record("n_ctx", learner.n_ctx)
        ctx.record(
            "prompt",
            {"context": ctx_text, "position": cfg.class_token_position, "tokens": f"{ctx_text} {{}}."},
        )
        ctx.record("hand_crafted", {"set": teacher_set, "templates": list(templates)})
        ctx.record("train_loss_first_last", [losses[0], losses[-1]] if losses else [])
        ctx.record("projected_steps", steps)
        return TransferablePromptClassifier(
            final_text_features(learner, ctx),
            ctx.logit_scale,
            learner.ctx,
            ctx_text,
            cfg.class_token_position,
        )


def projected_objective(
    param: torch.nn.Parameter,
    teacher_text: torch.Tensor,
    cfg: ProGradConfig,
    scale: float,
    steps: dict[str, int],
) -> Objective:
    """An objective whose value is the cross-entropy and whose gradient with respect to ``param`` is ProGrad's
    projected direction: both gradients are taken here (two passes through the text tower, as the official
    trainer's two backward calls), and the returned surrogate ``CE.detach() + ⟨param, g⟩ − ⟨param, g⟩.detach()``
    hands ``g`` to the optimiser's ``backward``. ``steps`` counts all and projected (conflicting) steps.

    Args:
        teacher_text: (C, D) normalised hand-crafted text features (the zero-shot classifier).
    """

    def objective(x: torch.Tensor, y: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        student = prompt_logits(x, text, scale)
        with torch.no_grad():
            teacher = scale * F.normalize(x, dim=-1) @ teacher_text.t()
        ce = F.cross_entropy(student, y)
        (general,) = torch.autograd.grad(
            teacher_loss(student, teacher, cfg.temperature), param, retain_graph=True
        )
        (domain,) = torch.autograd.grad(ce, param)
        direction, conflict = project(domain, general, cfg.lam)
        steps["all"] += 1
        steps["projected"] += int(conflict)
        surrogate = (param * direction.detach()).sum()
        return ce.detach() + surrogate - surrogate.detach()

    return objective
