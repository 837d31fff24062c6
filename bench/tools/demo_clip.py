"""The demo's CLIP, pretrained here: no pretrained weights can be had offline, so ``bench demo``
trains a small one on captioned images of its source (which images: :mod:`bench.datasets.demo_data`).

This is a short utility, not a CLIP training framework: CLIP's contrastive loss (symmetric
cross-entropy over image–caption similarities, all same-class pairs of a batch counted as
positives), AdamW, linear warm-up then cosine decay, captions ``template.format(class name)``
with a random template per image, and random resized crops + flips like the harness's training
views. Inputs are otherwise preprocessed exactly as the harness later encodes the target's images
(:func:`bench.images.center_view` of the backbone's preprocessing).

The temperature is set to CLIP's trained value (logit scale 100, its cap) once pretraining ends:
a web-scale CLIP reaches the cap, while 600 steps here stop near the initial 1/0.07 ≈ 14. It changes
no feature and no zero-shot or linear-probe prediction (an argmax and a probe on features), but the
methods that train through the logits (CoOp, CLIP-Adapter, Tip-Adapter-F) take their gradient scale
from it, and their papers' learning rates and epochs assume CLIP's 100: at 14 they hardly move.

The checkpoint is written atomically to ``<cache>/demo_clip/<source>-<digest>.pt`` as
``{"state_dict", "meta"}``; the digest hashes the recipe, the source's definition and files, and
the architecture config, so a second run loads it and a changed recipe trains a new one. Its
``meta`` travels into every result record of the backbone (``backbone.checkpoint_meta``). A
sidecar ``.json`` keeps the training log (losses, time, device, a sanity accuracy).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from tqdm.auto import tqdm

from bench.backbone import Preprocessing, bundled_config
from bench.datasets.demo_data import (
    CAPTION_TEMPLATES,
    SOURCES,
    SourceImages,
    load_source,
    pretraining_images,
    source_files,
)
from bench.fileio import atomic_torch_save, atomic_write_json, sha256_json
from bench.seeding import derive_seed, torch_generator

DEMO_ARCH = "bench-demo"
RECIPE_VERSION = "2"  # bump when this module's training changes (2: final logit scale set to CLIP's 100)


@dataclass(frozen=True)
class PretrainRecipe:
    """How the demo CLIP is trained; with the source's definition and files and the arch config, what
    defines its weights."""

    source: str
    templates: tuple[str, ...] = CAPTION_TEMPLATES
    arch: str = DEMO_ARCH
    steps: int = 600
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    augment: bool = True
    seed: int = 0
    final_logit_scale: float = 100.0  # CLIP's trained temperature (its cap), set after pretraining
    version: str = RECIPE_VERSION


def recipe_for(source: str, steps: int | None = None) -> PretrainRecipe:
    """The default recipe for a source, with ``steps`` optimiser steps if given."""
    return PretrainRecipe(source=source, steps=SOURCES[source].pretrain_steps if steps is None else steps)


def checkpoint_meta(recipe: PretrainRecipe) -> dict:
    """What the checkpoint's weights are made of, as JSON: recipe, source definition and files, arch config."""
    return json.loads(
        json.dumps(
            {
                "pretrained_by": "bench demo",
                "recipe": asdict(recipe),
                "source": asdict(SOURCES[recipe.source]),
                "source_files": source_files(recipe.source),
                "arch_config": bundled_config(recipe.arch),
            }
        )
    )


def checkpoint_path(cache_root: Path, recipe: PretrainRecipe) -> Path:
    digest = sha256_json(checkpoint_meta(recipe))
    return Path(cache_root) / "demo_clip" / f"{recipe.source}-{digest[:16]}.pt"


def ensure_demo_clip(
    recipe: PretrainRecipe, cache_root: Path, device: torch.device, progress: bool = True
) -> tuple[Path, dict | None]:
    """The checkpoint of ``recipe``, pretrained now unless cached -> (path, training log or None if cached)."""
    path = checkpoint_path(cache_root, recipe)
    if path.is_file():
        return path, None
    model, log = pretrain(recipe, load_source(recipe.source), device, progress)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    meta = checkpoint_meta(recipe)
    atomic_write_json(path.with_suffix(".json"), {**meta, "log": log})
    atomic_torch_save(path, {"state_dict": state, "meta": meta})
    return path, log


def model_inputs(images: np.ndarray, prep: Preprocessing) -> torch.Tensor:
    """(N, H, W) uint8 grayscale -> (N, S, S) uint8, resized as :func:`bench.images.center_view` does."""
    size = prep.image_size
    if images.shape[1:] == (size, size):
        return torch.from_numpy(images.copy())
    mode = TF.InterpolationMode(prep.interpolation)
    resized = [
        np.asarray(TF.center_crop(TF.resize(Image.fromarray(im), size, interpolation=mode), [size, size]))
        for im in images
    ]
    return torch.from_numpy(np.stack(resized))


