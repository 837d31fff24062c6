"""A small generated dataset in CoOp's exact layout, for tests and smoke runs.

Eight classes of 32x32 RGB PNGs: a colour (red/green/blue/yellow) crossed with a
pattern (stripes/dots), plus per-image jitter and noise, so a linear probe on even a
random-init CLIP's features learns something while zero-shot on it stays near chance.
Layout::

    <dataset_dir>/images/<class_name>/<split>_<i>.png
    <dataset_dir>/split_zhou_Synthetic.json
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from bench.fileio import atomic_write_bytes

CLASSNAMES = (
    "red_stripes",
    "green_stripes",
    "blue_stripes",
    "yellow_stripes",
    "red_dots",
    "green_dots",
    "blue_dots",
    "yellow_dots",
)
ALT_CLASSNAMES = ("blue_dots", "red_stripes", "yellow_dots", "green_stripes", "green_dots", "yellow_stripes")
PER_CLASS = {"train": 16, "val": 6, "test": 12}
IMAGE_SIZE = 32
SPLIT_FILE = "split_zhou_Synthetic.json"
ALT_SPLIT_FILE = "split_zhou_SyntheticAlt.json"
_COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}


def _draw(colour: str, pattern: str, rng: np.random.Generator) -> np.ndarray:
    """One (32, 32, 3) uint8 image of the given colour and pattern."""
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
    period = rng.uniform(5.0, 8.0)
    phase = rng.uniform(0, period)
    if pattern == "stripes":
        mask = ((xx + yy * rng.uniform(-0.3, 0.3) + phase) % period) < period / 2
    else:
        mask = (((xx + phase) % period) < period / 2.5) & (((yy + phase) % period) < period / 2.5)
    fg = np.array(_COLOURS[colour], dtype=np.float32) * rng.uniform(0.8, 1.1)
    bg = rng.uniform(0, 80, size=3).astype(np.float32)
    img = np.where(mask[..., None], fg, bg) + rng.normal(0, 18, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def generate(dataset_dir: Path) -> Path:
    """Write the ``synthetic`` dataset under ``dataset_dir`` (idempotent); returns the split file path."""
    return _generate(Path(dataset_dir), CLASSNAMES, SPLIT_FILE, seed=0)


def generate_alt(dataset_dir: Path) -> Path:
    """Write ``synthetic_alt``: six of the classes in another order, other images (a second dataset for grids)."""
    return _generate(Path(dataset_dir), ALT_CLASSNAMES, ALT_SPLIT_FILE, seed=1)


def _generate(dataset_dir: Path, classnames: tuple[str, ...], split_file: str, seed: int) -> Path:
    split_path = dataset_dir / split_file
    if split_path.is_file():
        return split_path
    rng = np.random.default_rng(seed)
    split: dict[str, list] = {name: [] for name in PER_CLASS}
    for name, count in PER_CLASS.items():
        for label, classname in enumerate(classnames):
            colour, pattern = classname.split("_")
            for i in range(count):
                relpath = f"{classname}/{name}_{i:03d}.png"
                target = dataset_dir / "images" / relpath
                target.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(_draw(colour, pattern, rng)).save(target)
                split[name].append([relpath, label, classname])
    # The split file is written last and atomically: its presence marks a complete dataset.
    atomic_write_bytes(split_path, json.dumps(split, indent=1).encode())
    return split_path
