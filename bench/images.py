"""Images to encoder inputs: decoding, the test-time view, and seeded augmented views.

Augmented views reproduce Dassl's training transform (``random_resized_crop`` with scale
(0.08, 1), ``random_flip``, ``normalize``) but draw each view's randomness from a generator
seeded by (augmentation seed, image path, view index). An image therefore gets the same
views whichever cell, batch or worker asks for it, which is what lets augmented features
be cached and shared.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from bench.backbone import Preprocessing
from bench.errors import BenchError
from bench.seeding import derive_seed


@dataclass(frozen=True)
class ViewSpec:
    """Which views of each image are encoded.

    Attributes:
        kind: ``"center"`` (the test transform, one view) or ``"augment"``.
        n_views: number of augmented views per image (1 for ``center``).
        scale: RandomResizedCrop area range (Dassl's ``INPUT.RRCROP_SCALE``).
        ratio: RandomResizedCrop aspect-ratio range.
        flip: random horizontal flip with p = 0.5.
        seed: root of the per-view seeds.
    """

    kind: str = "center"
    n_views: int = 1
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    seed: int = 0

    @classmethod
    def augment(cls, n_views: int, seed: int = 0) -> ViewSpec:
        return cls(kind="augment", n_views=n_views, seed=seed)

    @property
    def name(self) -> str:
        return "center" if self.kind == "center" else f"aug{self.n_views}"


CENTER = ViewSpec()


def load_rgb(path: Path) -> Image.Image:
    """Decode an image file to RGB, or raise a :class:`BenchError` naming it."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (
        OSError,
        ValueError,
        Image.DecompressionBombError,
    ) as exc:  # a bomb: far more pixels than it should
        raise BenchError(
            f"cannot decode image ({type(exc).__name__}: {exc})",
            where=str(path),
            fix="re-extract or re-download this file; `bench data check` lists every bad file",
        ) from exc


def _interp(prep: Preprocessing) -> InterpolationMode:
    return InterpolationMode(prep.interpolation)


def _normalise(img: Image.Image, prep: Preprocessing) -> torch.Tensor:
    return TF.normalize(TF.to_tensor(img), list(prep.mean), list(prep.std))


def center_view(img: Image.Image, prep: Preprocessing) -> torch.Tensor:
    """The test-time transform -> (3, S, S)."""
    size = prep.image_size
    if prep.resize == "squash":
        img = TF.resize(img, [size, size], interpolation=_interp(prep))
    else:
        img = TF.center_crop(TF.resize(img, size, interpolation=_interp(prep)), [size, size])
    return _normalise(img, prep)


def _crop_box(width: int, height: int, view: ViewSpec, rng: random.Random) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params with an explicit generator -> (top, left, h, w)."""
    area = width * height
    log_ratio = (math.log(view.ratio[0]), math.log(view.ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*view.scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < view.ratio[0]:
        w, h = width, round(width / view.ratio[0])
    elif in_ratio > view.ratio[1]:
        h, w = height, round(height * view.ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def augmented_view(img: Image.Image, prep: Preprocessing, view: ViewSpec, rng: random.Random) -> torch.Tensor:
    """One Dassl-style training view -> (3, S, S)."""
    top, left, h, w = _crop_box(img.width, img.height, view, rng)
    out = TF.resized_crop(
        img, top, left, h, w, [prep.image_size, prep.image_size], interpolation=_interp(prep)
    )
    if view.flip and rng.random() < 0.5:
        out = TF.hflip(out)
    return _normalise(out, prep)


class ImageViews(torch.utils.data.Dataset):
    """Dataset of encoder inputs: item ``i`` is ``(views (V, 3, S, S), error message or "")``.

    A file that cannot be decoded yields zeros plus its error, so the caller can raise one
    clear error instead of a DataLoader worker traceback.
    """

    def __init__(self, image_root: Path, paths: list[str], prep: Preprocessing, view: ViewSpec):
        self.image_root, self.paths, self.prep, self.view = Path(image_root), paths, prep, view

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        relpath = self.paths[index]
        try:
            img = load_rgb(self.image_root / relpath)
        except BenchError as exc:
            size = self.prep.image_size
            return torch.zeros(self.view.n_views, 3, size, size), str(exc)
        if self.view.kind == "center":
            return center_view(img, self.prep).unsqueeze(0), ""
        views = [
            augmented_view(img, self.prep, self.view, random.Random(derive_seed(self.view.seed, relpath, v)))
            for v in range(self.view.n_views)
        ]
        return torch.stack(views), ""
