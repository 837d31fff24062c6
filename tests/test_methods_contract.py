"""Every registered method honours the Method contract (timm-style registry-wide test)."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from bench.features import FeatureCache
from bench.methods import method_registry
from bench.methods.base import FeatureSet, FewShotData, FitContext, Method, Needs
from tests.toy import clip_scaled_backbone

N_CLASSES, SUPPORT_PER_CLASS, TEST_PER_CLASS = 5, 64, 40
PROMPTS = {"coop": ("a photo of a {}.",), "ensemble": ("a photo of a {}.", "a drawing of a {}.")}
CLASSNAMES = tuple(f"class {i}" for i in range(N_CLASSES))


@pytest.fixture(scope="module")
def backbone():
    """The tiny random model with CLIP's trained temperature (logit scale 100), as real weights have."""
    return clip_scaled_backbone()


def _image_data(backbone, data_root) -> FewShotData:
    """The synthetic dataset's images of the first N_CLASSES classes under the toy class names, for methods
    that train on pixels (``Needs(images=True)``); their features are the centre view's."""
    from bench.datasets import read_dataset
    from bench.datasets.catalog import SYNTHETIC
    from bench.images import center_view, load_rgb
    from bench.methods.base import ImageSource

    splits = read_dataset(SYNTHETIC, data_root)

    def subset(split, per_class):
        images = splits.split(split)
        keep = [
            i
            for i, label in enumerate(images.labels)
            if label < N_CLASSES and images.labels[:i].count(label) < per_class
        ]
        paths = tuple(images.paths[i] for i in keep)
        pixels = torch.stack(
            [center_view(load_rgb(splits.image_root / p), backbone.preprocessing) for p in paths]
        )
        return FeatureSet(
            backbone.encode_images(pixels)[None],
            torch.tensor([images.labels[i] for i in keep]),
            ImageSource(splits.image_root, paths, backbone.preprocessing),
        )

    return FewShotData("toy", 2, CLASSNAMES, PROMPTS, subset("train", 2), subset("val", 2))


@pytest.fixture(scope="module")
def task(backbone, tmp_path_factory, data_root):
    """A learnable task on which zero-shot is near chance: class means orthogonal-ish to the text embeddings."""
    cache = FeatureCache(tmp_path_factory.mktemp("text"))
    text = lambda templates, classnames: cache.text_features(backbone, classnames, templates)  # noqa: E731
    generator = torch.Generator().manual_seed(0)
    dim = backbone.embed_dim
    means = F.normalize(torch.randn(N_CLASSES, dim, generator=generator), dim=-1) * 3

    def draw(per_class, views):
        labels = torch.arange(N_CLASSES).repeat_interleave(per_class)
        return FeatureSet(
            means[labels][None] + 0.8 * torch.randn(views, len(labels), dim, generator=generator), labels
        )

    def data(views, images=False):
        if images:  # encoder-in-the-loop methods (CLIP-LoRA, MaPLe, live augmentation) train on pixels
            return _image_data(backbone, data_root)
        g_state = generator.get_state()
        out = FewShotData("toy", 16, CLASSNAMES, PROMPTS, draw(SUPPORT_PER_CLASS, max(views, 1)), draw(4, 1))
        generator.set_state(g_state)
        return out

    return data, draw(TEST_PER_CLASS, 1), text


DETERMINISTIC_BY_DESIGN = {
    "linear_probe",
    "lp_pp",
}  # full-batch solvers from a data-driven start: nothing to seed
SHORT_EPOCHS = 3  # for tests that check shapes, determinism and transfer, not what training reaches
SHORT_ITERS = 1  # the same for methods counting iterations per shot (CLIP-LoRA)


def _fit(name, backbone, task, seed=1, short=False):
    make_data, _, text = task
    method = method_registry().get(name)()
    cfg = method.default_config("toy", 16)
    if short and hasattr(cfg, "epochs"):
        cfg = dataclasses.replace(cfg, epochs=SHORT_EPOCHS)
    if short and hasattr(cfg, "n_iters"):
        cfg = dataclasses.replace(cfg, n_iters=SHORT_ITERS)
    ctx = FitContext(backbone=backbone, device=torch.device("cpu"), seed=seed, text_features=text)
    needs = method.needs(cfg)
    return method, cfg, method.fit(make_data(needs.train_views, needs.images), cfg, ctx)


@pytest.mark.parametrize("name", method_registry().names())
def test_method_contract(name, backbone, task):
    method, cfg, classifier = _fit(name, backbone, task, short=True)
    assert isinstance(method, Method)
    assert isinstance(method.needs(cfg), Needs)
    assert dataclasses.is_dataclass(cfg) and isinstance(cfg, method.Config)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(cfg, dataclasses.fields(cfg)[0].name, None)
    json.dumps(dataclasses.asdict(cfg), allow_nan=False)
    test = task[1]
    with torch.no_grad():
        logits = classifier(test.center)
    assert logits.shape == (N_CLASSES * TEST_PER_CLASS, N_CLASSES)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", method_registry().names())
def test_method_is_deterministic_under_a_seed(name, backbone, task):
    test = task[1].center
    with torch.no_grad():
        first = _fit(name, backbone, task, seed=7, short=True)[2](test)
        second = _fit(name, backbone, task, seed=7, short=True)[2](test)
        other_seed = _fit(name, backbone, task, seed=8, short=True)[2](test)
    assert torch.equal(first, second)
    method = method_registry().get(name)
    if method.trainable and name not in DETERMINISTIC_BY_DESIGN:
        assert not torch.equal(first, other_seed), "the seed must reach initialisation or batch order"


