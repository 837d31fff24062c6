"""CoOp: learn the prompt's context vectors through the frozen text encoder (Zhou et al., IJCV 2022).

The prompt of class c is the token-embedding sequence ``[SOT][V1]…[VM][name_c][.][EOT]``
(class token at the ``end``; ``middle`` puts the name after the first ⌊M/2⌋ vectors, ``front``
right after SOT, the period staying before EOT as in CoOp's ``PromptLearner``). The frozen text
transformer runs on these embeddings every step, and gradients flow only into the context
vectors: one set shared by all classes (unified) or one per class (``csc``). Logits are
``logit_scale · cos(f, t_c)``. After training the class text features are computed once, so the
returned classifier costs a matrix product.

Defaults and where they come from (CoOp ``train.py``, ``configs/trainers/CoOp/rn50*.yaml``,
``COOP.md``, Dassl defaults; reference notes §2.1):
- ``n_ctx = 16``, ``class_token_position = "end"``, ``csc = False``, random init N(0, 0.02²).
  ``ctx_init = "a photo of a"`` (``rn50_ctxv1.yaml``) initialises the vectors from that phrase's
  token embeddings and sets M to its token count (CoOp counts words, the same for such phrases).
  With ``csc`` and a phrase, every class starts from the phrase (CoOp ignores ``csc`` then).
- SGD lr 0.002, momentum 0.9, weight decay 5e-4, batch 32, cosine schedule, 1 warm-up epoch at a
  constant 1e-5; epochs by shots: 50 (1 shot), 100 (2/4), 200 (8/16), ImageNet 50 — the shared
  recipe in :mod:`bench.methods.training`, which also keeps EuroSAT 1/2-shot (fewer images than a
  batch) training instead of yielding an empty loader.
- Last-epoch model (Dassl ``TEST.FINAL_MODEL = last_step``).

Deviations from the official code:
- Image features come from ``train_views`` = 10 cached augmented views per support image (Dassl's
  random-resized-crop (0.08, 1) + flip), one drawn per image per epoch, instead of re-encoding a
  fresh augmentation every step. This *does* change what is computed: over 50–200 epochs each image is
  seen through at most 10 distinct crops instead of one new crop per epoch, so the training signal is
  less varied (the image encoder is frozen in CoOp too, so nothing else differs). ``augment = "live"``
  encodes a fresh crop of every image every epoch instead (:mod:`bench.methods.encoder_training`); see
  docs/fidelity.md.
- During training the text transformer runs only up to the longest prompt's EOT position: under the
  causal mask no position attends to a later one, so the EOT features are the same as over all 77
  positions up to float rounding (kernels of other lengths sum in another order: ~5e-7 relative).
  The returned classifier's features are computed once over all positions, so with zero epochs
  they are bit for bit the frozen encoder's for the same prompts.
- bf16 autocast on CUDA (``backbone.autocast()``) instead of CoOp's fp16 weights.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from bench.errors import BenchError
from bench.methods.base import FewShotData, FitContext, Needs
from bench.methods.encoder_training import check_augment, train_on_live_features
from bench.methods.training import (
    SGDRecipe,
    accuracy,
    coop_epochs,
    cpu_threads_for,
    fit_each,
    train_on_features,
    val_reporter,
)
from bench.seeding import derive_seed, torch_generator

POSITIONS = ("end", "middle", "front")
TRIAL_SCALARS = ("lr", "weight_decay")  # what the members of one stacked fit may differ in (--trial-batch)
CTX_INIT_STD = 0.02  # CoOp trainers/coop.py: nn.init.normal_(ctx_vectors, std=0.02)


@dataclass(frozen=True)
class CoopConfig:
    BOUNDS: ClassVar[dict] = {"n_ctx": (1, None)}
    n_ctx: int = 16  # M context vectors (train.py default; the paper also runs 4 and 8)
    ctx_init: str = ""  # "" = random N(0, 0.02²); a phrase ("a photo of a") = its embeddings, M = its length
    class_token_position: str = "end"  # "end", "middle" or "front"
    csc: bool = False  # class-specific context vectors
    train_views: int = 10  # cached augmented views per support image
    epochs: int = 200  # default_config sets CoOp's epochs by shots
    lr: float = 0.002
    batch_size: int = 32
    weight_decay: float = 5e-4
    augment: str = "cached"  # "live": a fresh random crop encoded every epoch, as Dassl's loader (official)


def text_tower(model: torch.nn.Module) -> torch.nn.Module:
    """The module holding open_clip's text tower (the CLIP itself, or ``model.text``); checks it is one
    CoOp can drive: causal mask, EOT pooling by argmax, no appended class token."""
    tower = model.text if hasattr(model, "text") else model
    pool = getattr(tower, "text_pool_type", getattr(tower, "pool_type", None))
    if (
        pool != "argmax"
        or getattr(tower, "cls_emb", None) is not None
        or getattr(tower, "use_pad_mask", False)
    ):
        raise BenchError(
            f"CoOp needs a CLIP text tower that pools the EOT token by argmax (this one pools {pool!r})",
            where="--backbone",
            fix="use an OpenAI-style CLIP architecture (RN50, ViT-B-16, ...)",
        )
    return tower


def encode_prompt_embeddings(
    tower: torch.nn.Module, embeddings: torch.Tensor, eot: torch.Tensor, truncate: bool = True
) -> torch.Tensor:
    """The frozen text transformer on prompt embeddings -> (P, D) raw text features.

    Args:
        embeddings: (P, L, W) token embeddings (L >= max(eot) + 1).
        eot: (P,) EOT positions; the feature is read there, as open_clip's ``encode_text`` does.
        truncate: run only the first ``max(eot) + 1`` positions (exact under the causal mask).
    """
    length = int(eot.max()) + 1 if truncate else embeddings.shape[1]
    cast = tower.transformer.get_cast_dtype()
    x = embeddings[:, :length].to(cast) + tower.positional_embedding[:length].to(cast)
    mask = tower.attn_mask[:length, :length] if tower.attn_mask is not None else None
    x = tower.ln_final(tower.transformer(x, attn_mask=mask))
    x = x[torch.arange(len(x), device=x.device), eot.to(x.device)]
    projection = tower.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection


def _positions(name_lens: torch.Tensor, n_ctx: int, length: int, position: str) -> torch.Tensor:
    """(C, L) source index, in the ``end`` layout [SOT][ctx][name][.][EOT]…, of every output position."""
    index = torch.arange(length).repeat(len(name_lens), 1)
    if position == "end":
        return index
    first = 0 if position == "front" else n_ctx // 2  # ctx vectors before the name
    for c, n in enumerate(name_lens.tolist()):
        ctx = list(range(1, 1 + n_ctx))
        name = list(range(1 + n_ctx, 1 + n_ctx + n))
        index[c, 1 : 1 + n_ctx + n] = torch.tensor(ctx[:first] + name + ctx[first:])
    return index


class PromptLearner(torch.nn.Module):
    """Learnable context + frozen SOT/name/period/EOT embeddings -> (C, L, W) prompt embeddings."""

    def __init__(
        self,
        ctx: torch.Tensor,
        prefix: torch.Tensor,
        suffix: torch.Tensor,
        name_lens: torch.Tensor,
        eot: torch.Tensor,
        position: str,
    ):
        super().__init__()
        self.ctx = torch.nn.Parameter(ctx)  # (M, W) unified or (C, M, W) class-specific
        self.register_buffer("prefix", prefix)  # (C, 1, W) SOT
        self.register_buffer("suffix", suffix)  # (C, L - 1 - M, W) name, period, EOT, padding
        self.register_buffer("eot", eot)  # (C,)
        self.register_buffer(
            "order", _positions(name_lens, ctx.shape[-2], 1 + ctx.shape[-2] + suffix.shape[1], position)
        )
        self.position = position

    @property
    def n_ctx(self) -> int:
        return self.ctx.shape[-2]

    def forward(self, length: int | None = None) -> torch.Tensor:
        """(C, length, W) prompt embeddings (all positions when ``length`` is None)."""
        length = length or self.order.shape[1]
        n_classes = self.prefix.shape[0]
        ctx = self.ctx if self.ctx.dim() == 3 else self.ctx.expand(n_classes, -1, -1)
        end = torch.cat([self.prefix, ctx, self.suffix[:, : length - 1 - self.n_ctx]], dim=1)
        if self.position == "end":
            return end
        return end.gather(1, self.order[:, :length, None].expand(-1, -1, end.shape[-1]))

    def text_features(self, tower: torch.nn.Module, truncate: bool = True) -> torch.Tensor:
        """(C, D) raw text features of the current prompts."""
        length = int(self.eot.max()) + 1 if truncate else None
        return encode_prompt_embeddings(tower, self(length), self.eot, truncate=truncate)


def _eot_positions(tokens: torch.Tensor) -> torch.Tensor:
    return tokens.argmax(dim=-1)  # EOT has the largest id (open_clip's argmax pooling)


def init_context(
    backbone: Any, cfg: CoopConfig, n_classes: int, generator: torch.Generator
) -> tuple[torch.Tensor, str]:
    """Context vectors, (M, W) or (C, M, W), and the text standing in for them when tokenising."""
    tower = text_tower(backbone.model)
    embedding = tower.token_embedding
    if cfg.ctx_init.strip():
        phrase = " ".join(cfg.ctx_init.replace("_", " ").split())
        tokens = backbone.tokenize([phrase]).to(embedding.weight.device)
        n_ctx = int(_eot_positions(tokens)[0]) - 1
        with torch.no_grad():
            vectors = embedding(tokens)[0, 1 : 1 + n_ctx].float().clone()
        return (vectors.repeat(n_classes, 1, 1) if cfg.csc else vectors), phrase
    if cfg.n_ctx < 1:
        raise BenchError(
            f"n_ctx must be at least 1, got {cfg.n_ctx}", where="--set coop.n_ctx", fix="use e.g. 4, 8 or 16"
        )
    shape = (
        (n_classes, cfg.n_ctx, embedding.weight.shape[1])
        if cfg.csc
        else (cfg.n_ctx, embedding.weight.shape[1])
    )
    vectors = torch.empty(shape).normal_(0.0, CTX_INIT_STD, generator=generator)
    return vectors, " ".join(["X"] * cfg.n_ctx)


def build_prompt_learner(
    backbone: Any, classnames: tuple[str, ...], ctx: torch.Tensor, ctx_text: str, position: str
) -> PromptLearner:
    """Tokenise ``"<ctx_text> <name>."`` per class as CoOp does and keep the frozen embeddings around the context."""
    if position not in POSITIONS:
        raise BenchError(
            f"unknown class-token position {position!r}",
            where="--set coop.class_token_position",
            fix=f"use one of: {', '.join(POSITIONS)}",
        )
    tower = text_tower(backbone.model)
    device = tower.token_embedding.weight.device
    names = [
        " ".join(name.split()) for name in classnames
    ]  # "_" -> " " is the dataset reader's (CoOp's) clean-up
    tokens = backbone.tokenize([f"{ctx_text} {name}." for name in names]).to(device)
    name_lens = _eot_positions(backbone.tokenize(names)) - 1
    n_ctx = ctx.shape[-2]
    eot = _eot_positions(tokens)
    if not torch.equal(eot.cpu(), 1 + n_ctx + name_lens + 1) or eot.max() >= tokens.shape[1] - 1:
        raise BenchError(
            "a prompt does not tokenise as [SOT][context][name][.][EOT] within the context length",
            where="method coop",
            fix="shorten the class names or use fewer context vectors (n_ctx)",
        )
    with torch.no_grad():
        embedded = tower.token_embedding(tokens).float()
    return PromptLearner(
        ctx.to(device), embedded[:, :1], embedded[:, 1 + n_ctx :], name_lens, eot, position
    ).to(device)


class PromptClassifier(torch.nn.Module):
    """logits = scale · normalise(f) · Tᵀ with T (C, D) the learned prompts' normalised text features."""

    def __init__(self, text_features: torch.Tensor, scale: float):
        super().__init__()
        self.register_buffer("weights", F.normalize(text_features.float(), dim=-1))
        self.scale = scale

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(features, dim=-1) @ self.weights.t()


