"""The Method interface: what a method may see, and what it returns.

A method is a class with a frozen ``Config`` dataclass (defaults = its paper's defaults),
``default_config(dataset, shots)`` for the per-cell paper defaults, ``needs(cfg)`` saying
which cached features it trains on, and ``fit(data, cfg, ctx)`` returning a classifier of
image features. ``FewShotData`` has no test split by construction: only the runner
evaluates on test.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ImageSource:
    """Where the pixels of a feature set come from, for methods that run the image encoder themselves.

    Attributes:
        root: folder the paths are relative to.
        paths: N image files, in the order of the feature set's rows.
        preprocessing: the backbone's :class:`bench.backbone.Preprocessing` (size, resize, interpolation,
            normalisation), so a live view is prepared exactly as the cached centre view.
    """

    root: Path
    paths: tuple[str, ...]
    preprocessing: Any

    def subset(self, keep: torch.Tensor) -> ImageSource:
        """The images where the (N,) bool mask ``keep`` is true."""
        return ImageSource(
            self.root,
            tuple(p for p, k in zip(self.paths, keep.tolist(), strict=True) if k),
            self.preprocessing,
        )


@dataclass(frozen=True)
class FeatureSet:
    """Cached image features of a few-shot subset.

    Attributes:
        features: (V, N, D) float32 raw ``encode_image`` embeddings (not L2-normalised);
            V = 1 for the centre view, V = n for n augmented views.
        labels: (N,) int64 class indices.
        images: the N images themselves (the runner always attaches them). Methods with
            ``Needs(images=True)`` train on them; scoring encodes them with a classifier's own
            ``encode_images`` when it has one (an adapted encoder), instead of using ``features``.
    """

    features: torch.Tensor
    labels: torch.Tensor
    images: ImageSource | None = None

    def __post_init__(self):
        assert self.features.dim() == 3 and self.labels.dim() == 1, "features (V, N, D), labels (N,)"
        assert self.features.shape[1] == self.labels.shape[0], "one label per image"
        assert self.images is None or len(self.images.paths) == len(self.labels), "one image per label"

    @property
    def center(self) -> torch.Tensor:
        """(N, D): the first view (the only one for centre-view sets)."""
        return self.features[0]


@dataclass(frozen=True)
class FewShotData:
    """Everything a method may use for one cell: support set, few-shot val, class names, prompts.

    Attributes:
        dataset: dataset name. shots: K.
        classnames: C names, index = label.
        prompts: the dataset's prompt sets, name -> templates with one ``{}``.
        train: the K-per-class support set, with the views the method asked for.
        val: the few-shot validation set (min(K, 4) per class), centre view.
        raw_classnames: the C names as the split file writes them (``american_bulldog``), before
            CoOp's clean-ups; what Dassl hands a trainer. ``None``: the same as ``classnames``.
    """

    dataset: str
    shots: int
    classnames: tuple[str, ...]
    prompts: Mapping[str, tuple[str, ...]]
    train: FeatureSet
    val: FeatureSet
    raw_classnames: tuple[str, ...] | None = None

    @property
    def n_classes(self) -> int:
        return len(self.classnames)


@dataclass(frozen=True)
class Needs:
    """What a method needs cached.

    Attributes:
        train_views: 0 = the centre view, n > 0 = n augmented views per support image.
        augment_scale: RandomResizedCrop area range of the augmented views: Dassl's (0.08, 1) by
            default; Tip-Adapter and LP++ crop with (0.5, 1).
        images: the method reads pixels (``data.train.images``, ``data.val.images``) and runs the
            image encoder inside its training step (:mod:`bench.methods.encoder_training`): live augmentation
            or an adapted encoder. Its classifier then offers ``encode_images``, and the runner scores
            val and test images through it rather than through the frozen cache.
    """

    train_views: int = 0
    augment_scale: tuple[float, float] = (0.08, 1.0)
    images: bool = False


@dataclass(frozen=True)
class FitContext:
    """Services the runner gives a method.

    Attributes:
        backbone: the frozen CLIP (:class:`bench.backbone.Backbone`); CoOp runs its text tower.
        device: where to train.
        seed: the cell's root seed; derive per-purpose seeds with :func:`bench.seeding.derive_seed`.
        text_features: ``(templates, classnames) -> (T, C, D)`` frozen text features, cached.
        record: ``record(name, value)`` stores a JSON-serialisable observable in the result's
            ``diagnostics`` (chosen C, learned ratios, ...).
        progress: whether to show progress bars.
        report: ``report(step, val_accuracy)`` for an intermediate few-shot-val score (fraction in [0, 1]),
            or ``None`` when nobody listens. Tuning uses it to prune trials (it may raise
            ``optuna.TrialPruned``); trainable methods call it every few epochs only when it is set.
        progress_step: ``progress_step(done, total, unit)`` after each training epoch (``"epoch"``) or tuning
            trial (``"trial"``), or ``None`` when no progress bar shows them. ``methods._train.val_reporter``
            calls it for the methods that train with it; a method with its own loop may call it too.
    """

    backbone: Any
    device: torch.device
    seed: int
    text_features: Callable[[tuple[str, ...], tuple[str, ...]], torch.Tensor]
    record: Callable[[str, Any], None] = field(default=lambda name, value: None)
    progress: bool = False
    report: Callable[[int, float], None] | None = None
    progress_step: Callable[[int, int, str], None] | None = None

    @property
    def logit_scale(self) -> float:
        return self.backbone.logit_scale


Classifier = Callable[[torch.Tensor], torch.Tensor]
"""(N, D) raw image features on the fit device -> (N, C) logits.

