"""``bench perf``: how fast the harness is, measured side by side with the official codes' approach.

Everything runs on generated JPEGs (ImageNet-like 500x375 pictures) and a random-init model
of the requested architecture, so the numbers need no download and are comparable across
machines. The table reports:

- feature extraction, images/s: decode + preprocess + encode through the FeatureCache, and
  the encoder alone (the upper bound decoding has to keep up with);
- seconds per cell and peak memory for each method, from cached features;
- the same CLIP-Adapter cell trained the way the official code does it (every epoch
  re-decodes, re-augments and re-encodes every support image through the frozen encoder),
  timed for a few epochs and extrapolated linearly to the full schedule, and the ratio.

Profiles: ``smoke`` (seconds; what CI runs, to keep the command working), ``cpu`` (the tiny model
on a 10-class 16-shot cell) and ``gpu`` (RN50 at 224 px, the paper's 16-shot ImageNet cell:
1000 classes x 16 shots, 200 adapter epochs).
"""

from __future__ import annotations

import dataclasses
import io
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.backbone import Backbone, BackboneRef, load_backbone, resolve_device
from bench.datasets.spec import LabeledImages
from bench.features import ExtractOptions, FeatureCache, ImageFeatureKey
from bench.fileio import atomic_write_bytes
from bench.images import CENTER, ImageViews, ViewSpec
from bench.methods import method_registry
from bench.methods.base import FeatureSet, FewShotData, FitContext
from bench.provenance import environment
from bench.seeding import derive_seed, torch_generator
from bench.tools.grid_cost import GRID_METHODS


@dataclass(frozen=True)
class PerfProfile:
    """One benchmark setting.

    Attributes:
        backbone: random-init architecture to time (``ARCH/random``).
        n_classes, shots: the cell's support set (classes x shots images).
        test_images: images whose extraction is timed (centre view).
        train_views: augmented views cached per support image.
        baseline_epochs: epochs of the re-encoding baselines actually run before extrapolating.
        methods: methods timed from cached features, configured as for ImageNet (CoOp: 50 epochs).
        overrides: per-method config overrides (CLIP-Adapter: the 200 epochs the target quotes).
        workers, batch_size: DataLoader processes and images per encoder forward.
        timed_epochs: per method, the epochs actually trained; the cell's time is scaled to its
            configured epochs (compute per epoch is constant), so a long schedule fits a short session.
        grid: also predict the full paper grid (:mod:`bench.tools.grid_cost`) from the measured per-step
            costs, timing CoOp at a tenth of the classes too (its step cost grows with C).
        cocoop: also time CoCoOp's per-image text pass.
        encoder_in_loop: (ViT backbone, classes, timed steps) for the CLIP-LoRA and MaPLe rows
            (:mod:`bench.tools.perf_encoder`: one cell each at ``shots``); ``None``: not timed.
    """

    backbone: str
    n_classes: int
    shots: int
    test_images: int
    train_views: int
    baseline_epochs: int
    methods: tuple[str, ...]
    workers: int
    batch_size: int
    overrides: dict = dataclasses.field(default_factory=dict)
    timed_epochs: dict = dataclasses.field(default_factory=dict)
    grid: bool = True
    cocoop: bool = True
    encoder_in_loop: tuple[str, int, int] | None = None