class TransferablePromptClassifier(PromptClassifier):
    """A unified-context classifier: the learned context applies to any class names (base-to-new)."""

    def __init__(
        self, text_features: torch.Tensor, scale: float, ctx: torch.Tensor, ctx_text: str, position: str
    ):
        super().__init__(text_features, scale)
        self.register_buffer("ctx", ctx.detach().clone())
        self.ctx_text, self.position = ctx_text, position

    def for_classes(self, classnames: tuple[str, ...], ctx: FitContext) -> TransferablePromptClassifier:
        learner = build_prompt_learner(ctx.backbone, classnames, self.ctx, self.ctx_text, self.position)
        return TransferablePromptClassifier(
            final_text_features(learner, ctx), self.scale, self.ctx, self.ctx_text, self.position
        )


def final_text_features(learner: PromptLearner, ctx: FitContext) -> torch.Tensor:
    """(C, D) class text features for the returned classifier, computed once over all positions (exactly
    what ``encode_text`` computes for the same tokens; truncation is only for the many training steps)."""
    with torch.no_grad(), ctx.backbone.autocast():
        return learner.text_features(text_tower(ctx.backbone.model), truncate=False)


def _train(learner: PromptLearner, data: FewShotData, cfg: CoopConfig, ctx: FitContext) -> list[float]:
    tower, scale = text_tower(ctx.backbone.model), ctx.logit_scale

    def logits_fn(features: torch.Tensor) -> torch.Tensor:
        with ctx.backbone.autocast():
            text = learner.text_features(tower)
        return scale * F.normalize(features, dim=-1) @ F.normalize(text.float(), dim=-1).t()

    x_val, y_val = data.val.center.to(ctx.device), data.val.labels
    report = val_reporter(ctx, lambda: accuracy(logits_fn(x_val), y_val), cfg.epochs)
    recipe = SGDRecipe(lr=cfg.lr, batch_size=cfg.batch_size, weight_decay=cfg.weight_decay)
    width, length = learner.prefix.shape[-1], int(learner.eot.max()) + 1
    work = 3 * data.n_classes * length * width * width * 12 * len(tower.transformer.resblocks)
    generator = torch_generator(derive_seed(ctx.seed, "loader"))
    if cfg.augment == "live":
        return train_on_live_features(
            [learner.ctx],
            logits_fn,
            data.train,
            cfg.epochs,
            recipe,
            generator,
            ctx.backbone,
            derive_seed(ctx.seed, "augment"),
            report,
        )
    with cpu_threads_for(ctx.device, work):
        return train_on_features(
            [learner.ctx], logits_fn, data.train, cfg.epochs, recipe, generator, ctx.device, report
        )