A classifier that adapted the image encoder (CLIP-LoRA, MaPLe) also offers
``encode_images(pixels (B, 3, S, S)) -> (B, D)``: its features, which it is then applied to.
The runner's scoring encodes val/test images with it, batched, once per scored set.

A classifier built from class names (zero-shot weights, prompts, text adapters) may also
offer ``for_classes(classnames, ctx) -> Classifier``: the same learned parameters applied
to another label space (CoCoOp's base-to-new evaluation). Classifiers tied to the training
labels (a linear probe) do not, and are reported as not transferable.
"""


@runtime_checkable
class Method(Protocol):
    name: ClassVar[str]
    version: ClassVar[str]  # bump on any change of behaviour: it is part of every run id
    Config: ClassVar[type]
    trainable: ClassVar[bool]  # learns from the support set (training-free methods: False)

    def default_config(self, dataset: str, shots: int) -> Any: ...

    def needs(self, cfg: Any) -> Needs: ...

    def fit(self, data: FewShotData, cfg: Any, ctx: FitContext) -> Classifier: ...

    # Optional, for --tune val|oracle (bench/tuning.py):
    #     def search_space(self, trial, dataset: str, shots: int, cfg) -> dict[str, Any]
    # returns config-field overrides sampled from the Optuna trial; cfg is the cell's resolved config.
    #
    # Optional, for bench run --batch-seeds (bench/runner.py):
    #     def batched_fit(self, cfg) -> Callable[[list[FewShotData], Any, list[FitContext]], list[Classifier]] | None
    # a function that trains several cells of config ``cfg`` (the seeds of one cell) in one call and returns
    # each cell's classifier as its own ``fit`` would (to float rounding, same predictions), or None where
    # ``cfg`` cannot be trained that way; cells then run one at a time.
    #
    # Optional, for bench run --trial-batch N (bench/tuning.py):
    #     trial_scalars: ClassVar[tuple[str, ...]]
    #     def fit_trials(self, data: FewShotData, cfgs: list, ctxs: list[FitContext]) -> list[Classifier] | None
    #     def stacks_trials(self, cfg) -> bool   (optional: False where no trials of cfg can ever be stacked)
    # trains trials of one tuned cell (one support set, one seed) whose configs differ at most in the
    # ``trial_scalars`` fields as one model, each classifier as ``fit`` gives its config (to float rounding,
    # same predictions), or returns None where ``cfgs`` cannot be trained so (one fit each then). A member's
    # ``ctx.report`` must get the val scores ``fit`` would report; it never raises for one member alone.
    #
    # Optional, for bench run --as-published:
    #     as_published: ClassVar[dict[str, Any]]
    # config-field overrides that make the method behave as its official code where ours differs
    # (docs/fidelity.md); the CLI applies them as --set items, which an explicit --set overrides.


# Bounds (low, high; None = open) of config fields, checked whenever a user sets a value (--set):
# these hold for any method with a field of that name; a Config adds its own as ``BOUNDS: ClassVar``.
COMMON_BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "epochs": (0, None),
    "train_views": (0, None),
    "batch_size": (1, None),
    "weight_decay": (0, None),
    "reduction": (1, None),
}
POSITIVE_FIELDS = ("lr",)  # strictly above zero


def check_choice(method: str, name: str, value: Any, choices: Collection[str], *, see: str = "") -> None:
    """Raise a :class:`BenchError` naming ``config field METHOD.NAME`` when ``value`` is not in ``choices``
    (a config field with a closed set of values: a precision, a branch, an augmentation)."""
    from bench.errors import BenchError

    if value not in choices:
        raise BenchError(
            f"unknown {name} {value!r}",
            where=f"config field {method}.{name}",
            fix=f"use one of: {', '.join(choices)}" + (f" ({see})" if see else ""),
        )


def check_config(cfg: Any, method: str) -> None:
    """Raise a :class:`BenchError` naming the field when a value of ``cfg`` is out of its bounds."""
    from bench.errors import BenchError

    bounds = {**COMMON_BOUNDS, **getattr(type(cfg), "BOUNDS", {})}
    for name, (low, high) in bounds.items():
        value = getattr(cfg, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if (low is not None and value < low) or (high is not None and value > high):
                span = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
                raise BenchError(
                    f"{name} = {value!r} is outside {span}",
                    where=f"config field {method}.{name}",
                    fix=f"pass a value in {span} (see `bench methods {method}`)",
                )
    for name in POSITIVE_FIELDS:
        value = getattr(cfg, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0:
            raise BenchError(
                f"{name} = {value!r} must be positive",
                where=f"config field {method}.{name}",
                fix="pass a value above 0",
            )


def prompt_templates(data: FewShotData, prompt_set: str) -> tuple[str, ...]:
    """The templates of ``prompt_set`` for ``data``'s dataset, or a clear error."""
    from bench.errors import BenchError

    if prompt_set not in data.prompts:
        raise BenchError(
            f"dataset {data.dataset!r} has no prompt set {prompt_set!r}",
            where="config field 'prompts'",
            fix=f"use one of: {', '.join(sorted(data.prompts))}",
        )
    return tuple(data.prompts[prompt_set])


def embed_classes(ctx: FitContext, classnames: tuple[str, ...], templates: tuple[str, ...]) -> torch.Tensor:
    """Zero-shot classifier weights -> (C, D) float32, L2-normalised, on ``ctx.device``.

    Each template's text features are normalised, averaged over templates and normalised
    again (CLIP's ensembling; with one template this is just the normalised feature).
    """
    text = ctx.text_features(templates, classnames).to(ctx.device)
    return F.normalize(F.normalize(text, dim=-1).mean(0), dim=-1)


def class_embeddings(ctx: FitContext, data: FewShotData, prompt_set: str) -> torch.Tensor:
    """:func:`embed_classes` for ``data``'s classes and prompt set -> (C, D)."""
    return embed_classes(ctx, data.classnames, prompt_templates(data, prompt_set))


class CosineClassifier(torch.nn.Module):
    """logits = scale · normalise(f) · Wᵀ, with W (C, D) the normalised embeddings of ``templates``."""

    def __init__(self, weights: torch.Tensor, scale: float, templates: tuple[str, ...]):
        super().__init__()
        self.register_buffer("weights", weights)
        self.scale, self.templates = scale, templates

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(features, dim=-1) @ self.weights.t()

    def for_classes(self, classnames: tuple[str, ...], ctx: FitContext) -> CosineClassifier:
        return CosineClassifier(embed_classes(ctx, classnames, self.templates), self.scale, self.templates)
