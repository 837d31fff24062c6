"""``bench perf`` rows for the encoder-in-the-loop methods (CLIP-LoRA, MaPLe): one 16-shot cell each.

A cell is timed over its first ``timed_steps`` optimiser steps and extrapolated to its whole schedule
(the per-step work is constant), with peak memory (CUDA: ``max_memory_allocated``; CPU: the process's
peak RSS). Each row's note compares our per-step work with the official code's: the same encoders run
forward and backward in both; what differs is stated (precision, MaPLe's truncated text length).

``bench perf`` adds these rows to every profile with ``encoder_in_loop`` set
(:func:`bench.tools.perf.encoder_in_loop_rows`). Run alone: ``python -m bench.tools.perf_encoder --profile
cpu|gpu`` (the same profiles' settings).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.backbone import Backbone, BackboneRef, load_backbone, resolve_device
from bench.datasets.spec import LabeledImages
from bench.methods.base import FeatureSet, FewShotData, FitContext, ImageSource
from bench.methods.clip_lora import ClipLora
from bench.methods.maple import Maple
from bench.provenance import peak_host_rss_bytes


def _cell(root: Path, support: LabeledImages, backbone: Backbone, n_classes: int, shots: int) -> FewShotData:
    source = ImageSource(root, tuple(support.paths), backbone.preprocessing)
    labels = torch.tensor(support.labels)
    dummy = torch.zeros(
        1, len(labels), backbone.embed_dim
    )  # the centre features are not read by these methods
    train = FeatureSet(dummy, labels, source)
    val_keep = torch.arange(len(labels)) % shots < 2
    val = FeatureSet(dummy[:, val_keep], labels[val_keep], source.subset(val_keep))
    names = tuple(f"class {i}" for i in range(n_classes))
    return FewShotData("perf", shots, names, {"coop": ("a photo of a {}.",)}, train, val)


def _timed(method, cfg, data: FewShotData, ctx: FitContext) -> tuple[float, int | None]:
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
        torch.cuda.reset_peak_memory_stats(ctx.device)
    start = time.perf_counter()
    method.fit(data, cfg, ctx)
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
        return time.perf_counter() - start, torch.cuda.max_memory_allocated(ctx.device)
    return time.perf_counter() - start, peak_host_rss_bytes()


def encoder_rows(
    backbone: Backbone, root: Path, support: LabeledImages, n_classes: int, shots: int, timed_steps: int
) -> list[dict]:
    """Rows ``{what, value, unit, note}`` for one ``n_classes`` x ``shots`` cell of CLIP-LoRA and of MaPLe."""
    data = _cell(root, support, backbone, n_classes, shots)
    ctx = FitContext(backbone=backbone, device=backbone.device, seed=1, text_features=lambda t, c: None)
    n, rows = len(support), []
    memory = "peak device" if backbone.device.type == "cuda" else "peak process RSS"
    # CLIP-LoRA: 500 x K iterations of batch 32; time ceil(timed/K) x K of them (n_iters is per shot)
    lora_cfg = ClipLora().default_config("perf", shots)
    per_shot = max(1, timed_steps // shots)
    seconds, peak = _timed(ClipLora(), dataclasses.replace(lora_cfg, n_iters=per_shot), data, ctx)
    steps_run, steps_all = per_shot * shots, lora_cfg.n_iters * shots
    rows.append(
        {
            "what": f"clip_lora: one {n_classes}-class {shots}-shot cell",
            "value": seconds * steps_all / steps_run,
            "unit": "s",
            "note": f"{steps_all} iterations ({steps_run} timed, {1e3 * seconds / steps_run:.0f} ms "
            f"per step), {memory} {peak / 2**20:.0f} MiB"
            if peak
            else "",
        }
    )
    rows.append(
        {
            "what": "clip_lora per-step work vs official lora.py",
            "value": 1.0,
            "unit": "x",
            "note": f"the same: text encoder over {n_classes} prompts + image encoder over 32 crops, forward "
            "and backward through the adapters; official fp16 autocast + GradScaler, ours bf16 (CUDA) / fp32",
        }
    )
    maple_cfg = Maple().default_config("perf", shots)
    per_epoch = n // maple_cfg.batch_size
    epochs = max(1, round(timed_steps / per_epoch)) if per_epoch else 1
    seconds, peak = _timed(Maple(), dataclasses.replace(maple_cfg, epochs=epochs), data, ctx)
    rows.append(
        {
            "what": f"maple: one {n_classes}-class {shots}-shot cell",
            "value": seconds * maple_cfg.epochs / epochs,
            "unit": "s",
            "note": f"{maple_cfg.epochs} epochs x {per_epoch} steps ({epochs} epoch(s) timed, "
            f"{1e3 * seconds / max(epochs * per_epoch, 1):.0f} ms per step), {memory} {peak / 2**20:.0f} MiB"
            if peak
            else "",
        }
    )
    rows.append(
        {
            "what": "maple per-step work vs official trainers/maple.py",
            "value": 1.0,
            "unit": "x",
            "note": f"the same encoders forward and backward (text over {n_classes} prompts, image over 4 crops); "
            "ours runs the text transformer only up to the longest EOT (the official all 77 positions)",
        }
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    from bench.tools.perf import PROFILES, make_jpegs

    names = [name for name, profile in PROFILES.items() if profile.encoder_in_loop]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="auto", choices=("auto", *names))
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    name = args.profile if args.profile != "auto" else ("gpu" if device.type == "cuda" else "cpu")
    arch, n_classes, timed = PROFILES[name].encoder_in_loop
    shots = PROFILES[name].shots
    backbone = load_backbone(BackboneRef.parse(arch), device)
    with tempfile.TemporaryDirectory() as tmp:
        support = make_jpegs(Path(tmp), n_classes, shots)
        rows = encoder_rows(backbone, Path(tmp), support, n_classes, shots, timed)
    lines = [
        f"({name}: {arch}, {device}, {backbone.precision})",
        "| measurement | value | unit | note |",
        "|---|---:|---|---|",
    ]
    lines += [f"| {row['what']} | {row['value']:,.1f} | {row['unit']} | {row['note']} |" for row in rows]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
