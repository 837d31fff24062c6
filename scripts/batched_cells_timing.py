"""A 3-seed cell of the demo's size (10 classes x 16 shots, 10 views, 64-d features, bench-tiny text tower):
one-at-a-time fits against the method's fit_many, interleaved in one process; medians and their ratio.

    PYTHONPATH=. python scripts/batched_cells_timing.py --method clip_adapter          # 200 epochs
    PYTHONPATH=. python scripts/batched_cells_timing.py --method coop --epochs 20      # per-epoch cost is constant
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

import torch

from bench.methods.clip_adapter import ClipAdapter
from bench.methods.clip_adapter import fit_many as clip_adapter_fit_many
from bench.methods.coop import Coop
from bench.methods.coop import fit_many as coop_fit_many
from tests.toy import clip_scaled_backbone, clustered_data, toy_context

METHODS = {"clip_adapter": (ClipAdapter, clip_adapter_fit_many), "coop": (Coop, coop_fit_many)}
DIM = 64  # the tiny text tower's width


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def max_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(
        float((p - q).abs().max())
        for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--method", choices=sorted(METHODS), default="clip_adapter")
    parser.add_argument("--epochs", type=int, default=None, help="default: the method's at 16 shots (200)")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions of both")
    args = parser.parse_args()
    method, fit_many = METHODS[args.method]
    names = tuple(f"c{i}" for i in range(10))
    backbone = clip_scaled_backbone()
    seeds = (1, 2, 3)
    data = [clustered_data(names, 16, 10, noise=0.8, seed=s, dim=DIM) for s in seeds]
    cfg = method().default_config("fashion_mnist_fewshot", 16)
    if args.epochs is not None:
        cfg = dataclasses.replace(cfg, epochs=args.epochs)
    ctxs = [toy_context(backbone, seed=s) for s in seeds]
    say(
        f"{args.method}: 3 seeds x 10 classes x 16 shots, 10 views, {cfg.epochs} epochs; load {os.getloadavg()}"
    )
    times: dict[str, list[float]] = {"sequential": [], "batched": []}
    for rep in range(args.reps):
        seq, dt = timed(lambda: [method().fit(d, cfg, c) for d, c in zip(data, ctxs, strict=True)])
        times["sequential"].append(dt)
        bat, dt = timed(lambda: fit_many(data, cfg, ctxs))
        times["batched"].append(dt)
        say(
            f"rep {rep + 1}: sequential {times['sequential'][-1]:.2f} s, batched {dt:.2f} s; load {os.getloadavg()}"
        )
    x = torch.randn(500, DIM, generator=torch.Generator().manual_seed(0)) * 2
    with torch.no_grad():
        same = all(torch.equal(a(x).argmax(1), b(x).argmax(1)) for a, b in zip(seq, bat, strict=True))
    diff = max(max_difference(a, b) for a, b in zip(seq, bat, strict=True))
    median = {k: statistics.median(v) for k, v in times.items()}
    say(
        f"median sequential {median['sequential']:.2f} s, batched {median['batched']:.2f} s, "
        f"ratio {median['sequential'] / median['batched']:.2f}x; "
        f"per-rep ratios {[round(s / b, 2) for s, b in zip(times['sequential'], times['batched'], strict=True)]}; "
        f"max parameter difference {diff:.2e}; same predictions: {same}"
    )
    assert same


if __name__ == "__main__":
    main()
