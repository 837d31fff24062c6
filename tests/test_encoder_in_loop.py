"""Encoder-in-the-loop training (issue 19): CLIP-LoRA, MaPLe, live augmentation for CoOp / CLIP-Adapter.

Identities that must hold exactly, on the tiny model and the synthetic images:
- CLIP-LoRA with B = 0 (its initialisation) is zero-shot CLIP: logits equal;
- MaPLe's injection with zero-length prompts is the frozen encoder;
- live views with augmentation off are the cached centre-view features;
and no autograd graph survives a training step, whatever the batch size and class count.
"""

from __future__ import annotations

import dataclasses
import json
import weakref

import pytest
import torch

from bench.backbone import BackboneRef, load_backbone
from bench.datasets import read_dataset
from bench.datasets.catalog import SYNTHETIC
from bench.errors import BenchError
from bench.features import ExtractOptions, FeatureCache, ImageFeatureKey
from bench.images import CENTER
from bench.methods import encoder_training
from bench.methods.base import FeatureSet, FewShotData, FitContext, ImageSource
from bench.methods.clip_lora import ClipLora
from bench.methods.maple import Maple, MaplePrompts
from bench.methods.zero_shot import ZeroShot
from bench.scoring import score
from bench.seeding import torch_generator
from tests.toy import direct_text_features

from .conftest import TINY

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def backbone():
    return load_backbone(BackboneRef.parse(TINY), CPU)


@pytest.fixture(scope="module")
def splits(data_root):
    return read_dataset(SYNTHETIC, data_root)


def _set(splits, backbone, split: str, per_class: int | None = None) -> FeatureSet:
    images = splits.split(split)
    keep = [
        i
        for i, label in enumerate(images.labels)
        if per_class is None or sum(1 for l2 in images.labels[:i] if l2 == label) < per_class
    ]
    paths, labels = tuple(images.paths[i] for i in keep), torch.tensor([images.labels[i] for i in keep])
    source = ImageSource(splits.image_root, paths, backbone.preprocessing)
    features = backbone.encode_images(torch.stack([_centre(splits, backbone, p) for p in paths]))
    return FeatureSet(features[None], labels, source)


def _centre(splits, backbone, path):
    from bench.images import center_view, load_rgb

    return center_view(load_rgb(splits.image_root / path), backbone.preprocessing)


def _data(splits, backbone, shots: int = 2) -> FewShotData:
    return FewShotData(
        "synthetic",
        shots,
        splits.classnames,
        SYNTHETIC.prompts,
        _set(splits, backbone, "train", shots),
        _set(splits, backbone, "val", 2),
    )


def _ctx(backbone, seed: int = 1) -> FitContext:
    return FitContext(backbone=backbone, device=CPU, seed=seed, text_features=direct_text_features(backbone))


def test_clip_lora_at_initialisation_is_zero_shot(splits, backbone):
    data = _data(splits, backbone)
    lora = ClipLora().fit(
        data, dataclasses.replace(ClipLora().default_config("synthetic", 2), n_iters=0), _ctx(backbone)
    )
    zero_shot = ZeroShot().fit(data, ZeroShot().default_config("synthetic", 2), _ctx(backbone))
    test = _set(splits, backbone, "test")
    with torch.no_grad():
        adapted = lora(encoder_training.encoded_set(lora.encode_images, test, CPU).center)
        frozen = zero_shot(test.center)
    assert torch.equal(adapted, frozen)
    assert all(
        torch.count_nonzero(m.B[s] if hasattr(m.B, "keys") else m.B) == 0
        for m in lora.adapters.adapters
        for s in getattr(m, "slots", [""])
        if s
    )


def test_clip_lora_with_trained_b_is_not_zero_shot(splits, backbone):
    """The identity above is not vacuous: after a few steps the adapted encoder's features move."""
    data = _data(splits, backbone)
    cfg = dataclasses.replace(ClipLora().default_config("synthetic", 2), n_iters=2, lr=1e-2)
    lora = ClipLora().fit(data, cfg, _ctx(backbone))
    test = _set(splits, backbone, "test")
    assert not torch.equal(
        encoder_training.encoded_set(lora.encode_images, test, CPU).features, test.features
    )


