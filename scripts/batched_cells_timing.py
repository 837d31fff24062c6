"""A 3-seed cell of the demo's size (10 classes x 16 shots, 10 views, 64-d features, bench-tiny text tower):
one-at-a-time fits against the method's fit_many, interleaved in one process; medians and their ratio.

    PYTHONPATH=. python scripts/batched_cells_timing.py --method clip_adapter          # 200 epochs
    PYTHONPATH=. python scripts/batched_cells_timing.py --method coop --epochs 20      # per-epoch cost is constant

``--trials N``: instead, one tuned CLIP-Adapter cell of that size (seed 1, scored on its few-shot val split)
filling a fresh N-trial study through ``bench.tuning.tune`` with ``--trial-batch`` 1 and each of
``--trial-batches`` (default 4,8), interleaved; medians and their ratios to batch 1:

    PYTHONPATH=. python scripts/batched_cells_timing.py --trials 20 --reps 3
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

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
    parser.add_argument("--trials", type=int, default=0, help="time a tuned CLIP-Adapter cell of N trials")
    parser.add_argument("--trial-batches", default="4,8", help="with --trials: the batch sizes against 1")
    parser.add_argument(
        "--no-pruning",
        action="store_true",
        help="with --trials: the pruner never prunes (training cost alone)",
    )
    args = parser.parse_args()
    if args.trials:
        time_trials(args)
        return
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


def time_trials(args: argparse.Namespace) -> None:
    from bench import tuning
    from bench.tuning import Objective, StudyRef, tune

    if args.no_pruning:
        tuning.PRUNER_STARTUP_TRIALS = 10**9  # read by bench.tuning._pruner at each study

    names = tuple(f"c{i}" for i in range(10))
    data = clustered_data(names, 16, 10, noise=0.8, seed=1, dim=DIM)
    cfg = ClipAdapter().default_config("fashion_mnist_fewshot", 16)
    if args.epochs is not None:
        cfg = dataclasses.replace(cfg, epochs=args.epochs)
    ctx = toy_context(clip_scaled_backbone(), seed=1)

    def val_top1(classifier) -> float:
        with torch.no_grad():
            return float((classifier(data.val.center).argmax(1) == data.val.labels).double().mean())

    ClipAdapter().fit(data, dataclasses.replace(cfg, epochs=1), ctx)  # warm-up: text features, thread pools
    batches = [1, *(int(b) for b in args.trial_batches.split(","))]
    say(
        f"clip_adapter tuned: {args.trials} trials, 10 classes x 16 shots, 10 views, {cfg.epochs} epochs, "
        f"trial batches {batches}{', no pruning' if args.no_pruning else ''}; load {os.getloadavg()}"
    )
    times: dict[int, list[float]] = {b: [] for b in batches}
    with tempfile.TemporaryDirectory() as folder:
        storage = f"sqlite:///{Path(folder) / 'studies.sqlite3'}"
        for rep in range(args.reps):
            line = []
            for b in batches:
                ref = StudyRef(f"rep{rep}-b{b}", storage, "val", args.trials, seed=1, trial_batch=b)
                (_, record), dt = timed(
                    lambda ref=ref: tune(ClipAdapter(), data, cfg, ctx, ref, Objective("val", val_top1))
                )
                times[b].append(dt)
                line.append(
                    f"batch {b} {dt:.2f} s (pruned {record['pruned']}, best val {record['best_val_top1']:.3f})"
                )
            say(f"rep {rep + 1}: {'; '.join(line)}; load {os.getloadavg()}")
    median = {b: statistics.median(v) for b, v in times.items()}
    say(
        "medians: "
        + ", ".join(
            f"batch {b} {median[b]:.2f} s"
            + (
                ""
                if b == 1
                else f" ({median[1] / median[b]:.2f}x, per rep "
                f"{[round(s / t, 2) for s, t in zip(times[1], times[b], strict=True)]})"
            )
            for b in batches
        )
    )


if __name__ == "__main__":
    main()
