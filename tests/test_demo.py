"""bench demo: source choice, the method list, the pretrained demo CLIP, and the command end to end."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from bench.backbone import BackboneRef, Preprocessing, load_backbone
from bench.datasets.demo_data import FASHION_MNIST_FILES, load_source
from bench.errors import BenchError
from bench.images import center_view
from bench.seeding import torch_generator
from bench.tools.demo import choose_source
from bench.tools.demo_clip import (
    DEMO_ARCH,
    contrastive_loss,
    ensure_demo_clip,
    model_inputs,
    normalise,
    random_crops,
    recipe_for,
)


def test_auto_source_falls_back_to_digits_with_a_notice(tmp_path, monkeypatch):
    for name in FASHION_MNIST_FILES:
        (tmp_path / name).write_bytes(b"")
    monkeypatch.setenv("BENCH_FASHION_MNIST_DIR", str(tmp_path))
    assert choose_source("auto") == ("fashion_mnist", None)
    monkeypatch.setenv("BENCH_FASHION_MNIST_DIR", str(tmp_path / "absent"))
    source, notice = choose_source("auto")
    assert source == "digits" and "falling back to scikit-learn digits" in notice and "absent" in notice
    assert choose_source("fashion_mnist") == ("fashion_mnist", None)
    with pytest.raises(BenchError, match="apt-get install dataset-fashion-mnist"):
        load_source("fashion_mnist")


def test_bad_demo_arguments_fail_before_pretraining(tmp_path, capsys):
    from bench.cli import main

    base = [
        "demo",
        "--source",
        "digits",
        "--no-progress",
        "--data-root",
        str(tmp_path / "data"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--results",
        str(tmp_path / "results"),
    ]
    assert main([*base, "--methods", "zero_shot,clip_adaptor"]) == 2
    assert "unknown method 'clip_adaptor'. Did you mean: clip_adapter" in capsys.readouterr().err
    assert main([*base, "--steps", "0"]) == 2
    assert "--steps: --steps 0: pretraining needs at least one step" in capsys.readouterr().err
    (tmp_path / "afile").write_text("")
    assert main([*base[:-4], "--cache-dir", str(tmp_path / "afile"), "--results", str(tmp_path / "r")]) == 2
    assert "cannot write the cache folder" in capsys.readouterr().err
    assert not (tmp_path / "cache" / "demo_clip").exists()  # nothing was pretrained


@pytest.mark.parametrize("side", [8, 28])
def test_pretraining_sees_the_images_as_the_harness_encodes_them(side):
    prep = Preprocessing(image_size=28)
    images = np.random.default_rng(side).integers(0, 256, (3, side, side)).astype(np.uint8)
    ours = normalise(model_inputs(images, prep), prep)
    harness = torch.stack([center_view(Image.fromarray(im).convert("RGB"), prep) for im in images])
    assert torch.allclose(ours, harness, atol=1e-6)


def test_random_crops_are_seeded_crops_and_flips():
    images = torch.randint(0, 256, (6, 28, 28), dtype=torch.uint8)
    whole = random_crops(images, torch_generator(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    for crop, image in zip(whole, images.float(), strict=True):  # the whole image, maybe flipped
        assert torch.equal(crop, image) or torch.equal(crop, image.flip(-1))
    small = random_crops(images, torch_generator(1), scale=(0.1, 0.1))
    assert small.shape == (6, 28, 28) and not torch.equal(small, images.float())
    assert torch.equal(small, random_crops(images, torch_generator(1), scale=(0.1, 0.1)))


def test_contrastive_loss_is_clips_loss_and_counts_same_class_pairs_as_positives():
    image, text = F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    scale = torch.tensor(10.0)
    logits = scale * image @ text.t()
    clip = (F.cross_entropy(logits, torch.arange(6)) + F.cross_entropy(logits.t(), torch.arange(6))) / 2
    assert torch.allclose(contrastive_loss(image, text, torch.arange(6), scale), clip)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    aligned = F.normalize(F.one_hot(labels, 8).float(), dim=-1)
    assert contrastive_loss(aligned, aligned, labels, scale) < contrastive_loss(image, text, labels, scale)


def test_demo_clip_is_cached_by_recipe_and_loads_as_a_backbone(tmp_path):
    recipe = dataclasses.replace(recipe_for("digits", steps=2), batch_size=16)
    path, log = ensure_demo_clip(recipe, tmp_path / "cache", torch.device("cpu"), progress=False)
    assert log["n_images"] == (901 - 5 * 90) + 5 * 3  # digits 0-4: all train images; 5-9: three each
    assert 0 <= log["zero_shot_top1_common_classes"] <= 1
    assert ensure_demo_clip(recipe, tmp_path / "cache", torch.device("cpu"), progress=False) == (path, None)
    other, _ = ensure_demo_clip(
        dataclasses.replace(recipe, steps=3), tmp_path / "cache", torch.device("cpu"), progress=False
    )
    assert other != path
    backbone = load_backbone(BackboneRef.parse(f"{DEMO_ARCH}/{path}"), torch.device("cpu"))
    assert backbone.checkpoint_meta["recipe"]["steps"] == 2
    assert backbone.checkpoint_meta["source"]["target_classes"] == [5, 6, 7, 8, 9]
    assert backbone.checkpoint_meta["source"]["rare_images"] == 3
    assert (
        backbone.context_length >= 1 + 16 + 5 + 2
    )  # room for CoOp's 16 context tokens and a long class name
    assert (
        backbone.logit_scale == pytest.approx(100.0) and log["logit_scale"] == 100.0
    )  # CLIP's trained value
    assert log["logit_scale_learned"] < 20  # what 2 steps learned, kept in the log
    random_init = load_backbone(BackboneRef.parse(f"{DEMO_ARCH}/random"), torch.device("cpu"))
    assert backbone.weights_sha256 != random_init.weights_sha256
    # the same recipe trains the same weights (on the same machine)
    again, _ = ensure_demo_clip(recipe, tmp_path / "cache2", torch.device("cpu"), progress=False)
    first, second = (torch.load(p, weights_only=True)["state_dict"] for p in (path, again))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.slow
def test_reduced_demo_runs_end_to_end_then_resumes(tmp_path, capsys):
    """`bench demo` on digits with a short pretraining and one seed: the path the README's command takes."""
    from bench.cli import main
    from bench.results import load_results

    args = [
        "demo",
        "--source",
        "digits",
        "--steps",
        "150",
        "--shots",
        "1,16",
        "--seeds",
        "1",
        "--device",
        "cpu",
        "--no-progress",
        "--data-root",
        str(tmp_path / "data"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--results",
        str(tmp_path / "results"),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert (
        "demo CLIP: pretrained on digits captions, five, six, seven, eight, nine rare (3 images each), 150 steps"
        in out
    )
    assert "on images pretraining never saw: five, six, seven, eight, nine" in out
    assert "## digits_fewshot: top-1 (%) on its 450 test images" in out
    records = load_results(tmp_path / "results")
    expected = ("zero_shot", "linear_probe", "coop", "clip_adapter")
    assert {r.spec.method for r in records} == set(expected) and len(records) == 2 * len(expected)
    assert all(r.ok and r.spec.dataset == "digits_fewshot" for r in records)
    assert all(r.backbone.checkpoint_meta["recipe"]["steps"] == 150 for r in records)
    top1 = {(r.spec.method, r.spec.shots): r.metrics.top1 for r in records}
    assert top1["linear_probe", 16] > top1["linear_probe", 1] + 0.1  # the curve rises with shots
    assert top1["linear_probe", 16] > top1["zero_shot", 16]  # 16 shots of a rare class beat its name
    lp_row = next(line for line in out.splitlines() if line.startswith("| linear_probe"))
    assert lp_row.split("|")[2:4] == [f" {100 * top1['linear_probe', k]:.1f} ± 0.0 " for k in (1, 16)]
    assert main(args) == 0  # second run: the cached CLIP, every cell resumed
    out = capsys.readouterr().out
    assert "; cached: " in out and f"0 cells run, {len(records)} already done" in out


def _table(text: str) -> dict[str, list[float]]:
    """method -> the five means of a demo table (``| method | 50.9 ± 0.0 | ...``)."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and "±" in cells[1]:
            rows[cells[0]] = [float(c.split("±")[0]) for c in cells[1:]]
    return rows


@pytest.mark.slow
@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="needs dataset-fashion-mnist"
)
def test_the_readme_demo_table_is_what_bench_demo_prints(tmp_path, capsys):
    """The README's main command, in full: its printed table is the README's to the digit when the demo CLIP
    came out bit-identical (the README's weights sha256: same CPU arithmetic), and within 2 points per cell
    otherwise (another CPU type or thread count sums floats in another order)."""
    import re

    from bench.cli import main

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("## The demo")[1].split("```text")[1].split("```")[0]
    expected = _table(block)
    assert set(expected) == {"zero_shot", "linear_probe", "coop", "clip_adapter"}
    assert (
        main(
            [
                "demo",
                "--device",
                "cpu",
                "--no-progress",
                "--data-root",
                str(tmp_path / "data"),
                "--cache-dir",
                str(tmp_path / "cache"),
                "--results",
                str(tmp_path / "results"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    printed = _table(out)
    assert printed.keys() == expected.keys()
    sha = re.compile(r"weights sha256 `([0-9a-f]{12})`")
    same_weights = sha.search(out).group(1) == sha.search(block).group(1)
    for method, means in expected.items():
        assert printed[method] == (means if same_weights else pytest.approx(means, abs=2.0)), method