def normalise(batch: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """(B, S, S) uint8 grayscale -> (B, 3, S, S) float, as ``center_view`` of the RGB image."""
    mean = torch.tensor(prep.mean, device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(prep.std, device=batch.device).view(1, 3, 1, 1)
    return (batch.float().div(255).unsqueeze(1) - mean) / std


def random_crops(
    batch: torch.Tensor,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """Random resized crops + horizontal flips of (B, S, S) images -> (B, S, S) float, batched (bilinear).

    The harness's training views (Dassl's ``random_resized_crop`` + ``random_flip``) with the same
    ranges, so the demo CLIP, like a real one, still knows an object from a crop of it.
    """
    from torchvision.ops import roi_align

    n, size = batch.shape[0], batch.shape[-1]
    area = torch.empty(n).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator).exp()
    w = (area * log_ratio).sqrt().clamp(max=1) * size
    h = (area / log_ratio).sqrt().clamp(max=1) * size
    x0, y0 = torch.rand(n, generator=generator) * (size - w), torch.rand(n, generator=generator) * (size - h)
    boxes = torch.stack([torch.arange(n, dtype=torch.float), x0, y0, x0 + w, y0 + h], dim=1).to(batch.device)
    crops = roi_align(
        batch.float().unsqueeze(1), boxes, output_size=(size, size), sampling_ratio=1, aligned=True
    )[:, 0]
    flip = (torch.rand(n, generator=generator) < 0.5).to(batch.device)[:, None, None]
    return torch.where(flip, crops.flip(-1), crops)


def contrastive_loss(
    image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """CLIP's symmetric loss with every same-class pair a positive. image, text: (B, D) normalised; labels (B,)."""
    logits = scale * image @ text.t()
    same = (labels[:, None] == labels[None, :]).float()
    target = same / same.sum(1, keepdim=True)
    return (
        -((target * logits.log_softmax(1)).sum(1).mean() + (target * logits.t().log_softmax(1)).sum(1).mean())
        / 2
    )


def _learning_rate(step: int, recipe: PretrainRecipe) -> float:
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    return (
        recipe.lr
        * 0.5
        * (1 + math.cos(math.pi * (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)))
    )


def _build(recipe: PretrainRecipe, device: torch.device):
    import open_clip
    from open_clip.model import CLIP

    config = bundled_config(recipe.arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(recipe.seed, "demo_clip", "init"))
        model = CLIP(**config).to(device)
    tokenizer = open_clip.SimpleTokenizer(context_length=config["text_cfg"]["context_length"])
    return model, tokenizer, Preprocessing(image_size=int(config["vision_cfg"]["image_size"]))


def _optimizer(model: torch.nn.Module, recipe: PretrainRecipe) -> torch.optim.Optimizer:
    # open_clip's rule: no weight decay on gains, biases, the temperature and other 1-d parameters.
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=recipe.lr,
    )


def pretrain(recipe: PretrainRecipe, images: SourceImages, device: torch.device, progress: bool = True):
    """Train the demo CLIP on :func:`pretraining_images` of its source -> (model in eval mode, log dict)."""
    model, tokenizer, prep = _build(recipe, device)
    source = SOURCES[recipe.source]
    keep = pretraining_images(source, images)
    pixels = model_inputs(images.train_images[keep], prep).to(device)
    labels = torch.from_numpy(images.train_labels[keep])
    n_templates = len(recipe.templates)
    tokens = tokenizer([t.format(c) for c in source.classnames for t in recipe.templates]).to(device)
    optimizer = _optimizer(model, recipe)
    generator = torch_generator(derive_seed(recipe.seed, "demo_clip", "batches"))
    losses, t0 = [], time.perf_counter()
    model.train()
    for step in tqdm(range(recipe.steps), desc="pretraining demo CLIP", unit="step", disable=not progress):
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, recipe)
        index = torch.randint(len(labels), (recipe.batch_size,), generator=generator)
        caption = labels[index] * n_templates + torch.randint(
            n_templates, (recipe.batch_size,), generator=generator
        )
        unique, inverse = torch.unique(caption, return_inverse=True)  # encode each distinct caption once
        views = (
            random_crops(pixels[index.to(device)], generator) if recipe.augment else pixels[index.to(device)]
        )
        image = F.normalize(model.encode_image(normalise(views, prep)), dim=-1)
        text = F.normalize(model.encode_text(tokens[unique.to(device)]), dim=-1)[inverse.to(device)]
        loss = contrastive_loss(image, text, labels[index].to(device), model.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))  # CLIP's cap on the temperature
        losses.append(loss.detach())
    learned_scale = float(model.logit_scale.detach().exp())
    with torch.no_grad():
        model.logit_scale.fill_(math.log(recipe.final_logit_scale))
    model.eval()
    curve = torch.stack(losses).cpu().tolist() if losses else []
    log = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "train_s": round(time.perf_counter() - t0, 1),
        "n_images": int(len(labels)),
        "loss_every_50": [round(v, 4) for v in curve[::50]],
        "final_loss": round(float(np.mean(curve[-20:])), 4) if curve else None,
        "logit_scale_learned": round(learned_scale, 3),
        "logit_scale": recipe.final_logit_scale,
        "zero_shot_top1_common_classes": zero_shot_accuracy(model, tokenizer, prep, source, images, device),
    }
    return model, log


@torch.no_grad()
def zero_shot_accuracy(
    model, tokenizer, prep: Preprocessing, source, images: SourceImages, device: torch.device
) -> float:
    """Sanity check: ten-way top-1 of "a photo of a {}." on the source's test images of its *common*
    classes (fraction); the rare classes' test images are the target's, left to the harness."""
    keep = ~np.isin(images.test_labels, source.target_classes)
    labels = torch.from_numpy(images.test_labels[keep]).to(device)
    weights = F.normalize(
        model.encode_text(tokenizer([f"a photo of a {c}." for c in source.classnames]).to(device)), dim=-1
    )
    pixels = model_inputs(images.test_images[keep], prep)
    correct = 0
    for start in range(0, len(pixels), 1024):
        features = model.encode_image(normalise(pixels[start : start + 1024].to(device), prep))
        correct += int(
            (F.normalize(features, dim=-1) @ weights.t()).argmax(1).eq(labels[start : start + 1024]).sum()
        )
    return round(correct / max(1, len(labels)), 4)