def test_fp16_switches_run_the_official_precision(splits, backbone, monkeypatch):
    """``precision=fp16``: CLIP-LoRA at B = 0 predicts as zero-shot under the same float16 autocast and trains
    through a GradScaler; MaPLe holds its layer-0 context and first coupling in float16 and trains them."""
    data = _data(splits, backbone)
    test = _set(splits, backbone, "test")
    base = ClipLora().default_config("synthetic", 2)
    lora = ClipLora().fit(data, dataclasses.replace(base, n_iters=0, precision="fp16"), _ctx(backbone))
    with torch.no_grad():
        features = encoder_training.encoded_set(lora.encode_images, test, CPU).center
        with torch.autocast("cpu", dtype=torch.float16):
            frozen = backbone.model.encode_image(_pixels(splits, backbone, test)).float()
    assert torch.equal(features, frozen) and not torch.equal(features, test.center)  # fp16, not fp32

    scaled = []
    real_scaler = torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler", lambda *a, **k: scaled.append(1) or real_scaler(*a, **k))
    trained = ClipLora().fit(data, dataclasses.replace(base, n_iters=2, precision="fp16"), _ctx(backbone))
    assert scaled and any(torch.count_nonzero(p) for n, p in trained.adapters.named_parameters() if "B" in n)

    cfg = dataclasses.replace(Maple.Config(), precision="fp16", epochs=2, lr=0.5)
    prompts = MaplePrompts(backbone, cfg, seed=1)
    assert prompts.ctx.dtype == prompts.proj.weight.dtype == torch.float16
    assert prompts.deep_text[0].dtype == torch.float32  # the deeper prompts stay fp32, as the official code
    maple = Maple().fit(data, cfg, _ctx(backbone))
    assert maple.adapters.ctx.dtype == torch.float16 and not torch.equal(maple.adapters.ctx, prompts.ctx)
    with pytest.raises(BenchError, match="maple.precision"):
        Maple().fit(data, dataclasses.replace(cfg, precision="bf16"), _ctx(backbone))


def test_maple_with_zero_length_prompts_is_the_frozen_encoder(splits, backbone):
    prompts = MaplePrompts(backbone, Maple.Config(n_ctx=0), seed=1)
    test = _set(splits, backbone, "test")
    with torch.no_grad():
        with prompts.installed(backbone.model):
            prompted = encoder_training.image_features(backbone, _pixels(splits, backbone, test))
        text = prompts.text_features(backbone, splits.classnames)
    assert torch.equal(prompted, test.center)
    frozen_text = backbone.encode_text(backbone.tokenize([f"a photo of a {c}." for c in splits.classnames]))
    assert torch.equal(text, frozen_text)


def test_maple_prompts_change_both_encoders(splits, backbone):
    prompts = MaplePrompts(backbone, Maple.Config(), seed=1)
    test = _set(splits, backbone, "test")
    with torch.no_grad(), prompts.installed(backbone.model):
        prompted = encoder_training.image_features(backbone, _pixels(splits, backbone, test))
    assert prompted.shape == test.center.shape and not torch.allclose(prompted, test.center)
    assert prompts.depth == 2  # the paper's depth 9, clipped to the tiny model's 2 layers


def test_maple_refuses_a_resnet():
    resnet = load_backbone(BackboneRef.parse("bench-tiny-rn/random"), CPU)
    with pytest.raises(BenchError, match="ViT"):
        MaplePrompts(resnet, Maple.Config(), seed=1)


def test_clip_lora_on_a_resnet_adapts_the_attention_pool(data_root):
    resnet = load_backbone(BackboneRef.parse("bench-tiny-rn/random"), CPU)
    splits = read_dataset(SYNTHETIC, data_root)
    data = _data(splits, resnet)
    cfg = dataclasses.replace(ClipLora().default_config("synthetic", 2), n_iters=0)
    lora = ClipLora().fit(data, cfg, _ctx(resnet))
    test = _set(splits, resnet, "test")
    assert torch.equal(encoder_training.encoded_set(lora.encode_images, test, CPU).features, test.features)


def _pixels(splits, backbone, data: FeatureSet) -> torch.Tensor:
    return torch.stack([_centre(splits, backbone, p) for p in data.images.paths])


