"""CLIP-Adapter: residual bottleneck adapters on the image feature, the text classifier, or both.

Gao et al., "CLIP-Adapter: Better Vision-Language Models with Feature Adapters", IJCV 2023
(arXiv 2110.04544).

A bottleneck ``Linear(D, D/r, bias=False) → ReLU → Linear(D/r, D, bias=False) → ReLU`` is
applied to the raw image feature f (visual branch) and/or to the classifier weights W (text
branch, W = the mean of the normalised prompt features of each class):

    f' = α·A_v(f) + (1 − α)·f        W' = β·A_t(W) + (1 − β)·W        (paper §3.3)

logits = logit_scale · normalise(f') · normalise(W')ᵀ. Only the adapters train
(cross-entropy). With α = 0 (visual), β = 0 (text) or both zero, the logits are exactly
zero-shot CLIP's.

Defaults and where they come from:
- ``branch = "visual"``: the official ``clip_adapter.py`` has only the visual adapter, and the
  paper finds visual-only the best variant (§4.2.5, Fig. 5); ``"text"`` and ``"both"`` are the
  paper's other two variants.
- ``alpha`` by dataset, from the paper's residual-ratio study (§4.2.4, Table 6, via the
  reference notes [R]): DTD 0.6 (its stated optimum); EuroSAT 0.6 (the paper puts EuroSAT with DTD
  in the 0.6–0.8 group; 0.6 is the low end — no single value was available); Caltech101 and
  ImageNet 0.2. Every other dataset: 0.2, the official code's hard-coded ``ratio``.
- ``beta = 0.2``: the paper gives no value for the text ratio; 0.2 mirrors the official α.
- ``reduction = 4`` (bottleneck D/4 for any backbone width; the official ``Adapter(1024, 4)``
  hard-codes RN50's 1024).
- Optimiser: the official code trains with CoOp's config (README: "follow CoOp's command"): SGD
  lr 0.002, batch 32, cosine, 1 warm-up epoch at 1e-5, epochs by shots
  (:func:`bench.methods.training.coop_epochs`; ImageNet 50 as CoOp's ImageNet configs, whereas
  Tip-Adapter's Table 1 times CLIP-Adapter at 200 ImageNet epochs: ``--set clip_adapter.epochs=200``).
- Augmentation: CoOp's random-resized-crop + flip, taken from ``train_views`` = 10 cached views per
  image (one drawn per epoch) instead of re-encoding every epoch; ``augment = "live"`` encodes a fresh
  crop of every image every epoch, as the official Dassl loader does (docs/fidelity.md).
- Prompts: CoOp's single per-dataset template (``CUSTOM_TEMPLATES`` in the official file).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from bench.methods.base import FewShotData, FitContext, Needs, check_choice, prompt_templates
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

BRANCHES = ("visual", "text", "both")
ALPHA_BY_DATASET = {"imagenet": 0.2, "caltech101": 0.2, "dtd": 0.6, "eurosat": 0.6}
DEFAULT_ALPHA = 0.2  # official clip_adapter.py
TRIAL_SCALARS = ("alpha", "beta", "lr", "weight_decay")  # what the members of one stacked fit may differ in


@dataclass(frozen=True)
class ClipAdapterConfig:
    BOUNDS: ClassVar[dict] = {"alpha": (0, 1), "beta": (0, 1)}  # residual ratios
    branch: str = "visual"  # "visual" (official code), "text" or "both" (paper §3.3)
    alpha: float = DEFAULT_ALPHA  # visual ratio α; default_config sets the paper's per-dataset value
    beta: float = 0.2  # text ratio β (no published value)
    reduction: int = 4  # bottleneck D / reduction (official code)
    prompts: str = "coop"  # prompt set for the classifier weights
    train_views: int = 10  # cached augmented views per support image
    epochs: int = 200  # default_config sets CoOp's epochs by shots
    lr: float = 0.002
    batch_size: int = 32
    weight_decay: float = 5e-4
    augment: str = "cached"  # "live": a fresh random crop encoded every epoch, as Dassl's loader (official)


class Adapter(torch.nn.Module):
    """The CLIP-Adapter bottleneck: (B, D) -> (B, D), non-negative (ReLU last, as the official code)."""

    def __init__(self, dim: int, reduction: int):
        super().__init__()
        self.fc = torch.nn.Sequential(
            torch.nn.Linear(dim, dim // reduction, bias=False),
            torch.nn.ReLU(),
            torch.nn.Linear(dim // reduction, dim, bias=False),
            torch.nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def class_text_means(
    ctx: FitContext, classnames: tuple[str, ...], templates: tuple[str, ...]
) -> torch.Tensor:
    """(C, D): each class's mean of normalised prompt features; ``normalise`` of it is
    :func:`bench.methods.base.embed_classes`, bit for bit."""
    return F.normalize(ctx.text_features(templates, classnames).to(ctx.device), dim=-1).mean(0)


def seeded_adapter(dim: int, reduction: int, seed: int) -> Adapter:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Adapter(dim, reduction)


class AdapterClassifier(torch.nn.Module):
    """logits = scale · normalise(f') · normalise(W')ᵀ; a branch whose adapter is ``None`` is the identity."""

    def __init__(
        self,
        visual: Adapter | None,
        text: Adapter | None,
        alpha: float,
        beta: float,
        class_means: torch.Tensor,
        scale: float,
        templates: tuple[str, ...],
    ):
        super().__init__()
        self.visual, self.text = visual, text
        self.alpha, self.beta, self.scale, self.templates = alpha, beta, scale, templates
        self.register_buffer("class_means", class_means)

    def class_weights(self) -> torch.Tensor:
        """(C, D) normalised classifier weights W'."""
        w = self.class_means
        if self.text is not None:
            w = self.beta * self.text(w) + (1 - self.beta) * w
        return F.normalize(w, dim=-1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.visual is not None:
            features = self.alpha * self.visual(features) + (1 - self.alpha) * features
        return self.scale * F.normalize(features, dim=-1) @ self.class_weights().t()

    def for_classes(self, classnames: tuple[str, ...], ctx: FitContext) -> AdapterClassifier:
        """The trained adapters applied to another label space's prompt features."""
        means = class_text_means(ctx, classnames, self.templates)
        return AdapterClassifier(
            self.visual, self.text, self.alpha, self.beta, means, self.scale, self.templates
        )


class VisualAdapterClassifier(AdapterClassifier):
    """The visual branch alone, the official code's model (version 1's constructor, kept for callers)."""

    def __init__(
        self, adapter: Adapter, alpha: float, weights: torch.Tensor, scale: float, templates: tuple[str, ...]
    ):
        super().__init__(adapter, None, alpha, 0.0, weights, scale, templates)


def check_branch(branch: str, method: str) -> None:
    check_choice(method, "branch", branch, BRANCHES)


def fit_adapters(model: torch.nn.Module, data: FewShotData, cfg: Any, ctx: FitContext) -> list[float]:
    """Train every parameter of ``model`` (a classifier of raw features) with CoOp's recipe."""
    recipe = SGDRecipe(lr=cfg.lr, batch_size=cfg.batch_size, weight_decay=cfg.weight_decay)
    x_val, y_val = data.val.center.to(ctx.device), data.val.labels
    report = val_reporter(ctx, lambda: accuracy(model(x_val), y_val), cfg.epochs)
    dim, n_classes = data.train.features.shape[-1], data.n_classes
    model.train()
    work = (cfg.batch_size + n_classes) * dim * (dim // cfg.reduction) * 2 + cfg.batch_size * dim * n_classes
    params = [p for p in model.parameters() if p.requires_grad]
    generator = torch_generator(derive_seed(ctx.seed, "loader"))
    if getattr(cfg, "augment", "cached") == "live":  # the image encoder runs every epoch: no thread pinning
        losses = train_on_live_features(
            params,
            model,
            data.train,
            cfg.epochs,
            recipe,
            generator,
            ctx.backbone,
            derive_seed(ctx.seed, "augment"),
            report,
        )
    else:
        with cpu_threads_for(ctx.device, work):
            losses = train_on_features(
                params, model, data.train, cfg.epochs, recipe, generator, ctx.device, report
            )
    model.eval()
    ctx.record("train_loss_first_last", [losses[0], losses[-1]] if losses else [])
    return losses


class ClipAdapter:
    name = "clip_adapter"
    version = "2"  # 2: text/both branches, α by dataset from the paper
    trainable = True
    Config = ClipAdapterConfig
    # bench run --as-published: the official clip_adapter.py hard-codes ratio = 0.2 on every dataset, and
    # its Dassl loader re-augments every support image every epoch
    as_published: ClassVar[dict[str, Any]] = {"alpha": 0.2, "augment": "live"}
    trial_scalars: ClassVar[tuple[str, ...]] = TRIAL_SCALARS  # --trial-batch: fit_trials stacks these

    def default_config(self, dataset: str, shots: int) -> ClipAdapterConfig:
        return ClipAdapterConfig(
            alpha=ALPHA_BY_DATASET.get(dataset, DEFAULT_ALPHA), epochs=coop_epochs(dataset, shots)
        )

    def needs(self, cfg: ClipAdapterConfig) -> Needs:
        check_augment(cfg.augment, self.name)
        if cfg.augment == "live":
            return Needs(images=True)
        return Needs(train_views=cfg.train_views)

    def search_space(self, trial: Any, dataset: str, shots: int, cfg: ClipAdapterConfig) -> dict[str, Any]:
        """``--tune``: the residual ratios the paper searches per dataset (§4.2.4), in [0, 1]: α for the
        visual branch, β for the text branch."""
        space: dict[str, Any] = {}
        branch = cfg.branch
        if branch in ("visual", "both"):
            space["alpha"] = trial.suggest_float("alpha", 0.0, 1.0)
        if branch in ("text", "both"):
            space["beta"] = trial.suggest_float("beta", 0.0, 1.0)
        return space

    def fit(self, data: FewShotData, cfg: ClipAdapterConfig, ctx: FitContext) -> AdapterClassifier:
        check_branch(cfg.branch, self.name)
        templates = prompt_templates(data, cfg.prompts)
        means = class_text_means(ctx, data.classnames, templates)
        dim = means.shape[1]
        visual = (
            seeded_adapter(dim, cfg.reduction, derive_seed(ctx.seed, "init"))
            if cfg.branch != "text"
            else None
        )
        text = (
            seeded_adapter(dim, cfg.reduction, derive_seed(ctx.seed, "init", "text"))
            if cfg.branch != "visual"
            else None
        )
        model = AdapterClassifier(visual, text, cfg.alpha, cfg.beta, means, ctx.logit_scale, templates).to(
            ctx.device
        )
        fit_adapters(model, data, cfg, ctx)
        return model

    def fit_trials(
        self, data: FewShotData, cfgs: list[ClipAdapterConfig], ctxs: list[FitContext]
    ) -> list[AdapterClassifier] | None:
        """``bench run --trial-batch N``: the trials of one tuned cell (one support set and seed), whose
        configs differ at most in :data:`TRIAL_SCALARS`, as one stacked model; each classifier is the one
        :meth:`fit` gives its config, to float rounding. None where they cannot share steps (configs that
        differ in anything else, live augmentation, a subclass that trains otherwise)."""
        base = cfgs[0]
        same = {f: getattr(base, f) for f in TRIAL_SCALARS}
        if not self.stacks_trials(base) or any(dataclasses.replace(c, **same) != base for c in cfgs):
            return None
        return _fit_stacked([data] * len(cfgs), cfgs, ctxs)

    def stacks_trials(self, cfg: ClipAdapterConfig) -> bool:
        """Whether :meth:`fit_trials` can stack trials of ``cfg``: cached views, and this class's own ``fit``."""
        return type(self).fit is ClipAdapter.fit and cfg.augment == "cached"

    def batched_fit(self, cfg: ClipAdapterConfig) -> Any:
        """``bench run --batch-seeds``: :func:`fit_many` for cells of ``cfg`` that differ only in seed, or
        None where the cells cannot share steps (live augmentation) or a subclass trains otherwise."""
        if type(self).fit is not ClipAdapter.fit or cfg.augment != "cached":
            return None
        return fit_many


class StackedAdapters(torch.nn.Module):
    """S adapters of one shape as stacked weights: (S, B, D) -> (S, B, D), each slice its own adapter."""

    def __init__(self, adapters: list[Adapter]):
        super().__init__()
        self.down = torch.nn.Parameter(
            torch.stack([a.fc[0].weight.detach() for a in adapters])
        )  # (S, D/r, D)
        self.up = torch.nn.Parameter(torch.stack([a.fc[2].weight.detach() for a in adapters]))  # (S, D, D/r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(F.relu(x @ self.down.transpose(1, 2)) @ self.up.transpose(1, 2))

    def unstack(self, dim: int, reduction: int) -> list[Adapter]:
        out = []
        for down, up in zip(self.down.detach(), self.up.detach(), strict=True):
            adapter = Adapter(dim, reduction).to(down.device)
            adapter.fc[0].weight.data.copy_(down)
            adapter.fc[2].weight.data.copy_(up)
            out.append(adapter)
        return out


def fit_many(
    data: list[FewShotData], cfg: ClipAdapterConfig, ctxs: list[FitContext]
) -> list[AdapterClassifier]:
    """Train the cells of one config (seeds, or trials of one α) as one stacked model (issue 22): the same
    adapters, initialisations, batches and SGD steps as :meth:`ClipAdapter.fit` per cell, the cells' losses
    summed so each cell's gradient is its own. Features are (S, B, D) batched products instead of (B, D)
    ones, so results agree with one-at-a-time fits to float rounding, not bit for bit
    (``tests/test_batched_cells.py``). Falls back to one fit per cell where the cells cannot share steps:
    another support size or view count, live augmentation, or a listener for intermediate val scores.
    """
    shapes = {tuple(d.train.features.shape) for d in data}
    if (
        len(shapes) != 1
        or cfg.augment != "cached"
        or any(c.report is not None for c in ctxs)
        or len({d.classnames for d in data}) != 1
    ):
        return fit_each(ClipAdapter().fit, data, cfg, ctxs)
    return _fit_stacked(data, [cfg] * len(ctxs), ctxs)


def _fit_stacked(
    data: list[FewShotData], cfgs: list[ClipAdapterConfig], ctxs: list[FitContext]
) -> list[AdapterClassifier]:
    """:func:`fit_many`'s stacked model, with a config per member that may differ in :data:`TRIAL_SCALARS`
    (α and β as (S, 1, 1) tensors, lr and weight decay through :class:`~bench.methods.training.MemberSGD`).
    A member's ``ctx.report`` gets its val top-1 every 10 epochs and after the last, as :func:`fit_adapters`
    hands it (it must not raise to stop one member: the members train in lockstep)."""
    from bench.methods.training import train_stacked

    cfg = cfgs[0]
    check_branch(cfg.branch, "clip_adapter")
    ctx, device, n_members = ctxs[0], ctxs[0].device, len(ctxs)
    templates = prompt_templates(data[0], cfg.prompts)
    means = class_text_means(ctx, data[0].classnames, templates)
    dim = means.shape[1]
    visual = (
        StackedAdapters([seeded_adapter(dim, cfg.reduction, derive_seed(c.seed, "init")) for c in ctxs]).to(
            device
        )
        if cfg.branch != "text"
        else None
    )
    text = (
        StackedAdapters(
            [seeded_adapter(dim, cfg.reduction, derive_seed(c.seed, "init", "text")) for c in ctxs]
        ).to(device)
        if cfg.branch != "visual"
        else None
    )
    scale = ctx.logit_scale

    def ratios(name: str) -> tuple[torch.Tensor, torch.Tensor]:  # r and 1 - r, each rounded once as fit's
        values = [getattr(c, name) for c in cfgs]
        as_tensor = lambda v: torch.tensor(v, dtype=torch.float32, device=device).view(-1, 1, 1)  # noqa: E731
        return as_tensor(values), as_tensor([1 - v for v in values])

    (alpha, alpha_rest), (beta, beta_rest) = ratios("alpha"), ratios("beta")

    def logits(x: torch.Tensor) -> torch.Tensor:  # (S, B, D) -> (S, B, C)
        if visual is not None:
            x = alpha * visual(x) + alpha_rest * x
        w = means.expand(n_members, -1, -1)
        if text is not None:
            w = beta * text(w) + beta_rest * w
        return scale * F.normalize(x, dim=-1) @ F.normalize(w, dim=-1).transpose(1, 2)

    params = [p for m in (visual, text) if m is not None for p in m.parameters()]
    recipes = [SGDRecipe(lr=c.lr, batch_size=c.batch_size, weight_decay=c.weight_decay) for c in cfgs]
    features = torch.stack([d.train.features for d in data]).to(device)  # (S, V, N, D)
    labels = torch.stack([d.train.labels for d in data]).to(device)  # (S, N)
    generators = [torch_generator(derive_seed(c.seed, "loader")) for c in ctxs]
    cells = torch.arange(n_members, device=device)[:, None]
    on_epoch_end = None
    if any(c.report is not None for c in ctxs):
        x_val = torch.stack([d.val.center for d in data]).to(device)  # (S, Nv, D)
        y_val = torch.stack([d.val.labels for d in data]).to(device)

        def on_epoch_end(epoch: int) -> None:
            if (epoch + 1) % 10 and epoch + 1 != cfg.epochs:
                return
            with torch.no_grad():
                hits = (logits(x_val).argmax(-1) == y_val).double().mean(1)
            for c, value in zip(ctxs, hits.tolist(), strict=True):
                if c.report is not None:
                    c.report(epoch + 1, value)

    # the threads of one cell's fit (one thread for small problems on the CPU), so timings compare
    work = (cfg.batch_size + data[0].n_classes) * dim * (
        dim // cfg.reduction
    ) * 2 + cfg.batch_size * dim * data[0].n_classes
    with cpu_threads_for(device, work), torch.enable_grad():
        losses = train_stacked(
            params,
            lambda views, index: logits(features[cells, views, index]),
            features,
            labels,
            cfg.epochs,
            recipes[0],
            generators,
            ctxs,
            recipes=recipes,
            on_epoch_end=on_epoch_end,
        )
    visuals = visual.unstack(dim, cfg.reduction) if visual is not None else [None] * n_members
    texts = text.unstack(dim, cfg.reduction) if text is not None else [None] * n_members
    out = []
    for s, (c, member) in enumerate(zip(ctxs, cfgs, strict=True)):
        model = AdapterClassifier(
            visuals[s], texts[s], member.alpha, member.beta, means, scale, templates
        ).to(device)
        model.eval()
        c.record("train_loss_first_last", [float(losses[0][s]), float(losses[-1][s])] if losses else [])
        out.append(model)
    return out
