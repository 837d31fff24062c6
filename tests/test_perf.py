"""`bench perf` keeps working (structure only: timings are not asserted in tests)."""

import json

import pytest

from bench.cli import main


def test_perf_smoke_profile_writes_every_row(tmp_path, capsys):
    out, rows_file = tmp_path / "perf.md", tmp_path / "perf.json"
    assert (
        main(
            [
                "perf",
                "--profile",
                "smoke",
                "--device",
                "cpu",
                "--workdir",
                str(tmp_path / "work"),
                "--out",
                str(out),
                "--json",
                str(rows_file),
            ]
        )
        == 0
    )
    table = out.read_text()
    assert table == capsys.readouterr().out
    rows = json.loads(rows_file.read_text())["rows"]
    names = [r["what"] for r in rows]
    assert names[:3] == [
        "encoder only",
        "extraction, centre view (decode + encode)",
        "extraction, 2 augmented views",
    ]
    for method in ("zero_shot", "linear_probe", "coop", "clip_adapter"):
        assert f"{method}: one 20-class 2-shot cell" in names
        assert f"paper grid, predicted: {method}" in names
    total = next(r for r in rows if r["what"] == "paper grid, predicted: total (660 cells)")
    parts = [r["value"] for r in rows if r["what"].startswith("paper grid, predicted: ") and r is not total]
    assert total["unit"] == "min" and total["value"] == pytest.approx(sum(parts)) and total["value"] > 0
    assert (
        "C=2: " in next(r for r in rows if r["what"] == "paper grid, predicted: coop")["note"]
    )  # two class counts
    for method in ("clip_lora", "maple"):  # the encoder-in-the-loop rows (tiny ViT, 4 classes)
        assert f"{method}: one 4-class 2-shot cell" in names
    for method in ("coop", "clip_adapter"):
        speedup = next(r for r in rows if r["what"].startswith(f"{method} speed-up"))
        assert speedup["unit"] == "x" and speedup["value"] > 0
    assert all(r["value"] > 0 for r in rows)


def test_every_profile_names_real_models_and_methods():
    import open_clip

    from bench.backbone import bundled_configs
    from bench.methods import method_registry
    from bench.tools.perf import PROFILES

    for name, profile in PROFILES.items():
        arch = profile.backbone.split("/")[0]
        assert arch in open_clip.list_models() or arch in bundled_configs(), name
        assert set(profile.methods) <= set(method_registry().names()), name
        assert set(profile.overrides) <= set(profile.methods), name
        if profile.encoder_in_loop:  # MaPLe needs a ViT
            vit = profile.encoder_in_loop[0].split("/")[0]
            assert vit in bundled_configs() or "ViT" in vit and vit in open_clip.list_models(), name


def test_adapter_baseline_encodes_all_prompts_every_step_in_fp32():
    """The official CustomCLIP.forward runs TextEncoder.forward (every class prompt, 77 tokens, fp32 after
    clip_model.float()) at every training step; the simulated baseline does the same work."""
    import torch

    from bench.tools.perf import adapter_baseline
    from tests.toy import clip_scaled_backbone

    backbone = clip_scaled_backbone()
    calls = []
    real = backbone.model.encode_text
    backbone.model.encode_text = lambda tokens: (
        calls.append((tokens.shape, torch.is_autocast_enabled())) or real(tokens)
    )
    params, logits_fn = adapter_baseline(backbone, ("cat", "dog", "car"), 100.0)
    features = torch.randn(4, backbone.embed_dim)
    for _ in range(2):
        logits_fn(features).sum().backward()
    assert calls == [(torch.Size([3, 77]), False)] * 2
    assert all(p.grad is not None for p in params)