def test_live_views_without_augmentation_are_the_cached_features(splits, backbone, tmp_path):
    train = splits.split("train")
    cache = FeatureCache(tmp_path)
    key = ImageFeatureKey.of(
        backbone,
        dataset="synthetic",
        dataset_version="1",
        split_sha256=splits.source_sha256,
        split="train",
        view=CENTER,
    )
    cached = cache.image_features(
        key, backbone, splits.image_root, train.paths, ExtractOptions(batch_size=128, progress=False)
    )
    source = ImageSource(splits.image_root, tuple(train.paths), backbone.preprocessing)
    live = encoder_training.live_features(
        backbone, source, encoder_training.live_view(seed=0, epoch=0, augment=False)
    )
    assert torch.equal(live.half().float(), cached[0])  # the cache stores float16
    augmented = encoder_training.live_features(backbone, source, encoder_training.live_view(seed=0, epoch=0))
    again = encoder_training.live_features(backbone, source, encoder_training.live_view(seed=0, epoch=0))
    next_epoch = encoder_training.live_features(backbone, source, encoder_training.live_view(seed=0, epoch=1))
    assert torch.equal(augmented, again) and not torch.equal(augmented, next_epoch)


@pytest.mark.parametrize("method", ["coop", "clip_adapter"])
def test_live_augmentation_with_zero_epochs_is_the_cached_path(method, splits, backbone):
    from bench.methods import method_registry

    impl = method_registry().get(method)()
    data = _data(splits, backbone)
    cached = dataclasses.replace(impl.default_config("synthetic", 2), epochs=0)
    live = dataclasses.replace(cached, augment="live")
    assert impl.needs(live).images and not impl.needs(cached).images
    test = _set(splits, backbone, "test")
    with torch.no_grad():
        assert torch.equal(
            impl.fit(data, live, _ctx(backbone))(test.center),
            impl.fit(data, cached, _ctx(backbone))(test.center),
        )


@pytest.mark.parametrize("method", ["coop", "clip_adapter"])
def test_live_augmentation_trains_and_differs_from_cached_views(method, splits, backbone):
    from bench.methods import method_registry

    impl = method_registry().get(method)()
    data = dataclasses.replace(
        _data(splits, backbone),
        train=dataclasses.replace(
            _set(splits, backbone, "train", 2),
            features=_set(splits, backbone, "train", 2).features.expand(2, -1, -1),
        ),
    )
    cached = dataclasses.replace(impl.default_config("synthetic", 2), epochs=2, train_views=2)
    live = dataclasses.replace(cached, augment="live")
    test = _set(splits, backbone, "test")
    with torch.no_grad():
        a = impl.fit(data, live, _ctx(backbone))(test.center)
        b = impl.fit(data, live, _ctx(backbone))(test.center)
        c = impl.fit(data, cached, _ctx(backbone))(test.center)
    assert torch.equal(a, b) and not torch.equal(a, c)


class _SavedTensors:
    """Counts the tensors autograd saved for backward that are still alive (their graph still exists)."""

    def __init__(self):
        self.live: weakref.WeakSet = weakref.WeakSet()
        self.bytes_after_step: list[int] = []
        self.peak_saved: list[int] = []
        self._saved = 0

    def pack(self, tensor):
        holder = _Holder(tensor)
        self.live.add(holder)
        self._saved += tensor.numel() * tensor.element_size()
        return holder

    @staticmethod
    def unpack(holder):
        return holder.tensor

    def after_step(self, step):
        self.bytes_after_step.append(sum(h.tensor.numel() * h.tensor.element_size() for h in self.live))
        self.peak_saved.append(self._saved)
        self._saved = 0


class _Holder:
    def __init__(self, tensor):
        self.tensor = tensor


