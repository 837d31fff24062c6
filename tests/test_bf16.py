"""The bf16 autocast path (the CUDA default) runs end to end, exercised on the CPU."""

import pytest
import torch

from bench.backbone import BackboneRef, load_backbone
from bench.results import load_results
from bench.runner import RunOptions, run_cells
from bench.spec import expand_grid


def test_bf16_encoders_stay_close_to_fp32(data_root):
    fp32 = load_backbone(BackboneRef.parse("bench-tiny/random"), torch.device("cpu"), "fp32")
    bf16 = load_backbone(BackboneRef.parse("bench-tiny/random"), torch.device("cpu"), "bf16")
    assert bf16.weights_sha256 == fp32.weights_sha256  # same weights, only the compute precision differs
    pixels = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    a, b = fp32.encode_images(pixels), bf16.encode_images(pixels)
    assert b.dtype == torch.float32 and not torch.equal(a, b)  # really computed in bf16
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.99
    tokens = fp32.tokenize(["a photo of a cat.", "a photo of a dog."])
    assert (
        torch.nn.functional.cosine_similarity(fp32.encode_text(tokens), bf16.encode_text(tokens)).min() > 0.99
    )


@pytest.mark.parametrize("method", ["coop", "clip_adapter", "linear_probe", "tip_adapter_f"])
def test_methods_train_and_score_under_bf16(method, run_options, tmp_path):
    options = RunOptions(**{**run_options.__dict__, "precision": "bf16", "results_root": tmp_path / "bf16"})
    specs = expand_grid(
        [method],
        ["synthetic"],
        [2],
        [1],
        ["bench-tiny/random"],
        overrides={method: (("epochs", 3),)} if method != "linear_probe" else None,
    )
    summary = run_cells(specs, options)
    assert summary.ran and not summary.failed
    (record,) = load_results(options.results_root)
    assert record.backbone.precision == "bf16" and 0 <= record.metrics.top1 <= 1


def test_precision_is_part_of_the_cell_identity(run_options):
    specs = expand_grid(["zero_shot"], ["synthetic"], [1], [1], ["bench-tiny/random"])
    assert len(run_cells(specs, run_options).ran) == 1
    bf16 = RunOptions(**{**run_options.__dict__, "precision": "bf16"})
    assert len(run_cells(specs, bf16).ran) == 1  # not resumed from the fp32 record
    assert len(run_cells(specs, bf16).skipped) == 1
    assert sorted(r.backbone.precision for r in load_results(run_options.results_root)) == ["bf16", "fp32"]
