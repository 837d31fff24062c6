"""CoCoOp: CoOp with an image-conditioned context (Zhou et al., CVPR 2022).

Official code: KaiyangZhou/CoOp ``trainers/cocoop.py``, ``configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml``
(the config of ``scripts/cocoop/base2new_train.sh`` and ``xd_train.sh``), Dassl defaults.

A meta-net ``Linear(D, D/16) → ReLU → Linear(D/16, W)`` (PyTorch's default init, biases included) maps the
L2-normalised image feature f̂ to a bias π(f̂) added to every context vector, so each image has its own
prompts ``[SOT][v1 + π]…[vM + π][name][.][EOT]`` and its own class text features t_c(f̂);
``logits = scale · cos(f̂, t_c(f̂))``. The context and the meta-net train; CLIP stays frozen.

Defaults (the c4/ctxv1 config): ``ctx_init = "a photo of a"`` (M = 4), SGD lr 0.002, momentum 0.9, weight
decay 5e-4, **batch 1**, **10 epochs**, cosine schedule with one warm-up epoch at 1e-5 (the recipe in
:mod:`bench.methods.training`), last-epoch model, 16 shots in the paper (the same recipe at every K here).

Every image needs its own pass of C prompts through the text transformer: the official code loops over
the images of a batch. Here the (images × classes) prompts run as one batch, truncated after the longest
EOT (as CoOp's training pass), and split into chunks of at most ``rows_per_chunk`` prompts derived from
``memory_mb`` (an estimate of the activations one prompt keeps for backward). While training, each chunk
runs under activation checkpointing when more than one chunk is needed, so the memory stays within the
budget for any number of classes and images (at the price of recomputing those chunks' forward pass).
The returned classifier scores test images the same way, chunk by chunk, never holding more than one
chunk's text features.

Deviations (docs/fidelity.md): cached augmented views (as ``coop``); the text transformer is truncated
after the longest EOT at test time too (the official code runs 77 positions; ~5e-7 relative); bf16
autocast on CUDA, fp32 on CPU (the code: fp16 CLIP and meta-net); class token at the end only (the
official ``PromptLearner`` has no other position).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from bench.methods.base import FewShotData, FitContext, Needs
from bench.methods.coop import (
    CoopConfig,
    PromptLearner,
    build_prompt_learner,
    encode_prompt_embeddings,
    init_context,
    text_tower,
)
from bench.methods.training import SGDRecipe, accuracy, cpu_threads_for, train_on_features, val_reporter
from bench.seeding import derive_seed, torch_generator

ACTIVATION_FLOATS = 16  # floats per token, layer and width unit one prompt keeps for backward (estimate)


@dataclass(frozen=True)
class CocoopConfig:
    BOUNDS: ClassVar[dict] = {"n_ctx": (1, None), "meta_reduction": (1, None), "memory_mb": (1, None)}
    n_ctx: int = 4  # N_CTX of the c4 config (a phrase sets M to its length)
    ctx_init: str = "a photo of a"  # CTX_INIT of the ctxv1 config; "" = random N(0, 0.02²)
    meta_reduction: int = 16  # meta-net hidden width D // 16
    train_views: int = 10  # cached augmented views per support image
    epochs: int = 10
    lr: float = 0.002
    batch_size: int = 1
    weight_decay: float = 5e-4
    memory_mb: int = 1024  # budget of one chunk of the images × classes text pass (memory only)


def rows_per_chunk(tower: torch.nn.Module, length: int, memory_mb: int) -> int:
    """How many prompts of ``length`` positions one chunk of the text pass holds within ``memory_mb``."""
    width, layers = tower.transformer.width, len(tower.transformer.resblocks)
    heads = getattr(tower.transformer.resblocks[0].attn, "num_heads", 8)
    per_prompt = 4 * length * layers * (ACTIVATION_FLOATS * width + 2 * heads * length)  # fp32 bytes
    return max(1, memory_mb * 2**20 // per_prompt)


def make_meta_net(image_dim: int, ctx_dim: int, reduction: int, seed: int) -> torch.nn.Sequential:
    """The official ``meta_net`` with PyTorch's default init, drawn from ``seed`` (not the global RNG)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.nn.Sequential(
            torch.nn.Linear(image_dim, image_dim // reduction),
            torch.nn.ReLU(),
            torch.nn.Linear(image_dim // reduction, ctx_dim),
        )


def conditioned_text_features(
    tower: torch.nn.Module,
    learner: PromptLearner,
    bias: torch.Tensor,
    rows: int,
    start: int = 0,
    stop: int | None = None,
    use_checkpoint: bool = False,
) -> torch.Tensor:
    """Text features of the image-conditioned prompts, image-major rows ``start:stop`` of (images × classes).

    Args:
        learner: an ``end``-position :class:`PromptLearner` (context (M, W), frozen SOT/name/EOT embeddings).
        bias: (B, W) meta-net outputs, one per image. rows: prompts per chunk.
        use_checkpoint: recompute each chunk's forward in backward instead of keeping its activations.

    Returns:
        (stop - start, D) raw text features; row r is image r // C, class r % C.
    """
    n_classes = learner.prefix.shape[0]
    stop = len(bias) * n_classes if stop is None else stop
    length = (
        int(learner.eot.max()) + 1
    )  # every chunk as long as the longest prompt: results do not depend on `rows`
    suffix = learner.suffix[:, : length - 1 - learner.n_ctx]

    def chunk(index: torch.Tensor, shifted: torch.Tensor) -> torch.Tensor:
        classes = index % n_classes
        embeddings = torch.cat([learner.prefix[classes], shifted, suffix[classes]], dim=1)
        return encode_prompt_embeddings(tower, embeddings, learner.eot[classes], truncate=False)

    out = []
    for first in range(start, stop, rows):
        index = torch.arange(first, min(first + rows, stop), device=bias.device)
        shifted = learner.ctx[None] + bias[index // n_classes][:, None]  # (rows, M, W)
        if use_checkpoint:
            out.append(checkpoint(chunk, index, shifted, use_reentrant=False))
        else:
            out.append(chunk(index, shifted))
    return torch.cat(out)


class CocoopClassifier(torch.nn.Module):
    """logits[i, c] = scale · cos(f̂_i, t_c(f̂_i)) for (N, D) raw image features, in chunks of ``rows`` prompts."""

    def __init__(
        self,
        learner: PromptLearner,
        meta_net: torch.nn.Module,
        scale: float,
        backbone: Any,
        ctx_text: str,
        memory_mb: int,
    ):
        super().__init__()
        self.learner, self.meta_net = learner, meta_net
        self.scale, self.backbone, self.ctx_text, self.memory_mb = scale, backbone, ctx_text, memory_mb

    def image_bias(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(f̂ (N, D), meta-net bias (N, W))."""
        x = F.normalize(features.float(), dim=-1)
        return x, self.meta_net(x)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        tower = text_tower(self.backbone.model)
        n_classes = self.learner.prefix.shape[0]
        rows = rows_per_chunk(tower, int(self.learner.eot.max()) + 1, self.memory_mb)
        with self.backbone.autocast():
            x, bias = self.image_bias(features)
            total = len(x) * n_classes
            logits = torch.empty(total, device=x.device)
            for start in range(0, total, rows):  # one chunk's text features at a time
                stop = min(start + rows, total)
                text = F.normalize(
                    conditioned_text_features(tower, self.learner, bias, rows, start, stop).float(), dim=-1
                )
                images = torch.arange(start, stop, device=x.device) // n_classes
                logits[start:stop] = (x[images] * text).sum(-1)
        return self.scale * logits.view(len(x), n_classes)

    def for_classes(self, classnames: tuple[str, ...], ctx: FitContext) -> CocoopClassifier:
        learner = build_prompt_learner(
            ctx.backbone, classnames, self.learner.ctx.detach(), self.ctx_text, "end"
        )
        return CocoopClassifier(
            learner.requires_grad_(False),
            self.meta_net,
            self.scale,
            ctx.backbone,
            self.ctx_text,
            self.memory_mb,
        )


def _train(
    learner: PromptLearner, meta_net: torch.nn.Module, data: FewShotData, cfg: CocoopConfig, ctx: FitContext
) -> list[float]:
    tower, scale = text_tower(ctx.backbone.model), ctx.logit_scale
    length = int(learner.eot.max()) + 1
    rows = rows_per_chunk(tower, length, cfg.memory_mb)

    def logits_fn(features: torch.Tensor) -> torch.Tensor:
        """(B, D) raw image features -> (B, C) logits, every image through its own C prompts."""
        x = F.normalize(features.float(), dim=-1)
        with ctx.backbone.autocast():
            bias = meta_net(x)
            many = len(x) * data.n_classes > rows
            text = conditioned_text_features(
                tower, learner, bias, rows, use_checkpoint=many and torch.is_grad_enabled()
            )
        text = F.normalize(text.float(), dim=-1).view(len(x), data.n_classes, -1)
        return scale * torch.einsum("bd,bcd->bc", x, text)

    x_val, y_val = data.val.center.to(ctx.device), data.val.labels
    report = val_reporter(ctx, lambda: accuracy(logits_fn(x_val), y_val), cfg.epochs, every=1)
    recipe = SGDRecipe(lr=cfg.lr, batch_size=cfg.batch_size, weight_decay=cfg.weight_decay)
    width = learner.prefix.shape[-1]
    work = (
        3 * cfg.batch_size * data.n_classes * length * width * width * 12 * len(tower.transformer.resblocks)
    )
    with cpu_threads_for(ctx.device, work):
        return train_on_features(
            [learner.ctx, *meta_net.parameters()],
            logits_fn,
            data.train,
            cfg.epochs,
            recipe,
            torch_generator(derive_seed(ctx.seed, "loader")),
            ctx.device,
            report,
        )


class Cocoop:
    name = "cocoop"
    version = "1"
    trainable = True
    Config = CocoopConfig

    def default_config(self, dataset: str, shots: int) -> CocoopConfig:
        return CocoopConfig()

    def needs(self, cfg: CocoopConfig) -> Needs:
        return Needs(train_views=cfg.train_views)

    def search_space(self, trial: Any, dataset: str, shots: int, cfg: CocoopConfig) -> dict[str, Any]:
        """``--tune``: the learning rate around 0.002 (a decade either way, log scale) and, with random init,
        the context length M ∈ {4, 8, 16} of the paper's c4/c8/c16 configs (a phrase fixes M)."""
        space: dict[str, Any] = {"lr": trial.suggest_float("lr", 2e-4, 2e-2, log=True)}
        if not cfg.ctx_init:
            space["n_ctx"] = trial.suggest_categorical("n_ctx", [4, 8, 16])
        return space

    def fit(self, data: FewShotData, cfg: CocoopConfig, ctx: FitContext) -> CocoopClassifier:
        coop_cfg = CoopConfig(n_ctx=cfg.n_ctx, ctx_init=cfg.ctx_init)
        vectors, ctx_text = init_context(
            ctx.backbone, coop_cfg, data.n_classes, torch_generator(derive_seed(ctx.seed, "init"))
        )
        learner = build_prompt_learner(ctx.backbone, data.classnames, vectors, ctx_text, "end")
        meta_net = make_meta_net(
            ctx.backbone.embed_dim,
            learner.prefix.shape[-1],
            cfg.meta_reduction,
            derive_seed(ctx.seed, "meta_net"),
        ).to(ctx.device)
        losses = _train(learner, meta_net, data, cfg, ctx)
        ctx.record("n_ctx", learner.n_ctx)
        ctx.record("prompt", {"context": ctx_text, "position": "end", "tokens": f"{ctx_text} {{}}."})
        ctx.record(
            "rows_per_chunk",
            rows_per_chunk(text_tower(ctx.backbone.model), int(learner.eot.max()) + 1, cfg.memory_mb),
        )
        ctx.record("train_loss_first_last", [losses[0], losses[-1]] if losses else [])
        return CocoopClassifier(
            learner.requires_grad_(False),
            meta_net.requires_grad_(False),
            ctx.logit_scale,
            ctx.backbone,
            ctx_text,
            cfg.memory_mb,
        )