PAPER_METHODS = GRID_METHODS
PROFILES = {
    "smoke": PerfProfile(
        "bench-tiny/random",
        n_classes=20,
        shots=2,
        test_images=20,
        train_views=2,
        baseline_epochs=1,
        methods=PAPER_METHODS,
        workers=0,
        batch_size=32,
        overrides={"clip_adapter": {"epochs": 4}, "coop": {"epochs": 2}},
        encoder_in_loop=("bench-tiny/random", 4, 2),
    ),
    "cpu": PerfProfile(
        "bench-tiny/random",
        n_classes=10,
        shots=16,
        test_images=400,
        train_views=10,
        baseline_epochs=2,
        methods=PAPER_METHODS,
        workers=0,
        batch_size=128,
        overrides={"clip_adapter": {"epochs": 200}},
        encoder_in_loop=("bench-tiny/random", 10, 20),
    ),
    # Sized for one device call of a few minutes: 10,000 test JPEGs, the 16-shot ImageNet cell, CoOp and
    # CLIP-Adapter timed over 2 and 20 of their 50 and 200 epochs.
    "gpu": PerfProfile(
        "RN50/random",
        n_classes=1000,
        shots=16,
        test_images=10000,
        train_views=10,
        baseline_epochs=1,
        methods=PAPER_METHODS,
        workers=8,
        batch_size=512,
        overrides={"clip_adapter": {"epochs": 200}},
        timed_epochs={"coop": 2, "clip_adapter": 20},
        encoder_in_loop=("ViT-B-16/random", 100, 30),
    ),
    # A real-sized backbone on the CPU (issue 23): RN50 at 224 px, scaled down to a 10-class 16-shot cell, the
    # baselines timed over one epoch; a few minutes on 2 cores.
    "rn50-cpu": PerfProfile(
        "RN50/random",
        n_classes=10,
        shots=16,
        test_images=100,
        train_views=10,
        baseline_epochs=1,
        methods=("clip_adapter", "coop"),
        workers=0,
        batch_size=32,
        overrides={"clip_adapter": {"epochs": 200}, "coop": {"epochs": 200}},
        timed_epochs={"coop": 10},
        grid=False,
        cocoop=False,
    ),
}


def make_jpegs(folder: Path, n_classes: int, per_class: int, seed: int = 0) -> LabeledImages:
    """Write ``n_classes * per_class`` 500x375 JPEGs (smooth colour fields plus noise, ~30 kB each), in
    parallel over the machine's cores; an image already there is kept."""
    import multiprocessing

    jobs = [(folder, label, i, seed) for label in range(n_classes) for i in range(per_class)]
    todo = [job for job in jobs if not (folder / _jpeg_name(job[1], job[2])).is_file()]
    if len(todo) > 64 and (os.cpu_count() or 1) > 1:
        with multiprocessing.get_context("spawn").Pool(min(16, os.cpu_count() or 1)) as pool:
            pool.starmap(_write_jpeg, todo, chunksize=32)
    else:
        for job in todo:
            _write_jpeg(*job)
    return LabeledImages(
        tuple(_jpeg_name(label, i) for _, label, i, _ in jobs), tuple(label for _, label, _, _ in jobs)
    )


def _jpeg_name(label: int, index: int) -> str:
    return f"c{label:04d}/{index:03d}.jpg"


def _write_jpeg(folder: Path, label: int, index: int, seed: int) -> None:
    rng = np.random.default_rng(derive_seed(seed, "perf-jpeg", label, index) & 0xFFFFFFFF)
    yy, xx = np.mgrid[0:375, 0:500].astype(np.float32)
    phase = rng.uniform(0, 6.28, size=3)
    base = 127 + 100 * np.sin(xx[..., None] / rng.uniform(20, 80) + yy[..., None] / 57 + phase)
    pixels = np.clip(base + rng.normal(0, 20, size=base.shape), 0, 255).astype(np.uint8)
    target = folder / _jpeg_name(label, index)
    target.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    atomic_write_bytes(target, buffer.getvalue())