class Coop:
    name = "coop"
    version = "1"
    trainable = True
    Config = CoopConfig
    # bench run --as-published: Dassl's train loader re-augments every support image every epoch
    as_published: ClassVar[dict[str, Any]] = {"augment": "live"}
    trial_scalars: ClassVar[tuple[str, ...]] = TRIAL_SCALARS  # --trial-batch: fit_trials stacks these

    def default_config(self, dataset: str, shots: int) -> CoopConfig:
        return CoopConfig(epochs=coop_epochs(dataset, shots))

    def needs(self, cfg: CoopConfig) -> Needs:
        check_augment(cfg.augment, self.name)
        if cfg.augment == "live":
            return Needs(images=True)
        return Needs(train_views=cfg.train_views)

    def search_space(self, trial: Any, dataset: str, shots: int, cfg: CoopConfig) -> dict[str, Any]:
        """``--tune``: the learning rate around CoOp's 0.002 (a decade either way, log scale) and, with
        random init, the context length M ∈ {4, 8, 16} the paper compares (a phrase fixes M)."""
        space: dict[str, Any] = {"lr": trial.suggest_float("lr", 2e-4, 2e-2, log=True)}
        if not cfg.ctx_init:
            space["n_ctx"] = trial.suggest_categorical("n_ctx", [4, 8, 16])
        return space

    def fit(self, data: FewShotData, cfg: CoopConfig, ctx: FitContext) -> PromptClassifier:
        generator = torch_generator(derive_seed(ctx.seed, "init"))
        vectors, ctx_text = init_context(ctx.backbone, cfg, data.n_classes, generator)
        learner = build_prompt_learner(
            ctx.backbone, data.classnames, vectors, ctx_text, cfg.class_token_position
        )
        losses = _train(learner, data, cfg, ctx)
        ctx.record("n_ctx", learner.n_ctx)
        ctx.record(
            "prompt",
            {
                "context": ctx_text,
                "position": cfg.class_token_position,
                "csc": cfg.csc,
                "tokens": f"{ctx_text} {{}}.",
            },
        )
        ctx.record("train_loss_first_last", [losses[0], losses[-1]] if losses else [])
        features = final_text_features(learner, ctx)
        if cfg.csc:
            return PromptClassifier(
                features, ctx.logit_scale
            )  # class-specific context: tied to these classes
        return TransferablePromptClassifier(
            features, ctx.logit_scale, learner.ctx, ctx_text, cfg.class_token_position
        )

    def fit_trials(
        self, data: FewShotData, cfgs: list[CoopConfig], ctxs: list[FitContext]
    ) -> list[PromptClassifier] | None:
        """``bench run --trial-batch N``: the trials of one tuned cell whose configs differ at most in
        :data:`TRIAL_SCALARS` (the searched lr; the tuner groups trials of one n_ctx) as one stacked model,
        each classifier the one :meth:`fit` gives its config, to float rounding. None where they cannot share
        steps: other configs, class-specific contexts, live augmentation, a subclass that trains otherwise."""
        base = cfgs[0]
        same = {f: getattr(base, f) for f in TRIAL_SCALARS}
        if not self.stacks_trials(base) or any(dataclasses.replace(c, **same) != base for c in cfgs):
            return None
        return _fit_stacked([data] * len(cfgs), cfgs, ctxs)

    def stacks_trials(self, cfg: CoopConfig) -> bool:
        """Whether :meth:`fit_trials` can stack trials of ``cfg``: a unified context on cached views, and this
        class's own ``fit``."""
        return type(self).fit is Coop.fit and not cfg.csc and cfg.augment == "cached"

    def batched_fit(self, cfg: CoopConfig) -> Any:
        """``bench run --batch-seeds``: :func:`fit_many` for cells of ``cfg`` that differ only in seed, or
        None where the cells cannot share steps (class-specific contexts, live augmentation) or a subclass
        trains otherwise."""
        if type(self).fit is not Coop.fit or cfg.csc or cfg.augment != "cached":
            return None
        return fit_many


