"""MaPLe: multi-modal prompt learning, coupled deep prompts in both encoders (Khattak et al., CVPR 2023).

Text side: ``n_ctx`` learnable context vectors after SOT in the prompt ``[SOT][ctx][rest of the init
phrase][name][.][EOT]`` (layer 0), and at each deeper layer i < depth a new set of ``n_ctx``
learnable tokens replaces the outputs at those positions. Vision side: the same number of prompt
tokens, appended after the patch tokens before ``ln_pre`` and replaced at each deeper layer, each
produced from the text tokens of its layer by a linear coupling function (text width -> vision
width). Both encoders stay frozen; the prompts and couplings are trained. The returned classifier
keeps them: test images go through its ``encode_images`` (the prompted image encoder) and new class
names through the prompted text encoder (``for_classes``: base-to-new, MaPLe's main protocol).

The prompts enter through forward pre-hooks on open_clip's ``ln_pre`` and transformer blocks
(:func:`bench.methods.encoder_training.pre_hooks`), installed only while a MaPLe forward runs.

Defaults, each read in muzairkhattak/multimodal-prompt-learning (snapshot 69bce21, 2023-07-24):
- ``configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml``: ``N_CTX: 2``, ``CTX_INIT: "a photo of a"``,
  ``PROMPT_DEPTH: 9``, ``PREC: fp16``, SGD lr 0.0035, 5 epochs, batch 4, cosine, 1 constant warm-up
  epoch at 1e-5, random-resized-crop + flip, bicubic 224 px, CLIP's normalisation; Dassl's SGD
  defaults (momentum 0.9, weight decay 5e-4).
- ``trainers/maple.py``: the context is the init phrase's first ``n_ctx`` token embeddings ("a photo")
  and the prompt text is the whole phrase, so the class prompt reads "a photo of a {name}."; the
  deeper text prompts are N(0, 0.02²); the first-layer coupling ``proj`` is an ``nn.Linear`` and the
  deeper couplings are deep copies of one ``nn.Linear`` (the same initial weights); the learning rate
  is stepped per epoch; the last epoch's model is evaluated.
- ``clip/model.py`` (``ResidualAttentionBlock_MaPLe``, ``VisionTransformer_MaPLe``): the replacements
  described above, at layers 1 .. depth-1.

Deviations: bf16 autocast on CUDA with fp32 parameters, where the official code runs CLIP and the
first coupling in fp16 (its context vectors are fp16 too; ``precision="fp16"`` runs that way); the
text transformer runs up to the longest EOT during training (as CoOp here: exact under the causal mask
up to kernel rounding); a depth larger than an encoder's layer count is clipped to it (recorded as
``prompt_depth_used``). ViT backbones only, as the official code.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from bench.errors import BenchError
from bench.methods.base import FewShotData, FitContext, Needs
from bench.methods.clip_lora import AdaptedEncoderClassifier, adapted_classifier, adapted_val_accuracy
from bench.methods.coop import PromptLearner, text_tower
from bench.methods.encoder_training import (
    check_precision,
    encoder_autocast,
    grad_checkpointing,
    image_features,
    normalised_logits,
    pre_hooks,
    seeded_global_rng,
    step_work,
    text_blocks,
    train_steps,
    vision_blocks,
)
from bench.methods.training import SGDRecipe, dassl_lr, make_optimizer, val_reporter
from bench.seeding import derive_seed, torch_generator

DEEP_PROMPT_STD = 0.02  # trainers/maple.py: nn.init.normal_(single_para, std=0.02)


@dataclass(frozen=True)
class MapleConfig:
    BOUNDS: ClassVar[dict] = {"n_ctx": (0, None), "prompt_depth": (1, None)}
    n_ctx: int = 2  # prompt tokens per layer and modality
    ctx_init: str = "a photo of a"  # "" = random N(0, 0.02²) context, prompt "X X {name}."
    prompt_depth: int = 9  # layers 0 .. depth-1 carry prompts
    epochs: int = 5
    lr: float = 0.0035
    batch_size: int = 4
    weight_decay: float = 5e-4
    grad_checkpointing: bool = False
    # "auto": the backbone's autocast; "fp16": float16 autocast and the layer-0 context and first coupling
    # held in float16, trained by plain SGD without loss scaling (PREC: fp16)
    precision: str = "auto"


def _check_vit(model: torch.nn.Module) -> None:
    visual = model.visual
    if vision_blocks(model) is None:
        raise BenchError(
            "MaPLe needs a ViT image encoder (its prompts are transformer tokens)",
            where="--backbone",
            fix="use a ViT backbone (ViT-B-16/openai, as the paper)",
        )
    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
        raise BenchError(
            "MaPLe needs a ViT that pools the class token",
            where="--backbone",
            fix="use an OpenAI-style ViT (ViT-B-16, ViT-B-32, ...)",
        )
    for tower in (visual.transformer, text_tower(model).transformer):
        if not getattr(tower, "batch_first", True):
            raise BenchError(
                "MaPLe needs open_clip's batch-first transformers",
                where="--backbone",
                fix="install open_clip_torch>=3.0 (the versions bench is tested with)",
            )


class MaplePrompts(torch.nn.Module):
    """MaPLe's learnable state: layer-0 context (n, Wt), deeper text prompts (depth-1, n, Wt), and the
    couplings text -> vision (one for layer 0, one per deeper layer)."""

    def __init__(self, backbone: Any, cfg: MapleConfig, seed: int):
        super().__init__()
        model = backbone.model
        _check_vit(model)
        tower = text_tower(model)
        text_width = tower.token_embedding.weight.shape[1]
        vision_width = model.visual.transformer.width
        self.depth = min(cfg.prompt_depth, len(text_blocks(model)), len(vision_blocks(model)))
        phrase = " ".join(cfg.ctx_init.replace("_", " ").split()) or " ".join(["X"] * cfg.n_ctx)
        tokens = backbone.tokenize([phrase]).to(tower.token_embedding.weight.device)
        phrase_len = int(tokens.argmax(-1)[0]) - 1
        if cfg.n_ctx > phrase_len:
            raise BenchError(
                f"n_ctx = {cfg.n_ctx} is longer than ctx_init {cfg.ctx_init!r} ({phrase_len} tokens)",
                where="config field maple.n_ctx",
                fix="use fewer context tokens or a longer phrase",
            )
        with torch.no_grad():
            ctx = tower.token_embedding(tokens)[0, 1 : 1 + cfg.n_ctx].float().clone()
        generator = torch_generator(derive_seed(seed, "init"))
        device = ctx.device
        self.phrase, self.n_ctx = phrase, cfg.n_ctx
        self.ctx = torch.nn.Parameter(ctx)
        self.deep_text = torch.nn.ParameterList(
            [
                torch.nn.Parameter(
                    torch.empty(cfg.n_ctx, text_width)
                    .normal_(0, DEEP_PROMPT_STD, generator=generator)
                    .to(device)
                )
                for _ in range(self.depth - 1)
            ]
        )
        with seeded_global_rng(derive_seed(seed, "couplings"), torch.device("cpu")):  # nn.Linear's own init
            self.proj = torch.nn.Linear(text_width, vision_width)
            single = torch.nn.Linear(text_width, vision_width)
        self.deep_proj = torch.nn.ModuleList([copy.deepcopy(single) for _ in range(self.depth - 1)])
        self.to(device)
        self.precision = cfg.precision
        if cfg.precision == "fp16":  # trainers/maple.py: ctx_vectors in the CLIP dtype, self.proj.half()
            self.ctx.data = self.ctx.data.half()
            self.proj.half()
        self.checkpointing = cfg.grad_checkpointing

    def vision_prompts(self) -> list[torch.Tensor]:
        """Per layer 0 .. depth-1: (n, Wv) vision tokens coupled from that layer's text tokens."""
        return [self.proj(self.ctx)] + [
            proj(p) for proj, p in zip(self.deep_proj, self.deep_text, strict=True)
        ]

    @contextmanager
    def installed(self, model: torch.nn.Module):
        """Pre-hooks putting the prompts into ``model``'s vision and text transformers for the ``with`` block."""
        n, vision, text = self.n_ctx, self.vision_prompts(), list(self.deep_text)

        def append(prompt):
            def hook(module, args, kwargs):
                x = args[0]
                tokens = prompt.to(x.dtype).expand(x.shape[0], -1, -1)
                return (torch.cat([x, tokens], dim=1), *args[1:]), kwargs

            return hook

        def replace_last(prompt):
            def hook(module, args, kwargs):
                x = args[0]
                tokens = prompt.to(x.dtype).expand(x.shape[0], -1, -1)
                return (torch.cat([x[:, : x.shape[1] - n], tokens], dim=1), *args[1:]), kwargs

            return hook

        def replace_after_sot(prompt):
            def hook(module, args, kwargs):
                x = args[0]
                tokens = prompt.to(x.dtype).expand(x.shape[0], -1, -1)
                return (torch.cat([x[:, :1], tokens, x[:, 1 + n :]], dim=1), *args[1:]), kwargs

            return hook

        blocks_v, blocks_t = vision_blocks(model), text_blocks(model)
        hooks = [(model.visual.ln_pre, append(vision[0]))]
        hooks += [(blocks_v[i], replace_last(vision[i])) for i in range(1, self.depth)]
        hooks += [(blocks_t[i], replace_after_sot(text[i - 1])) for i in range(1, self.depth)]
        with pre_hooks(hooks), grad_checkpointing(model, self.checkpointing and self.training):
            yield

    def learner(self, backbone: Any, classnames: tuple[str, ...]) -> PromptLearner:
        """Layer 0 of the text side: ``[SOT][ctx][rest of the phrase][name][.][EOT]`` as a CoOp prompt learner
        whose context is this module's ``ctx`` (shared, so gradients reach it)."""
        tower = text_tower(backbone.model)
        names = [" ".join(name.split()) for name in classnames]
        tokens = backbone.tokenize([f"{self.phrase} {name}." for name in names]).to(
            tower.token_embedding.weight.device
        )
        eot = tokens.argmax(-1)
        if int(eot.max()) >= tokens.shape[1] - 1:
            raise BenchError(
                "a MaPLe prompt does not fit the context length",
                where="method maple",
                fix="shorten the class names",
            )
        with torch.no_grad():
            embedded = tower.token_embedding(tokens).float()
        learner = PromptLearner(
            self.ctx.detach(),
            embedded[:, :1],
            embedded[:, 1 + self.n_ctx :],
            torch.zeros(len(names), dtype=torch.long),
            eot,
            "end",
        )
        learner.ctx = self.ctx  # the learnable context itself, not a copy
        return learner

    def text_features(
        self, backbone: Any, classnames: tuple[str, ...], truncate: bool = False
    ) -> torch.Tensor:
        """(C, D) float32 raw text features of the prompted text encoder."""
        learner = self.learner(backbone, classnames)
        with self.installed(backbone.model), encoder_autocast(backbone, self.precision):
            return learner.text_features(text_tower(backbone.model), truncate=truncate).float()