@pytest.mark.parametrize("batch_size,n_classes", [(2, 2), (8, 8)])
def test_no_activation_survives_a_step(batch_size, n_classes, splits, backbone):
    """Memory stays bounded: after every step no tensor saved for backward is alive (a loop that kept
    ``loss`` or the logits would keep the whole graph, growing with steps, batch size and classes), and
    each step saves the same amount as the first."""
    from bench.methods.clip_lora import LoraModel

    classnames = splits.classnames[:n_classes]
    train = _set(splits, backbone, "train", 2)
    keep = train.labels < n_classes
    source, labels = train.images.subset(keep), train.labels[keep]
    lora = LoraModel(backbone.model, ClipLora.Config(), torch_generator(0))
    params = list(lora.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3)

    def loss_fn(pixels, y):
        text = lora.text_features(backbone, classnames)
        with lora.installed(backbone.model):
            image = encoder_training.image_features(backbone, pixels)
        return torch.nn.functional.cross_entropy(encoder_training.normalised_logits(100.0, image, text), y)

    saved = _SavedTensors()
    lora.train()
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
        encoder_training.train_steps(
            params,
            optimizer,
            loss_fn,
            source,
            labels,
            epochs=3,
            batch_size=batch_size,
            generator=torch_generator(0),
            seed=0,
            device=CPU,
            after_step=saved.after_step,
        )
    assert len(saved.bytes_after_step) >= 3
    assert set(saved.bytes_after_step) == {0}, saved.bytes_after_step
    assert saved.peak_saved[0] > 0 and max(saved.peak_saved) <= saved.peak_saved[0] * 1.01


def test_adapted_classifier_is_scored_on_its_own_features(splits, backbone):
    """The runner's scoring encodes test images through ``encode_images``; the cached features are not used."""
    data = _data(splits, backbone)
    cfg = dataclasses.replace(ClipLora().default_config("synthetic", 2), n_iters=0)
    lora = ClipLora().fit(data, cfg, _ctx(backbone))
    test = _set(splits, backbone, "test")
    poisoned = FeatureSet(torch.full_like(test.features, float("nan")), test.labels, test.images)
    assert score(lora, poisoned, CPU) == score(
        ZeroShot().fit(data, ZeroShot().default_config("synthetic", 2), _ctx(backbone)), test, CPU
    )
    with pytest.raises(BenchError, match="no images"):
        score(lora, FeatureSet(test.features, test.labels), CPU)


@pytest.mark.parametrize("name", ["clip_lora", "maple"])
def test_learns_the_synthetic_images(name, splits, backbone):
    """A few epochs on 4-shot colour/pattern images beat the random-init zero-shot classifier."""
    from bench.methods import method_registry

    impl = method_registry().get(name)()
    data = _data(splits, backbone, shots=4)
    # short schedules at high learning rates: the tiny model is random, its prompts and adapters start far off
    short = {"clip_lora": {"n_iters": 15, "lr": 5e-3}, "maple": {"epochs": 6, "lr": 0.5}}[name]
    margin = {"clip_lora": 0.1, "maple": 0.04}[name]  # prompts alone move a random encoder less than LoRA
    cfg = dataclasses.replace(impl.default_config("synthetic", 4), **short)
    classifier = impl.fit(data, cfg, _ctx(backbone))
    test = _set(splits, backbone, "test")
    zero_shot = ZeroShot().fit(data, ZeroShot().default_config("synthetic", 4), _ctx(backbone))
    assert score(classifier, test, CPU)["top1"] > score(zero_shot, test, CPU)["top1"] + margin


@pytest.mark.parametrize("name", ["clip_lora", "maple"])
def test_through_the_runner_base_to_new_and_tuning(name, run_options):
    """Both methods in an ordinary grid: few-shot, base-to-new and ``--tune val`` (two tiny trials)."""
    from bench.runner import Session, run_cells
    from bench.spec import expand_grid

    short = {"clip_lora": (("n_iters", 1),), "maple": (("epochs", 1),)}[name]
    session = Session(run_options)
    specs = (
        expand_grid([name], ["synthetic"], [2], [1], [TINY], overrides={name: short})
        + expand_grid([name], ["synthetic"], [2], [1], [TINY], overrides={name: short}, protocol="base2new")
        + expand_grid([name], ["synthetic"], [2], [1], [TINY], overrides={name: short}, tune="val", trials=2)
    )
    summary = run_cells(specs, run_options, session)
    assert not summary.failed and len(summary.ran) == 3, summary
    records = [json.loads(p.read_text()) for p in sorted(run_options.results_root.rglob(f"{name}/*.json"))]
    assert {r["spec"]["protocol"] for r in records} == {"fewshot", "base2new"}
    assert {r["tuning"]["mode"] for r in records} == {"none", "val"}
    b2n = next(r for r in records if r["spec"]["protocol"] == "base2new")
    assert b2n["metrics"]["new_top1"] is not None and b2n["status"] == "ok"