def _stacked_prompts(learner: PromptLearner, ctx: torch.Tensor, length: int) -> torch.Tensor:
    """(S·C, length, W) prompt embeddings of S unified contexts ``ctx`` (S, M, W) around ``learner``'s tokens."""
    n_cells, n_classes, width = ctx.shape[0], learner.prefix.shape[0], ctx.shape[-1]
    expand = (n_cells, n_classes, -1, -1)
    end = torch.cat(
        [
            learner.prefix.expand(*expand),
            ctx[:, None].expand(*expand),
            learner.suffix[:, : length - 1 - ctx.shape[1]].expand(*expand),
        ],
        dim=2,
    )
    if learner.position != "end":
        end = end.gather(2, learner.order[:, :length, None].expand(*expand[:2], -1, width))
    return end.flatten(0, 1)


def fit_many(data: list[FewShotData], cfg: CoopConfig, ctxs: list[FitContext]) -> list[PromptClassifier]:
    """Train the cells of one config (seeds, or trials of one config) as one stacked model (issue 22): each
    cell keeps its own context init, batches and loss, and every step runs the text transformer once over
    the S·C prompts of all cells instead of S times over C. Agrees with :meth:`Coop.fit` per cell to float
    rounding with the same predictions (``tests/test_batched_cells.py``). Falls back to one fit per cell
    where steps cannot be shared: class-specific contexts, live augmentation, other support shapes or class
    names, or a listener for intermediate val scores."""
    if (
        cfg.csc
        or cfg.augment != "cached"
        or len({tuple(d.train.features.shape) for d in data}) != 1
        or len({d.classnames for d in data}) != 1
        or any(c.report is not None for c in ctxs)
    ):
        return fit_each(Coop().fit, data, cfg, ctxs)
    return _fit_stacked(data, [cfg] * len(ctxs), ctxs)


