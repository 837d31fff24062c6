import dataclasses
import math

import pytest
import torch

from bench.methods.base import FitContext
from bench.methods.training import (
    SGDRecipe,
    batches,
    coop_epochs,
    cpu_threads_for,
    dassl_lr,
    pool_batches,
    val_reporter,
    view_batches,
)


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
    assert [len(b) for b in batches(70, 32, g)] == [
        32,
        32,
    ]  # a full batch exists: drop the remainder like Dassl
    assert sorted(torch.cat(batches(64, 32, g)).tolist()) == list(range(64))


def test_view_batches_show_every_image_once_through_one_of_its_views():
    g = torch.Generator().manual_seed(0)
    epoch = view_batches(10, 70, 32, g)
    assert [len(images) for _, images in epoch] == [32, 32]
    images = torch.cat([i for _, i in epoch])
    assert len(set(images.tolist())) == 64 and all(0 <= v < 10 for views, _ in epoch for v in views.tolist())


def test_pool_batches_draw_from_all_augmented_features_like_clap():
    """CLAP: N // B batches (1 when N < B) from a shuffle of the V·N pool, so a batch may exceed N."""
    g = torch.Generator().manual_seed(0)
    small = pool_batches(20, 100, 256, g)  # Caltech 1-shot: 100 images, one batch of 256 of the 2000 features
    assert len(small) == 1 and len(small[0][1]) == 256
    pairs = set(zip(small[0][0].tolist(), small[0][1].tolist(), strict=True))
    assert len(pairs) == 256 and all(v < 20 and i < 100 for v, i in pairs)  # distinct pool entries
    assert [len(i) for _, i in pool_batches(20, 600, 256, g)] == [256, 256]
    assert [len(i) for _, i in pool_batches(20, 10, 256, g)] == [200]  # EuroSAT 1-shot: the whole pool


def test_cpu_threads_restored_and_reporter_only_when_listened_to():
    before = torch.get_num_threads()
    with cpu_threads_for(torch.device("cpu"), 10):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before

    ctx = FitContext(backbone=None, device=torch.device("cpu"), seed=0, text_features=None)
    assert val_reporter(ctx, lambda: 1.0, 25) is None
    reported = []
    listening = dataclasses.replace(ctx, report=lambda step, score: reported.append((step, score)))
    on_epoch_end = val_reporter(listening, lambda: 0.5, 25, every=10)
    for epoch in range(25):
        on_epoch_end(epoch)
    assert reported == [(10, 0.5), (20, 0.5), (25, 0.5)]
