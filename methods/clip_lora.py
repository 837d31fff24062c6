"""CLIP-LoRA: low-rank adapters on the attention projections of both encoders (Zanella & Ben Ayed,
CVPR 2024 workshops).

Every query, key and value projection of every transformer block, text and vision, gets a trainable
low-rank update ``ΔW = s · B A`` (A: (r, W), B: (W, r), ``s = alpha / sqrt(r)``), with dropout on
the update's input. Each step runs the whole text encoder over the C class prompts and the image
encoder over a batch of freshly augmented images (:mod:`bench.methods.encoder_training`); the loss is
cross-entropy on ``logit_scale · cos(image, text)``. The returned classifier keeps the adapters:
test images go through its ``encode_images`` (the adapted image encoder), and class names through the
adapted text encoder (``for_classes``: base-to-new).

Defaults, each read in MaxZanella/CLIP-LoRA (snapshot 358f0d7, 2024-10-14):
- ``run_utils.py``: ``--r 2``, ``--alpha 1``, ``--dropout_rate 0.25``, ``--params q k v``,
  ``--encoder both``, ``--position all``, ``--lr 2e-4``, ``--n_iters 500``, ``--batch_size 32``.
- ``lora.py``: ``total_iters = n_iters * shots``; ``AdamW(weight_decay=1e-2, betas=(0.9, 0.999))``;
  ``CosineAnnealingLR(total_iters, eta_min=1e-6)`` stepped every iteration; the last model (its
  ``VALIDATION = False``); the text features of ``dataset.template[0]`` recomputed every step.
- ``loralib/layers.py``: ``scaling = lora_alpha / math.sqrt(r)`` (not LoRA's alpha / r); A
  Kaiming-uniform (a = √5), B zeros, so the untrained model is CLIP; ``LinearLoRA.forward`` applies
  dropout to the update's input only; ``PlainMultiheadAttentionLoRA`` splits ``in_proj_weight`` into
  q/k/v. In eval mode the update is merged into the weights.
- ``datasets/*.py``: ``template = ['a photo of a {}.']`` for all eleven datasets (the per-dataset
  templates are commented out). ``main.py``: random-resized-crop (0.08, 1), bicubic, flip, CLIP's
  normalisation; ``datasets/utils.py``: ``build_data_loader(..., drop_last=False)``.

Deviations: bf16 autocast on CUDA where the official code uses fp16 autocast with a GradScaler
(fp32 on the CPU; ``precision="fp16"`` runs the official way); the backbone's own ``exp(logit_scale)``
where the official hard-codes 100 (the same value for released CLIPs up to rounding). On a ResNet image tower the vision-side adapters
go on the attention pool's q/k/v projections, merged into the weights (no dropout there): the
official code supports ViTs only.
"""

from __future__ import annotations

import math
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from bench.errors import BenchError
from bench.methods.base import FewShotData, FitContext, Needs, check_choice
from bench.methods.encoder_training import (
    check_precision,
    cosine_annealing,
    encoded_set,
    encoder_autocast,
    epochs_for_steps,
    grad_checkpointing,
    image_features,
    normalised_logits,
    seeded_global_rng,
    step_work,
    text_blocks,
    train_steps,
    vision_blocks,
    wrapped,
)
from bench.methods.training import accuracy, val_reporter
from bench.seeding import derive_seed, torch_generator

ENCODERS = ("text", "vision", "both")
SLOTS = {"q": 0, "k": 1, "v": 2}


@dataclass(frozen=True)
class ClipLoraConfig:
    BOUNDS: ClassVar[dict] = {"rank": (1, None), "n_iters": (0, None), "dropout": (0, 1)}
    rank: int = 2  # r
    alpha: float = 1.0  # scaling s = alpha / sqrt(r)
    dropout: float = 0.25  # on the adapter's input
    targets: str = "qkv"  # attention projections adapted: letters of q, k, v, o
    encoders: str = "both"  # "text", "vision" or "both"
    n_iters: int = 500  # iterations per shot: 500 x K in all
    lr: float = 2e-4
    weight_decay: float = 1e-2  # AdamW
    eta_min: float = 1e-6  # cosine floor
    batch_size: int = 32
    template: str = "a photo of a {}."  # the official code's one template, every dataset
    grad_checkpointing: bool = False  # recompute activations in the backward (memory for time)
    precision: str = "auto"  # "auto": the backbone's autocast (bf16 on CUDA, fp32 on CPU); "fp16": float16
    # autocast with a GradScaler, train and test, as main.py / run_utils.py run it


