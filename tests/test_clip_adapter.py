"""CLIP-Adapter's branches and per-dataset ratios, and the hypernetwork variant."""

import dataclasses

import pytest
import torch

from bench.errors import BenchError
from bench.methods.clip_adapter import ClipAdapter
from bench.methods.clip_adapter_hyper import ClipAdapterHyper
from bench.methods.zero_shot import ZeroShot
from tests.toy import clip_scaled_backbone, clustered_data, toy_context

NAMES = tuple(f"class {i}" for i in range(5))
PROMPTS = {"coop": ("a photo of a {}.",), "ensemble": ("a photo of a {}.", "a drawing of a {}.")}


@pytest.fixture(scope="module")
def backbone():
    return clip_scaled_backbone()


@pytest.fixture(scope="module")
def ctx(backbone):
    return toy_context(backbone, seed=3)


@pytest.fixture(scope="module")
def data():
    return clustered_data(NAMES, 16, 10, noise=0.8, prompts=PROMPTS)


def test_residual_ratio_defaults_follow_the_paper_by_dataset():
    method = ClipAdapter()
    assert method.default_config("dtd", 16).alpha == 0.6
    assert method.default_config("eurosat", 4).alpha == 0.6
    assert method.default_config("caltech101", 16).alpha == 0.2
    assert method.default_config("imagenet", 16).alpha == 0.2
    assert method.default_config("oxford_pets", 16).alpha == 0.2  # no published value: the official code's
    assert [method.default_config("dtd", k).epochs for k in (1, 2, 16)] == [50, 100, 200]
    assert method.default_config("dtd", 16).branch == "visual"


@pytest.mark.parametrize(
    "branch, zeros",
    [("visual", {"alpha": 0.0}), ("text", {"beta": 0.0}), ("both", {"alpha": 0.0, "beta": 0.0})],
)
@pytest.mark.parametrize("prompts", ["coop", "ensemble"])
def test_zero_ratios_give_zero_shot_logits_exactly(branch, zeros, prompts, data, ctx):
    cfg = dataclasses.replace(
        ClipAdapter().default_config("toy", 16), branch=branch, epochs=2, prompts=prompts, **zeros
    )
    adapter = ClipAdapter().fit(data, cfg, ctx)
    zero_shot = ZeroShot().fit(data, ZeroShot.Config(prompts=prompts), ctx)
    features = torch.randn(50, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(adapter(features), zero_shot(features))


@pytest.mark.parametrize("branch", ["text", "both"])
def test_text_and_both_branches_train_their_adapters(branch, data, ctx):
    cfg = dataclasses.replace(
        ClipAdapter().default_config("toy", 16), branch=branch, alpha=0.5, beta=0.5, epochs=30, lr=0.02
    )
    records = {}
    model = ClipAdapter().fit(data, cfg, dataclasses.replace(ctx, record=records.__setitem__))
    assert (model.visual is None) == (branch == "text") and model.text is not None
    first, last = records["train_loss_first_last"]
    assert last < 0.8 * first
    with torch.no_grad():
        accuracy = (model(data.val.center).argmax(1) == data.val.labels).float().mean()
        zero_shot = ZeroShot().fit(data, ZeroShot.Config(), ctx)(data.val.center).argmax(1) == data.val.labels
    assert accuracy > zero_shot.float().mean()


def test_unknown_branch_is_a_user_error(data, ctx):
    cfg = dataclasses.replace(ClipAdapter().default_config("toy", 16), branch="audio")
    with pytest.raises(BenchError, match="branch"):
        ClipAdapter().fit(data, cfg, ctx)


def test_hypernetwork_starts_at_fixed_ratio_clip_adapter(data, ctx):
    """Untrained, Q outputs α₀ for every image and β₀ for every class: the logits are CLIP-Adapter's."""
    hyper_cfg = dataclasses.replace(ClipAdapterHyper().default_config("dtd", 16), epochs=0)
    fixed_cfg = dataclasses.replace(
        ClipAdapter().default_config("dtd", 16), branch="both", beta=0.2, epochs=0
    )
    hyper = ClipAdapterHyper().fit(data, hyper_cfg, ctx)
    fixed = ClipAdapter().fit(data, fixed_cfg, ctx)
    features = torch.randn(30, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(hyper.alpha(features), torch.full((30,), 0.6))
        torch.testing.assert_close(hyper.beta(), torch.full((5,), 0.2))
        torch.testing.assert_close(hyper(features), fixed(features))


def test_hypernetwork_ratios_are_learned_and_recorded(data, ctx):
    records = {}
    cfg = dataclasses.replace(ClipAdapterHyper().default_config("toy", 16), epochs=40, lr=0.05)
    model = ClipAdapterHyper().fit(data, cfg, dataclasses.replace(ctx, record=records.__setitem__))
    for key in ("alpha_train", "alpha_val", "beta"):
        stats = records[key]
        assert set(stats) == {"mean", "std", "min", "max"} and 0 < stats["min"] <= stats["max"] < 1
    assert records["alpha_train"]["std"] > 0  # α depends on the image
    assert abs(records["beta"]["mean"] - 0.2) > 1e-4 or abs(records["alpha_train"]["mean"] - 0.2) > 1e-4
    new = model.for_classes(("zebra", "yak", "owl"), ctx)
    assert new.beta().shape == (3,)


def test_hypernetwork_branches_learn_only_their_ratio(data, ctx):
    records = {}
    cfg = dataclasses.replace(ClipAdapterHyper().default_config("toy", 16), branch="visual", epochs=1)
    model = ClipAdapterHyper().fit(data, cfg, dataclasses.replace(ctx, record=records.__setitem__))
    assert model.text is None and model.q_text is None and "beta" not in records and "alpha_val" in records