# Paper defaults that by design stay closer to zero-shot on this task; they must still beat it by 10 points.
# Their identities with CoOp / zero-shot are tested in tests/test_new_methods_a.py.
SLOW_BY_DESIGN = {
    "kgcoop": "λ = 8 holds the prompts near the hand-crafted ones, which are near chance here; batch 128 gives "
    "200 steps",
    "taskres": "batch 256 covers the 320 support images: one Adam step per epoch, 200 steps, at α = 0.5",
}


ENCODER_IN_LOOP = {
    n
    for n in method_registry().names()
    if method_registry().get(n)().needs(method_registry().get(n)().default_config("toy", 16)).images
}


@pytest.mark.parametrize(
    "name",
    [
        n
        for n in method_registry().names()
        if (method_registry().get(n).trainable or n == "tip_adapter") and n not in ENCODER_IN_LOOP
    ],
)  # learning on images: tests/test_encoder_in_loop.py
def test_trainable_method_learns_the_task(name, backbone, task):
    """At the paper defaults (training-free Tip-Adapter too: its cache is the support set)."""
    test = task[1]
    with torch.no_grad():
        zero_shot = (
            (_fit("zero_shot", backbone, task)[2](test.center).argmax(1) == test.labels).float().mean()
        )
        accuracy = (_fit(name, backbone, task)[2](test.center).argmax(1) == test.labels).float().mean()
    assert zero_shot < 0.4  # the task really needs the support set (chance is 0.2)
    if name in SLOW_BY_DESIGN:
        assert accuracy > zero_shot + 0.1, f"{name} reached {accuracy:.2f} ({SLOW_BY_DESIGN[name]})"
        return
    assert accuracy > 0.6, f"{name} reached {accuracy:.2f}"


class _LowTrial:
    """A stand-in optuna trial that answers every suggestion with its lower bound."""

    def __init__(self):
        self.asked = []

    def suggest_float(self, name, low, high, log=False):
        assert low <= high
        self.asked.append(name)
        return low

    def suggest_int(self, name, low, high, **kwargs):
        self.asked.append(name)
        return low

    def suggest_categorical(self, name, choices):
        self.asked.append(name)
        return choices[0]


@pytest.mark.parametrize(
    "name", [n for n in method_registry().names() if hasattr(method_registry().get(n), "search_space")]
)
def test_search_space_overrides_are_config_fields(name):
    from bench.spec import apply_overrides

    method = method_registry().get(name)()
    trial = _LowTrial()
    default = method.default_config("dtd", 4)
    space = method.search_space(trial, "dtd", 4, default)
    assert space and set(trial.asked) <= set(space)
    cfg = apply_overrides(default, space.items(), method=name)  # types and names check
    assert all(getattr(cfg, key) == value for key, value in space.items())


@pytest.mark.parametrize("name", method_registry().names())
def test_fit_never_reads_the_test_split(name, run_options, monkeypatch):
    """Through the runner: while ``fit`` runs, only train and val features are read."""
    from bench.runner import Session, run_cells
    from bench.spec import expand_grid

    from .conftest import TINY

    session = Session(run_options)
    cls = method_registry().get(name)
    fitting, requested = [False], []
    original_fit, original_features = cls.fit, session.cache.image_features

    def spy_fit(self, *args, **kwargs):
        fitting[0] = True
        try:
            return original_fit(self, *args, **kwargs)
        finally:
            fitting[0] = False

    def spy_features(key, *args, **kwargs):
        requested.append((key.split, fitting[0]))
        return original_features(key, *args, **kwargs)

    monkeypatch.setattr(cls, "fit", spy_fit)
    session.cache.image_features = spy_features
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    overrides = (
        {name: (("epochs", SHORT_EPOCHS),)}
        if "epochs" in fields
        else {name: (("n_iters", SHORT_ITERS),)}
        if "n_iters" in fields
        else {}
    )
    summary = run_cells(
        expand_grid([name], ["synthetic"], [2], [1], [TINY], overrides=overrides), run_options, session
    )
    assert not summary.failed, summary.failed
    assert ("test", True) not in requested and ("test", False) in requested


@pytest.mark.parametrize("name", method_registry().names())
def test_class_name_classifiers_transfer_to_new_classes(name, backbone, task):
    _, _, classifier = _fit(name, backbone, task, short=True)
    if not hasattr(classifier, "for_classes"):
        pytest.skip(f"{name} is tied to its training labels")
    ctx = FitContext(backbone=backbone, device=torch.device("cpu"), seed=1, text_features=task[2])
    new = classifier.for_classes(("new a", "new b", "new c"), ctx)
    with torch.no_grad():
        assert new(task[1].center).shape == (N_CLASSES * TEST_PER_CLASS, 3)
        again = new.for_classes(CLASSNAMES, ctx)(task[1].center)
        torch.testing.assert_close(again, classifier(task[1].center))  # same parameters, same label space


def test_clip_adapter_with_zero_ratio_equals_zero_shot(backbone, task):
    from bench.methods.clip_adapter import ClipAdapter

    make_data, test, text = task
    ctx = FitContext(backbone=backbone, device=torch.device("cpu"), seed=1, text_features=text)
    method = ClipAdapter()
    cfg = dataclasses.replace(method.default_config("toy", 16), alpha=0.0, epochs=2)
    adapter = method.fit(make_data(cfg.train_views), cfg, ctx)
    zero_shot = _fit("zero_shot", backbone, task)[2]
    with torch.no_grad():
        assert torch.equal(adapter(test.center), zero_shot(test.center))
