"""The CUDA path (bf16 autocast, channels-last, device-side training): the same cells as on the CPU, within
noise. The ``cuda`` cases carry the ``gpu`` mark (deselected by default; ``pytest -m gpu`` where a GPU is,
as ``scripts/device_check.sh`` runs them); the ``cpu`` cases run everywhere and keep the checks honest."""

import pytest
import torch

from bench.cli import main
from bench.results import load_results

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
        ],
    ),
]
METHODS = ("zero_shot", "linear_probe", "coop", "clip_adapter")


def _run(tmp_path, device: str, name: str, *extra: str) -> dict:
    args = [
        "run",
        "--methods",
        ",".join(METHODS),
        "--shots",
        "4",
        "--seeds",
        "1,2",
        "--set",
        "coop.epochs=10",
        "--set",
        "clip_adapter.epochs=10",
        "--device",
        device,
        "--no-progress",
        *extra,
        "--data-root",
        str(tmp_path / "data"),
        "--cache-dir",
        str(tmp_path / f"cache-{name}"),
        "--results",
        str(tmp_path / name),
    ]
    assert main(args) == 0
    return {(r.spec.method, r.spec.seed): r for r in load_results(tmp_path / name)}


@pytest.mark.parametrize("device", DEVICES)
def test_cells_on_the_device_match_fp32_cpu_cells_within_noise(tmp_path, device):
    reference = _run(tmp_path, "cpu", "reference", "--precision", "fp32")
    cells = _run(tmp_path, device, "device", "--precision", "auto")
    assert cells.keys() == reference.keys() and len(cells) == 2 * len(METHODS)
    precision = "bf16" if device == "cuda" else "fp32"
    for key, record in cells.items():
        assert record.ok and record.backbone.precision == precision, key
        assert record.provenance.device.startswith(device), key
        if device == "cuda":
            assert record.memory["peak_device_bytes"] > 0, key
    for method in METHODS:  # mean over seeds; 96 test images, bf16 and another summation order
        ours = sum(cells[method, s].metrics.top1 for s in (1, 2)) / 2
        ref = sum(reference[method, s].metrics.top1 for s in (1, 2)) / 2
        assert abs(ours - ref) <= 0.1, (method, ours, ref)
    assert cells["zero_shot", 1].metrics.top1 == pytest.approx(
        reference["zero_shot", 1].metrics.top1, abs=0.05
    )


@pytest.mark.parametrize("device", DEVICES)
def test_coop_from_the_phrase_is_the_frozen_encoder_on_the_device(device):
    """CoOp's zero-epoch identity under the device's default precision (bf16 autocast on CUDA)."""
    import dataclasses

    from bench.backbone import BackboneRef, load_backbone
    from bench.features import encode_prompts
    from bench.methods.base import FeatureSet, FewShotData, FitContext
    from bench.methods.coop import Coop

    backbone = load_backbone(BackboneRef.parse("bench-tiny/random"), torch.device(device))
    names = ("cat", "dog", "red panda")
    labels = torch.arange(3)
    features = FeatureSet(torch.randn(1, 3, backbone.embed_dim), labels)
    data = FewShotData("toy", 1, names, {"coop": ("a photo of a {}.",)}, features, features)
    ctx = FitContext(
        backbone=backbone,
        device=torch.device(device),
        seed=1,
        text_features=lambda templates, classnames: encode_prompts(backbone, classnames, templates),
    )
    cfg = dataclasses.replace(Coop().default_config("toy", 1), ctx_init="a photo of a", epochs=0)
    classifier = Coop().fit(data, cfg, ctx)
    frozen = torch.nn.functional.normalize(encode_prompts(backbone, names, ("a photo of a {}.",))[0], dim=-1)
    learned = classifier.weights.float().cpu()
    assert torch.nn.functional.cosine_similarity(learned, frozen).min() > 0.999
