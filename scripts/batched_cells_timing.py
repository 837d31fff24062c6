"""3-seed CLIP-Adapter cell of the demo's size: one-at-a-time fits against clip_adapter.fit_many, interleaved."""

import time

import torch

from bench.methods.clip_adapter import ClipAdapter, fit_many
from tests.toy import clip_scaled_backbone, clustered_data, toy_context


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


dim = 64  # the tiny text tower's width
names = tuple(f"c{i}" for i in range(10))
bb = clip_scaled_backbone()
seeds = (1, 2, 3)
data = [clustered_data(names, 16, 10, noise=0.8, seed=s, dim=dim) for s in seeds]
cfg = ClipAdapter().default_config("fashion_mnist_fewshot", 16)  # 200 epochs
ctxs = [toy_context(bb, seed=s) for s in seeds]
res = {"seq": [], "batched": []}
maxdiff = 0
for _rep in range(3):
    seq, dt = timed(lambda: [ClipAdapter().fit(d, cfg, c) for d, c in zip(data, ctxs, strict=False)])
    res["seq"].append(dt)
    bat, dt = timed(lambda: fit_many(data, cfg, ctxs))
    res["batched"].append(dt)
x = torch.randn(500, 64)
for a, b in zip(seq, bat, strict=False):
    maxdiff = max(
        maxdiff, max(float((p - q).abs().max()) for p, q in zip(a.parameters(), b.parameters(), strict=False))
    )
    assert torch.equal(a(x).argmax(1), b(x).argmax(1))