def _uniform_a(rank: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """A as ``nn.init.kaiming_uniform_(a=sqrt(5))`` draws it: U(-1/sqrt(W), 1/sqrt(W)), from ``generator``."""
    bound = 1 / math.sqrt(width)
    return torch.empty(rank, width).uniform_(-bound, bound, generator=generator)


class LoraAttention(torch.nn.Module):
    """Wraps an open_clip block's ``nn.MultiheadAttention`` (batch-first, self-attention) with LoRA.

    Eval, or no dropout: the wrapped module's own forward with ``W + s·BA`` merged in
    (``torch.func.functional_call``), so with B = 0 it computes exactly what the frozen module does.
    Training with dropout: q/k/v from the frozen ``in_proj_weight`` plus the dropped-out low-rank
    path, attention by ``scaled_dot_product_attention``, then the module's own ``out_proj``; as the
    official ``PlainMultiheadAttentionLoRA`` does.
    """

    def __init__(self, mha: torch.nn.MultiheadAttention, cfg: ClipLoraConfig, generator: torch.Generator):
        super().__init__()
        if not getattr(mha, "batch_first", False) or not mha._qkv_same_embed_dim:
            raise BenchError(
                "CLIP-LoRA needs open_clip's batch-first attention blocks",
                where="--backbone",
                fix="install open_clip_torch>=3.0 (the versions bench is tested with)",
            )
        self._base = (mha,)  # not a submodule: the frozen weights stay the backbone's, out of this state dict
        width = mha.embed_dim
        self.slots = [c for c in cfg.targets if c in "qkvo"]
        self.scale, self.p = cfg.alpha / math.sqrt(cfg.rank), cfg.dropout
        self.A = torch.nn.ParameterDict(
            {c: torch.nn.Parameter(_uniform_a(cfg.rank, width, generator)) for c in self.slots}
        )
        self.B = torch.nn.ParameterDict(
            {c: torch.nn.Parameter(torch.zeros(width, cfg.rank)) for c in self.slots}
        )
        self.to(mha.in_proj_weight.device)

    @property
    def mha(self) -> torch.nn.MultiheadAttention:
        return self._base[0]

    def delta(self, slot: str) -> torch.Tensor:
        """(W, W) = s · B A of one projection."""
        return self.scale * self.B[slot] @ self.A[slot]

    def _lora(self, x: torch.Tensor, slot: str) -> torch.Tensor:
        dropped = F.dropout(x, self.p, training=True)
        return self.scale * F.linear(F.linear(dropped, self.A[slot].to(x.dtype)), self.B[slot].to(x.dtype))

    def forward(self, query, key, value, need_weights=False, attn_mask=None, **kwargs):
        if not self.training or self.p == 0:
            return self._merged(query, key, value, need_weights=need_weights, attn_mask=attn_mask, **kwargs)
        mha, (batch, length, width) = self.mha, query.shape
        qkv = list(F.linear(query, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1))
        for slot in self.slots:
            if slot in SLOTS:
                qkv[SLOTS[slot]] = qkv[SLOTS[slot]] + self._lora(query, slot)
        heads = mha.num_heads
        q, k, v = (t.reshape(batch, length, heads, width // heads).transpose(1, 2) for t in qkv)
        mask = attn_mask.to(q.dtype) if attn_mask is not None and attn_mask.is_floating_point() else attn_mask
        out = (
            F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            .transpose(1, 2)
            .reshape(batch, length, width)
        )
        projected = mha.out_proj(out)
        if "o" in self.slots:
            projected = projected + self._lora(out, "o")
        return projected, None

    def _merged(self, query, key, value, **kwargs):
        mha = self.mha
        deltas = [self.delta(c) if c in self.slots else None for c in "qkv"]
        params = {}
        if any(d is not None for d in deltas):
            zero = torch.zeros_like(mha.in_proj_weight[: mha.embed_dim])
            params["in_proj_weight"] = mha.in_proj_weight + torch.cat(
                [d if d is not None else zero for d in deltas]
            )
        if "o" in self.slots:
            params["out_proj.weight"] = mha.out_proj.weight + self.delta("o")
        return torch.func.functional_call(mha, params, (query, key, value), kwargs, strict=False)


class LoraMergedLinear(torch.nn.Module):
    """A ``nn.Linear`` whose ``weight`` reads as ``W + s·BA``: for modules that pass a projection's weight
    to a functional call instead of calling it (open_clip's ResNet ``AttentionPool2d``)."""

    def __init__(self, linear: torch.nn.Linear, cfg: ClipLoraConfig, generator: torch.Generator):
        super().__init__()
        self._base = (linear,)
        self.scale = cfg.alpha / math.sqrt(cfg.rank)
        self.A = torch.nn.Parameter(_uniform_a(cfg.rank, linear.in_features, generator))
        self.B = torch.nn.Parameter(torch.zeros(linear.out_features, cfg.rank))
        self.to(linear.weight.device)

    @property
    def weight(self) -> torch.Tensor:
        return self._base[0].weight + self.scale * self.B @ self.A

    @property
    def bias(self) -> torch.Tensor | None:
        return self._base[0].bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class LoraAdapters(torch.nn.Module):
    """Every adapter of one model, with where each goes (``installed`` puts them there for a ``with`` block)."""

    def __init__(self, model: torch.nn.Module, cfg: ClipLoraConfig, generator: torch.Generator):
        super().__init__()
        check_choice("clip_lora", "encoders", cfg.encoders, ENCODERS)
        if not cfg.targets or set(cfg.targets) - set("qkvo"):
            raise BenchError(
                f"targets {cfg.targets!r} is not a set of q, k, v, o",
                where="config field clip_lora.targets",
                fix='use e.g. "qkv" (the official default) or "qkvo"',
            )
        self.places: list[tuple[torch.nn.Module, str]] = []
        modules: list[torch.nn.Module] = []
        if cfg.encoders in ("text", "both"):
            for block in text_blocks(model):
                modules.append(LoraAttention(block.attn, cfg, generator))
                self.places.append((block, "attn"))
        if cfg.encoders in ("vision", "both"):
            blocks = vision_blocks(model)
            if blocks is not None:
                for block in blocks:
                    modules.append(LoraAttention(block.attn, cfg, generator))
                    self.places.append((block, "attn"))
            else:  # a ResNet: the attention pool is its only attention
                pool = model.visual.attnpool
                for slot in (c for c in cfg.targets if c in "qkvo"):
                    name = "c_proj" if slot == "o" else f"{slot}_proj"
                    modules.append(LoraMergedLinear(getattr(pool, name), cfg, generator))
                    self.places.append((pool, name))
        self.adapters = torch.nn.ModuleList(modules)
        self.checkpointing = cfg.grad_checkpointing

    @contextmanager
    def installed(self, model: torch.nn.Module):
        with ExitStack() as stack:
            stack.enter_context(
                wrapped(
                    [
                        (parent, name, module)
                        for (parent, name), module in zip(self.places, self.adapters, strict=True)
                    ]
                )
            )
            stack.enter_context(grad_checkpointing(model, self.checkpointing and self.training))
            yield


class AdaptedEncoderClassifier(torch.nn.Module):
    """logits = scale · cos(f, T) where f comes from :meth:`encode_images` (the adapted image encoder) and T
    (C, D) are the class prompts through the adapted text encoder.

    ``adapters`` is any module with ``installed(model)`` (a context manager putting it into the backbone)
    and ``text_features(backbone, classnames) -> (C, D)``.
    """

    def __init__(self, adapters: torch.nn.Module, backbone: Any, text_features: torch.Tensor, scale: float):
        super().__init__()
        self.adapters = adapters
        self.backbone = backbone  # a plain attribute: the frozen model is not part of this classifier's state
        # normalised, "averaged" over the one template and normalised again: CLIP's ensembling as the zero-shot
        # classifier computes it, so with B = 0 the logits are zero-shot's bit for bit (at the same precision)
        self.register_buffer("weights", F.normalize(F.normalize(text_features.float(), dim=-1), dim=-1))
        self.scale = scale

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D) features from :meth:`encode_images` -> (N, C) logits."""
        return self.scale * F.normalize(features.float(), dim=-1) @ self.weights.t()

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised pixels -> (B, D) float32 raw features of the adapted image encoder."""
        self.adapters.eval()
        with self.adapters.installed(self.backbone.model):
            return image_features(self.backbone, pixels, getattr(self.adapters, "precision", "auto"))

    @torch.no_grad()
    def for_classes(self, classnames: tuple[str, ...], ctx: FitContext) -> AdaptedEncoderClassifier:
        self.adapters.eval()
        text = self.adapters.text_features(self.backbone, classnames)
        return AdaptedEncoderClassifier(self.adapters, self.backbone, text, self.scale)


def adapted_classifier(
    adapter: torch.nn.Module, backbone: Any, classnames: tuple[str, ...], scale: float
) -> AdaptedEncoderClassifier:
    """The adapter frozen for scoring: eval mode, the classes' text features computed once."""
    adapter.eval()
    with torch.no_grad():
        text = adapter.text_features(backbone, classnames)
    return AdaptedEncoderClassifier(adapter, backbone, text, scale)


def adapted_val_accuracy(
    adapter: torch.nn.Module, backbone: Any, data: FewShotData, scale: float, device: torch.device
) -> float:
    """Few-shot val top-1 mid-training, val images encoded through the adapted encoder; the adapter is left
    in train mode."""
    model = adapted_classifier(adapter, backbone, data.classnames, scale)
    score = accuracy(
        model(encoded_set(model.encode_images, data.val, device).center.to(device)), data.val.labels
    )
    adapter.train()
    return score


class LoraModel(LoraAdapters):
    """The adapters plus CLIP-LoRA's text side: one template over the class names."""

    def __init__(self, model: torch.nn.Module, cfg: ClipLoraConfig, generator: torch.Generator):
        super().__init__(model, cfg, generator)
        self.template = cfg.template
        self.precision = cfg.precision

    def text_features(self, backbone: Any, classnames: tuple[str, ...]) -> torch.Tensor:
        """(C, D) float32 raw text features of ``template.format(name)`` through the adapted text encoder
        (differentiable when gradients are on)."""
        tokens = backbone.tokenize([self.template.format(name) for name in classnames]).to(backbone.device)
        with self.installed(backbone.model), encoder_autocast(backbone, self.precision):
            return backbone.model.encode_text(tokens).float()


class ClipLora:
    name = "clip_lora"
    version = "1"
    trainable = True
    Config = ClipLoraConfig
    as_published: ClassVar[dict[str, Any]] = {"precision": "fp16"}

    def default_config(self, dataset: str, shots: int) -> ClipLoraConfig:
        return ClipLoraConfig()  # fixed for every dataset and shot count (the paper's point)

    def needs(self, cfg: ClipLoraConfig) -> Needs:
        return Needs(images=True)

    def search_space(self, trial: Any, dataset: str, shots: int, cfg: ClipLoraConfig) -> dict[str, Any]:
        """``--tune``: the learning rate around 2e-4 (a decade either way) and the rank {2, 4, 8} of the
        paper's ablation."""
        return {
            "lr": trial.suggest_float("lr", 2e-5, 2e-3, log=True),
            "rank": trial.suggest_categorical("rank", [2, 4, 8]),
        }

    def fit(self, data: FewShotData, cfg: ClipLoraConfig, ctx: FitContext) -> AdaptedEncoderClassifier:
        backbone, device = ctx.backbone, ctx.device
        if data.train.images is None:
            raise BenchError(
                "clip_lora trains on images and got none",
                where="FewShotData.train.images",
                fix="run it through the runner (bench run), which attaches the images",
            )
        check_precision(cfg.precision, self.name)
        lora = LoraModel(backbone.model, cfg, torch_generator(derive_seed(ctx.seed, "init")))
        params = [p for p in lora.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
        total = cfg.n_iters * data.shots
        n = len(data.train.labels)
        epochs = epochs_for_steps(n, cfg.batch_size, total) if total else 0
        train_text = cfg.encoders in ("text", "both")
        with torch.no_grad():
            frozen_text = None if train_text else lora.text_features(backbone, data.classnames)

        def loss_fn(pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            text = lora.text_features(backbone, data.classnames) if train_text else frozen_text
            with lora.installed(backbone.model):
                if cfg.encoders == "text":
                    with torch.no_grad():
                        image = image_features(backbone, pixels, cfg.precision)
                else:
                    image = image_features(backbone, pixels, cfg.precision)
            return F.cross_entropy(normalised_logits(ctx.logit_scale, image, text), labels)

        def after_step(step: int) -> None:
            for group in optimizer.param_groups:
                group["lr"] = cosine_annealing(step + 1, total, cfg.lr, cfg.eta_min)

        def val_accuracy() -> float:
            return adapted_val_accuracy(lora, backbone, data, ctx.logit_scale, device)

        report = val_reporter(ctx, val_accuracy, epochs, every=max(1, epochs // 5))
        lora.train()
        with seeded_global_rng(derive_seed(ctx.seed, "dropout"), device):
            losses = train_steps(
                params,
                optimizer,
                loss_fn,
                data.train.images,
                data.train.labels,
                epochs=epochs,
                batch_size=cfg.batch_size,
                generator=torch_generator(derive_seed(ctx.seed, "loader")),
                seed=derive_seed(ctx.seed, "augment"),
                device=device,
                max_steps=total,
                drop_last=False,
                after_step=after_step,
                on_epoch_end=report,
                work=step_work(backbone.model, cfg.batch_size, data.n_classes),
                scaler=torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None,
            )
        ctx.record("iterations", total)
        ctx.record("adapted_modules", len(lora.adapters))
        ctx.record("trainable_parameters", sum(p.numel() for p in params))
        ctx.record("train_loss_first_last", [losses[0], losses[-1]] if losses else [])
        return adapted_classifier(lora, backbone, data.classnames, ctx.logit_scale)