def _fit_stacked(
    data: list[FewShotData], cfgs: list[CoopConfig], ctxs: list[FitContext]
) -> list[PromptClassifier]:
    """:func:`fit_many`'s stacked model, with a config per member that may differ in :data:`TRIAL_SCALARS`
    (lr and weight decay, through :class:`~bench.methods.training.MemberSGD`). A member's ``ctx.report`` gets
    its val top-1 every 10 epochs and after the last, as :meth:`Coop.fit` hands it (it must not raise to stop
    one member: the members train in lockstep)."""
    from bench.methods.training import train_stacked

    cfg = cfgs[0]
    ctx0, device = ctxs[0], ctxs[0].device
    inits = [
        init_context(ctx0.backbone, cfg, data[0].n_classes, torch_generator(derive_seed(c.seed, "init")))
        for c in ctxs
    ]
    ctx_text = inits[0][1]
    learner = build_prompt_learner(
        ctx0.backbone, data[0].classnames, inits[0][0], ctx_text, cfg.class_token_position
    )
    stacked = torch.nn.Parameter(torch.stack([v for v, _ in inits]).to(device))  # (S, M, W)
    tower, scale, n_cells = text_tower(ctx0.backbone.model), ctx0.logit_scale, len(ctxs)
    length = int(learner.eot.max()) + 1
    eot = learner.eot.repeat(n_cells)
    recipes = [SGDRecipe(lr=c.lr, batch_size=c.batch_size, weight_decay=c.weight_decay) for c in cfgs]
    features = torch.stack([d.train.features for d in data]).to(device)  # (S, V, N, D)
    labels = torch.stack([d.train.labels for d in data]).to(device)  # (S, N)
    generators = [torch_generator(derive_seed(c.seed, "loader")) for c in ctxs]
    cells = torch.arange(n_cells, device=device)[:, None]

    def stacked_text() -> torch.Tensor:  # (S, C, D) normalised class text features of every member
        with ctx0.backbone.autocast():
            text = encode_prompt_embeddings(tower, _stacked_prompts(learner, stacked, length), eot)
        return F.normalize(text.float(), dim=-1).view(n_cells, -1, text.shape[-1])

    def stacked_logits(views: torch.Tensor, index: torch.Tensor) -> torch.Tensor:  # (S, B) -> (S, B, C)
        return scale * F.normalize(features[cells, views, index], dim=-1) @ stacked_text().transpose(1, 2)

    on_epoch_end = None
    if any(c.report is not None for c in ctxs):
        x_val = F.normalize(torch.stack([d.val.center for d in data]).to(device), dim=-1)  # (S, Nv, D)
        y_val = torch.stack([d.val.labels for d in data]).to(device)

        def on_epoch_end(epoch: int) -> None:
            if (epoch + 1) % 10 and epoch + 1 != cfg.epochs:
                return
            with torch.no_grad():
                hits = ((scale * x_val @ stacked_text().transpose(1, 2)).argmax(-1) == y_val).double().mean(1)
            for c, value in zip(ctxs, hits.tolist(), strict=True):
                if c.report is not None:
                    c.report(epoch + 1, value)

    width = learner.prefix.shape[-1]
    # one cell's work: the same thread policy as its own fit, so timings compare
    work = 3 * data[0].n_classes * length * width * width * 12 * len(tower.transformer.resblocks)
    with cpu_threads_for(device, work), torch.enable_grad():
        losses = train_stacked(
            [stacked],
            stacked_logits,
            features,
            labels,
            cfg.epochs,
            recipes[0],
            generators,
            ctxs,
            recipes=recipes,
            on_epoch_end=on_epoch_end,
        )
    out = []
    for s, c in enumerate(ctxs):
        cell = build_prompt_learner(
            c.backbone, data[s].classnames, stacked[s].detach().clone(), ctx_text, cfg.class_token_position
        )
        c.record("n_ctx", cell.n_ctx)
        c.record(
            "prompt",
            {
                "context": ctx_text,
                "position": cfg.class_token_position,
                "csc": cfg.csc,
                "tokens": f"{ctx_text} {{}}.",
            },
        )
        c.record("train_loss_first_last", [float(losses[0][s]), float(losses[-1][s])] if losses else [])
        out.append(
            TransferablePromptClassifier(
                final_text_features(cell, c), c.logit_scale, cell.ctx, ctx_text, cfg.class_token_position
            )
        )
    return out
