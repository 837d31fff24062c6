"""Explicit randomness: every random draw comes from a generator derived for its purpose.

``derive_seed(root, *parts)`` turns a cell's root seed and a purpose (``"init"``,
``"loader"``, ``"tpe"``, ...) into an independent 63-bit seed, so adding a random
draw in one place never shifts the draws of another.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def derive_seed(root: int | str, *parts: object) -> int:
    """A 63-bit seed from ``sha256("root/part1/part2/...")``; stable across processes and machines."""
    text = "/".join(str(p) for p in (root, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") & ((1 << 63) - 1)


def torch_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def numpy_generator(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)
