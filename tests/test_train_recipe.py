import math

import pytest
import torch

from bench.methods._train import SGDRecipe, batches, coop_epochs, dassl_lr


def test_coop_epochs_by_shots():
    assert [coop_epochs("dtd", k) for k in (1, 2, 4, 8, 16)] == [50, 100, 100, 200, 200]
    assert [coop_epochs("imagenet", k) for k in (1, 16)] == [50, 50]


def test_dassl_constant_warmup_then_cosine_from_base_lr():
    recipe = SGDRecipe()
    assert dassl_lr(0, 200, recipe) == 1e-5
    assert dassl_lr(1, 200, recipe) == pytest.approx(0.002)  # cosine starts at the base lr after warm-up
    assert dassl_lr(101, 200, recipe) == pytest.approx(0.002 * 0.5 * (1 + math.cos(math.pi * 100 / 200)))
    assert dassl_lr(199, 200, recipe) < 1e-6 + 0.002 * 0.5 * (1 + math.cos(math.pi * 198 / 200))


def test_small_support_sets_still_train():
    """EuroSAT 1-shot: 10 images < batch 32; Dassl's old drop_last left zero batches (CoOp README, 18.09.2021)."""
    g = torch.Generator().manual_seed(0)
    assert [len(b) for b in batches(10, 32, g)] == [10]
    assert [len(b) for b in batches(70, 32, g)] == [32, 32]  # a full batch exists: drop the remainder like Dassl
    assert sorted(torch.cat(batches(64, 32, g)).tolist()) == list(range(64))