def _key(backbone: Backbone, split: str, view: ViewSpec) -> ImageFeatureKey:
    return ImageFeatureKey.of(
        backbone, dataset="perf", dataset_version="1", split_sha256="perf", split=split, view=view
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_encoder(backbone: Backbone, batch_size: int, batches: int = 5) -> float:
    """Images/s of ``encode_images`` alone on random pixels (after one warm-up batch)."""
    size = backbone.preprocessing.image_size
    pixels = torch.randn(batch_size, 3, size, size)
    backbone.encode_images(pixels)
    _sync(backbone.device)
    start = time.perf_counter()
    for _ in range(batches):
        backbone.encode_images(pixels)
    _sync(backbone.device)
    return batches * batch_size / (time.perf_counter() - start)


def time_extraction(
    backbone: Backbone,
    root: Path,
    images: LabeledImages,
    view: ViewSpec,
    options: ExtractOptions,
    cache_dir: Path,
) -> tuple[torch.Tensor, float]:
    """Features of ``images`` through a fresh FeatureCache -> (features (V, N, D), images/s)."""
    cache = FeatureCache(cache_dir)
    _sync(backbone.device)
    start = time.perf_counter()
    features = cache.image_features(
        _key(backbone, "train" if view.kind == "augment" else "test", view),
        backbone,
        root,
        images.paths,
        options,
    )
    _sync(backbone.device)
    return features, len(images) / (time.perf_counter() - start)


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


@dataclass(frozen=True)
class MethodTiming:
    """One timed cell. ``seconds``: the whole schedule (scaled from ``timed_epochs`` when fewer were run);
    ``per_step``: measured seconds per optimiser step (None without epochs); ``peak``: device bytes (CUDA)."""

    seconds: float
    peak: int | None
    epochs: int | None
    timed_epochs: int | None
    per_step: float | None


def time_method(
    name: str, data: FewShotData, ctx: FitContext, overrides: dict, timed_epochs: int | None = None
) -> MethodTiming:
    """Fit one ImageNet-configured cell from cached features, for ``timed_epochs`` of its epochs if given."""
    from bench.tools.grid_cost import steps

    method = method_registry().get(name)()
    cfg = dataclasses.replace(
        method.default_config("imagenet", data.shots),
        **{k: v for k, v in overrides.items() if hasattr(method.Config, k)},
    )
    epochs = getattr(cfg, "epochs", None)
    run = dataclasses.replace(cfg, epochs=min(timed_epochs, epochs)) if timed_epochs and epochs else cfg
    _peak_reset(ctx.device)
    _sync(ctx.device)
    start = time.perf_counter()
    method.fit(data, run, ctx)
    _sync(ctx.device)
    measured = time.perf_counter() - start
    if not epochs:
        return MethodTiming(measured, _peak(ctx.device), None, None, None)
    n_steps = steps(len(data.train.labels), cfg.batch_size, run.epochs) if run.epochs else 0
    return MethodTiming(
        measured * epochs / max(run.epochs, 1),
        _peak(ctx.device),
        epochs,
        run.epochs,
        measured / n_steps if n_steps else None,
    )


def time_reencoding(
    backbone: Backbone,
    root: Path,
    images: LabeledImages,
    params: list[torch.nn.Parameter],
    logits_fn,
    epochs: int,
    options: ExtractOptions,
    fp32: bool = False,
) -> float:
    """Seconds per epoch of training as the official codes do: every step decodes, augments and encodes
    its images through the frozen image encoder (DataLoader workers decode, as in Dassl's loader).

    Args:
        params: what the optimiser updates. logits_fn: (B, D) raw image features -> (B, C) logits.
        fp32: encode images in float32 whatever the backbone's precision (CLIP-Adapter's ``clip_model.float()``).
    """
    from bench.methods.training import SGDRecipe, batches, dassl_lr

    recipe = SGDRecipe()
    optimizer = torch.optim.SGD(
        params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )
    labels = torch.tensor(images.labels, device=backbone.device)
    generator = torch_generator(derive_seed(0, "perf-baseline"))
    start = time.perf_counter()
    for epoch in range(epochs):
        view = ViewSpec.augment(1, seed=epoch)  # a fresh random view per image and epoch
        order = batches(len(images), recipe.batch_size, generator)
        loader = torch.utils.data.DataLoader(
            ImageViews(root, list(images.paths), backbone.preprocessing, view),
            batch_sampler=[b.tolist() for b in order],
            num_workers=options.num_workers,
            pin_memory=backbone.device.type == "cuda",
        )
        for group in optimizer.param_groups:
            group["lr"] = dassl_lr(epoch, epochs, recipe)
        for index, (pixels, _) in zip(order, loader, strict=True):
            features = (
                _encode_fp32(backbone, pixels[:, 0]) if fp32 else backbone.encode_images(pixels[:, 0])
            ).clone()
            loss = torch.nn.functional.cross_entropy(logits_fn(features), labels[index.to(backbone.device)])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    _sync(backbone.device)
    return (time.perf_counter() - start) / epochs


@torch.inference_mode()
def _encode_fp32(backbone: Backbone, pixels: torch.Tensor) -> torch.Tensor:
    return backbone.model.encode_image(pixels.to(backbone.device)).float()


def adapter_baseline(backbone: Backbone, classnames: tuple[str, ...], scale: float):
    """CLIP-Adapter as the official ``clip_adapter.py`` runs it: (params, logits_fn).

    ``CustomCLIP.forward`` calls ``TextEncoder.forward`` at every training step and test batch: all C class
    prompts (``clip.tokenize``: 77 positions) through ``encode_text``, in float32 (``build_model`` calls
    ``clip_model.float()`` on every device); the image features come from the fp32 encoder too
    (:func:`time_reencoding` with ``fp32=True``)."""
    from bench.methods.clip_adapter import Adapter

    adapter = Adapter(backbone.embed_dim, 4).to(backbone.device)
    tokens = backbone.tokenize([f"a photo of a {name}." for name in classnames]).to(backbone.device)

    def logits_fn(features: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # the frozen text encoder: no parameter of it needs a gradient
            text = backbone.model.encode_text(tokens).float()
        x = 0.2 * adapter(features) + 0.8 * features  # the official hard-coded ratio
        return (
            scale * torch.nn.functional.normalize(x, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).t()
        )

    return list(adapter.parameters()), logits_fn


def coop_baseline(backbone: Backbone, classnames: tuple[str, ...], scale: float):
    """CoOp as the official trainer runs it: all 77 text positions every step. Returns (params, logits_fn)."""
    from bench.methods.coop import CoopConfig, build_prompt_learner, init_context, text_tower

    generator = torch_generator(derive_seed(0, "perf-coop"))
    vectors, ctx_text = init_context(backbone, CoopConfig(), len(classnames), generator)
    learner = build_prompt_learner(backbone, classnames, vectors, ctx_text, "end")
    tower = text_tower(backbone.model)

    def logits_fn(features: torch.Tensor) -> torch.Tensor:
        with backbone.autocast():
            text = learner.text_features(tower, truncate=False)
        return (
            scale
            * torch.nn.functional.normalize(features, dim=-1)
            @ torch.nn.functional.normalize(text.float(), dim=-1).t()
        )

    return [learner.ctx], logits_fn


BASELINE_NOTES = {
    # what each simulated official step does, and what it leaves out (checked against the official files)
    "clip_adapter": lambda backbone: (
        "per step: decode + RRC/flip + fp32 image encoder, C prompts x 77 tokens through the fp32 text "
        "encoder (clip_adapter.py CustomCLIP.forward, clip_model.float()), adapter fwd/bwd; not simulated: the "
        "test pass (its text encoding per batch of 100 too), Dassl's logging/accuracy per step"
    ),
    "coop": lambda backbone: (
        f"per step: decode + RRC/flip + image encoder, C prompts x 77 tokens through the text encoder fwd/bwd "
        f"(trainers/coop.py); precision {backbone.precision} (official: fp16 weights, PREC=fp16); not simulated: "
        "the final test pass, Dassl's logging/accuracy per step"
    ),
}


@dataclass
class PerfRow:
    what: str
    value: float
    unit: str
    note: str = ""


def run_profile(
    profile: PerfProfile,
    device: torch.device,
    workdir: Path,
    emit: Callable[[PerfRow], None] = lambda row: None,
) -> list[PerfRow]:
    """Run every measurement of ``profile``; returns the table rows. ``emit`` sees each row as soon as it is
    measured (a time-limited session keeps what it finished)."""
    backbone = load_backbone(BackboneRef.parse(profile.backbone), device)
    options = ExtractOptions(batch_size=profile.batch_size, num_workers=profile.workers, progress=False)
    rows = [
        PerfRow(
            "encoder only",
            time_encoder(backbone, profile.batch_size),
            "images/s",
            f"{profile.backbone}, {backbone.preprocessing.image_size} px, {backbone.precision}",
        )
    ]
    test_images = make_jpegs(workdir / "test", max(1, profile.test_images // 20), 20, seed=1)
    _, centre_rate = time_extraction(
        backbone, workdir / "test", test_images, CENTER, options, workdir / "cache"
    )
    rows.append(
        PerfRow(
            "extraction, centre view (decode + encode)",
            centre_rate,
            "images/s",
            f"{len(test_images)} JPEG 500x375, {profile.workers} workers",
        )
    )
    support = make_jpegs(workdir / "train", profile.n_classes, profile.shots)
    train_view = ViewSpec.augment(profile.train_views)
    t0 = time.perf_counter()
    views, rate = time_extraction(
        backbone, workdir / "train", support, train_view, options, workdir / "cache"
    )
    extraction_s = time.perf_counter() - t0
    rows.append(
        PerfRow(
            f"extraction, {profile.train_views} augmented views",
            rate,
            "images/s",
            f"{len(support)} support images x {profile.train_views} views in {extraction_s:.1f} s",
        )
    )
    for row in rows:
        emit(row)
    method_rows, data, ctx, timings = _method_rows(
        profile, backbone, support, views, workdir, options, extraction_s, emit
    )
    rows += method_rows
    for row in cocoop_rows(data, ctx) if profile.cocoop else []:
        emit(row)
        rows.append(row)
    for row in encoder_in_loop_rows(profile, device, workdir, backbone):
        emit(row)
        rows.append(row)
    if profile.grid:
        predicted = grid_rows(profile, data, ctx, timings, centre_rate, rate)
        for row in predicted:
            emit(row)
        rows += predicted
    return rows


def _method_rows(
    profile: PerfProfile,
    backbone: Backbone,
    support: LabeledImages,
    views: torch.Tensor,
    workdir: Path,
    options: ExtractOptions,
    extraction_s: float,
    emit: Callable[[PerfRow], None],
) -> list[PerfRow]:
    classnames = tuple(f"class {i}" for i in range(profile.n_classes))
    cache = FeatureCache(workdir / "cache")
    labels = torch.tensor(support.labels)
    data = FewShotData(
        "perf",
        profile.shots,
        classnames,
        {"coop": ("a photo of a {}.",)},
        FeatureSet(views, labels),
        FeatureSet(views[:1, ::4], labels[::4]),
    )
    ctx = FitContext(
        backbone=backbone,
        device=backbone.device,
        seed=1,
        text_features=lambda templates, names: cache.text_features(backbone, names, templates),
    )
    baselines = {
        "clip_adapter": lambda: adapter_baseline(backbone, classnames, ctx.logit_scale),
        "coop": lambda: coop_baseline(backbone, classnames, ctx.logit_scale),
    }
    rows, timings = [], {}
    for name in profile.methods:
        overrides = {"train_views": profile.train_views, **profile.overrides.get(name, {})}
        timing = timings[name] = time_method(name, data, ctx, overrides, profile.timed_epochs.get(name))
        seconds, peak, epochs = timing.seconds, timing.peak, timing.epochs
        note = f"{epochs} epochs" if epochs else ""
        if epochs and timing.timed_epochs != epochs:
            note += f" ({timing.timed_epochs} timed, x{epochs / timing.timed_epochs:.0f})"
        note += f", peak {peak / 2**20:.0f} MiB" if peak is not None else ""
        rows.append(
            PerfRow(f"{name}: one {profile.n_classes}-class {profile.shots}-shot cell", seconds, "s", note)
        )
        emit(rows[-1])
        if name in baselines and epochs:
            params, logits_fn = baselines[name]()
            per_epoch = time_reencoding(
                backbone,
                workdir / "train",
                support,
                params,
                logits_fn,
                profile.baseline_epochs,
                options,
                fp32=name == "clip_adapter",
            )
            baseline, ours = per_epoch * epochs, seconds + extraction_s
            rows.append(
                PerfRow(
                    f"{name} as the official code runs it (re-encoding every step)",
                    baseline,
                    "s",
                    f"{profile.baseline_epochs} epoch(s) timed, x{epochs / profile.baseline_epochs:.0f}; "
                    + BASELINE_NOTES[name](backbone)
                    + f"; {options.num_workers} loader workers (official: 8)",
                )
            )
            rows.append(
                PerfRow(
                    f"{name} speed-up: official / (ours + view extraction)",
                    baseline / ours,
                    "x",
                    f"ours {ours:.1f} s incl. {extraction_s:.1f} s extraction",
                )
            )
            emit(rows[-2])
            emit(rows[-1])
    return rows, data, ctx, timings


COCOOP_TIMED_STEPS = 4  # CoCoOp steps (batch 1: one image x C prompts, forward + backward) actually timed


def cocoop_rows(data: FewShotData, ctx: FitContext) -> list[PerfRow]:
    """CoCoOp's per-image text pass (every image runs its own C prompts through the text tower): seconds per
    training step and per scored image, timed on a few images and extrapolated to the cell's support and
    to 1,000 test images."""
    from bench.methods.cocoop import Cocoop, rows_per_chunk
    from bench.methods.coop import text_tower

    method = Cocoop()
    cfg = method.default_config("imagenet", data.shots)
    few = dataclasses.replace(
        data,
        train=FeatureSet(
            data.train.features[:1, :COCOOP_TIMED_STEPS], data.train.labels[:COCOOP_TIMED_STEPS]
        ),
    )
    _peak_reset(ctx.device)
    _sync(ctx.device)
    start = time.perf_counter()
    classifier = method.fit(few, dataclasses.replace(cfg, epochs=1, train_views=1), ctx)
    _sync(ctx.device)
    per_step = (time.perf_counter() - start) / COCOOP_TIMED_STEPS
    peak = _peak(ctx.device)
    rows = rows_per_chunk(
        text_tower(ctx.backbone.model), int(classifier.learner.eot.max()) + 1, cfg.memory_mb
    )
    images = data.val.center[:COCOOP_TIMED_STEPS].to(ctx.device)
    with torch.no_grad():
        _sync(ctx.device)
        start = time.perf_counter()
        classifier(images)
        _sync(ctx.device)
    per_image = (time.perf_counter() - start) / len(images)
    n, c = len(data.train.labels), data.n_classes
    memory = f", peak {peak / 2**20:.0f} MiB" if peak is not None else ""
    return [
        PerfRow(
            f"cocoop: one training step (1 image x {c} prompts, forward + backward)",
            1e3 * per_step,
            "ms",
            f"{COCOOP_TIMED_STEPS} timed; chunks of {rows} prompts ({cfg.memory_mb} MiB budget){memory}; "
            f"the {n}-image cell: {cfg.epochs} epochs x {n} steps = {cfg.epochs * n * per_step / 60:.1f} min",
        ),
        PerfRow(
            f"cocoop: scoring one test image ({c} prompts)",
            1e3 * per_image,
            "ms",
            f"1,000 test images: {1000 * per_image:.1f} s (zero-shot and CoOp: one matrix product)",
        ),
    ]


def encoder_in_loop_rows(
    profile: PerfProfile, device: torch.device, workdir: Path, backbone: Backbone
) -> list[PerfRow]:
    """CLIP-LoRA's and MaPLe's rows (:func:`bench.tools.perf_encoder.encoder_rows`) on the profile's ViT
    (``backbone`` when it is the same one), on their own generated support JPEGs."""
    if profile.encoder_in_loop is None:
        return []
    from bench.tools.perf_encoder import encoder_rows

    arch, n_classes, timed_steps = profile.encoder_in_loop
    vit = backbone if arch == profile.backbone else load_backbone(BackboneRef.parse(arch), device)
    support = make_jpegs(workdir / "encoder", n_classes, profile.shots)
    rows = encoder_rows(vit, workdir / "encoder", support, n_classes, profile.shots, timed_steps)
    return [PerfRow(r["what"], r["value"], r["unit"], f"{arch}; {r['note']}") for r in rows]


def _classes_subset(data: FewShotData, n_classes: int) -> FewShotData:
    """``data`` restricted to its first ``n_classes`` classes (CoOp's step cost at another C)."""

    def keep(features: FeatureSet) -> FeatureSet:
        mask = features.labels < n_classes
        return FeatureSet(features.features[:, mask], features.labels[mask])

    return dataclasses.replace(
        data, classnames=data.classnames[:n_classes], train=keep(data.train), val=keep(data.val)
    )


def grid_rows(
    profile: PerfProfile,
    data: FewShotData,
    ctx: FitContext,
    timings: dict[str, MethodTiming],
    centre_rate: float,
    augmented_rate: float,
) -> list[PerfRow]:
    """The paper grid predicted from this run's per-step costs (:func:`bench.tools.grid_cost.grid_seconds`)."""
    from bench.tools.grid_cost import StepCosts, grid_seconds

    if not set(GRID_METHODS) <= set(timings):
        return []
    big, small, k = profile.n_classes, max(2, profile.n_classes // 10), profile.shots
    coop = {big: timings["coop"].per_step}
    probe = {big * big * k: timings["linear_probe"].seconds}
    if small < big:  # the second size of the affine fits
        subset = _classes_subset(data, small)
        for name, points, size in (("coop", coop, small), ("linear_probe", probe, small * small * k)):
            overrides = {"train_views": profile.train_views, **profile.overrides.get(name, {})}
            timing = time_method(name, subset, ctx, overrides, profile.timed_epochs.get(name))
            points[size] = timing.per_step if name == "coop" else timing.seconds
    costs = StepCosts(
        coop_per_step=coop,
        adapter_per_step=timings["clip_adapter"].per_step,
        linear_probe_cell=probe,
        zero_shot_cell=timings["zero_shot"].seconds,
        ref_classes=big,
        centre_rate=centre_rate,
        augmented_rate=augmented_rate,
    )
    parts = grid_seconds(costs)
    step_note = ", ".join(f"C={c}: {1e3 * t:.2f} ms" for c, t in sorted(coop.items()))
    probe_note = ", ".join(f"{t:.1f} s at C={round((x / k) ** 0.5)}" for x, t in sorted(probe.items()))
    notes = {
        "extraction": "every test image once; support views and val images once per (shots, seed) draw",
        "coop": f"steps x (a + b·C), per step {step_note}",
        "clip_adapter": f"steps x {1e3 * costs.adapter_per_step:.3f} ms per step",
        "linear_probe": f"a + b·C²K per cell, {probe_note} (K={k})",
        "zero_shot": "one text encoding per class",
    }
    rows = [PerfRow(f"paper grid, predicted: {part}", parts[part] / 60, "min", notes[part]) for part in notes]
    rows.append(
        PerfRow(
            "paper grid, predicted: total (660 cells)",
            parts["total"] / 60,
            "min",
            f"{profile.backbone}; 11 datasets x 5 shots x 3 seeds x 4 methods; target <= 60 GPU-min",
        )
    )
    return rows


def render_row(row: PerfRow) -> str:
    return f"| {row.what} | {row.value:,.1f} | {row.unit} | {row.note} |"


def render(rows: list[PerfRow], profile_name: str, device: torch.device) -> str:
    env = environment(device)
    head = [
        f"# bench perf — profile `{profile_name}`",
        "",
        f"Device: {env['device_name']} ({device.type}), torch {env['torch']}, open_clip {env['open_clip']}, "
        f"bench {env['bench_version']} ({(env['git_sha'] or '?')[:10]}), {torch.get_num_threads()} CPU threads.",
        "",
        "| measurement | value | unit | note |",
        "|---|---:|---|---|",
    ]
    body = [render_row(r) for r in rows]
    return "\n".join(head + body) + "\n"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "perf",
        help="benchmark extraction and per-cell training speed against re-encoding",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument(
        "--profile", default="auto", choices=("auto", *PROFILES), help="auto: gpu on CUDA, else cpu"
    )
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where the generated JPEGs and caches go (default: a temp dir)",
    )
    p.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    p.set_defaults(func=_cmd_perf)


def _cmd_perf(args) -> int:
    from bench.fileio import atomic_write_bytes, atomic_write_json

    device = resolve_device(args.device)
    name = args.profile if args.profile != "auto" else ("gpu" if device.type == "cuda" else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        rows = run_profile(
            PROFILES[name],
            device,
            Path(args.workdir or tmp),
            emit=lambda row: print(f"measured: {render_row(row)}", file=sys.stderr, flush=True),
        )
    text = render(rows, name, device)
    print(text, end="")
    if args.out:
        atomic_write_bytes(args.out, text.encode())
    if args.json:
        atomic_write_json(
            args.json,
            {
                "profile": name,
                "environment": environment(device),
                "rows": [dataclasses.asdict(r) for r in rows],
            },
        )
    return 0