class Maple:
    name = "maple"
    version = "1"
    trainable = True
    Config = MapleConfig
    as_published: ClassVar[dict[str, Any]] = {"precision": "fp16"}

    def default_config(self, dataset: str, shots: int) -> MapleConfig:
        return MapleConfig()  # the paper's one config (vit_b16_c2_ep5_batch4_2ctx) for every dataset

    def needs(self, cfg: MapleConfig) -> Needs:
        return Needs(images=True)

    def search_space(self, trial: Any, dataset: str, shots: int, cfg: MapleConfig) -> dict[str, Any]:
        """``--tune``: the learning rate around 0.0035 (a decade either way) and the depth {3, 6, 9, 12}
        of the paper's ablation."""
        return {
            "lr": trial.suggest_float("lr", 3.5e-4, 3.5e-2, log=True),
            "prompt_depth": trial.suggest_categorical("prompt_depth", [3, 6, 9, 12]),
        }

    def fit(self, data: FewShotData, cfg: MapleConfig, ctx: FitContext) -> AdaptedEncoderClassifier:
        backbone, device = ctx.backbone, ctx.device
        if data.train.images is None:
            raise BenchError(
                "maple trains on images and got none",
                where="FewShotData.train.images",
                fix="run it through the runner (bench run), which attaches the images",
            )
        check_precision(cfg.precision, self.name)
        prompts = MaplePrompts(backbone, cfg, ctx.seed)
        params = list(prompts.parameters())
        recipe = SGDRecipe(lr=cfg.lr, batch_size=cfg.batch_size, weight_decay=cfg.weight_decay)
        optimizer = make_optimizer(params, recipe)

        def loss_fn(pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            text = prompts.text_features(backbone, data.classnames, truncate=True)
            with prompts.installed(backbone.model):
                image = image_features(backbone, pixels, cfg.precision)
            return F.cross_entropy(normalised_logits(ctx.logit_scale, image, text), labels)

        def val_accuracy() -> float:
            return adapted_val_accuracy(prompts, backbone, data, ctx.logit_scale, device)

        report = val_reporter(ctx, val_accuracy, cfg.epochs, every=1)
        prompts.train()
        losses = train_steps(
            params,
            optimizer,
            loss_fn,
            data.train.images,
            data.train.labels,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            generator=torch_generator(derive_seed(ctx.seed, "loader")),
            seed=derive_seed(ctx.seed, "augment"),
            device=device,
            epoch_lr=lambda epoch: dassl_lr(epoch, cfg.epochs, recipe),
            on_epoch_end=report,
            work=step_work(backbone.model, cfg.batch_size, data.n_classes),
        )
        ctx.record("prompt_depth_used", prompts.depth)
        ctx.record(
            "prompt", {"context": prompts.phrase, "n_ctx": prompts.n_ctx, "tokens": f"{prompts.phrase} {{}}."}
        )
        ctx.record("trainable_parameters", sum(p.numel() for p in params))
        ctx.record("train_loss_first_last", [losses[0], losses[-1]] if losses else [])
        return adapted_classifier(prompts, backbone, data.classnames, ctx.logit_scale)
