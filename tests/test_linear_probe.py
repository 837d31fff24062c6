"""The linear probe is CoOp's lpclip: scikit-learn's logistic regression, C searched on the few-shot val split."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from bench.errors import BenchError
from bench.methods import linear_probe as lp
from bench.methods.base import FeatureSet, FewShotData, FitContext
from bench.methods.linear_probe import LinearProbe, LinearProbeConfig, fit_logistic_regression
from tests.toy import clustered_data


def _blobs(seed: int, n_classes: int = 6, per_class: int = 12, dim: int = 16):
    generator = torch.Generator().manual_seed(seed)
    means = torch.randn(n_classes, dim, generator=generator) * 1.5
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    return means[labels] + torch.randn(len(labels), dim, generator=generator), labels


@pytest.mark.parametrize("c", [100.0, 1.0, 0.01])
def test_fit_equals_scikit_learn(c):
    x, y = _blobs(0)
    x_test, _ = _blobs(1)
    ours = fit_logistic_regression(x, y, 6, c)
    reference = LogisticRegression(C=c, max_iter=1000, tol=1e-4).fit(x.numpy(), y.numpy())
    np.testing.assert_allclose(ours.weight.numpy(), reference.coef_, rtol=2e-3, atol=2e-4)
    np.testing.assert_allclose(ours.bias.numpy(), reference.intercept_, rtol=2e-3, atol=2e-4)
    assert np.array_equal(ours(x_test).argmax(1).numpy(), reference.predict(x_test.numpy()))


def lpclip_search(val_accuracy, sweep=lp.C_SWEEP, steps=8):
    """CoOp's lpclip/linear_probe.py C search, restated on a val-accuracy function of C."""
    accs = [val_accuracy(c) for c in sweep]
    c_peak = sweep[int(np.argmax(accs))]
    c_left, c_right = 1e-1 * c_peak, 1e1 * c_peak
    c_final = None
    for _ in range(steps):
        acc_left, acc_right = val_accuracy(c_left), val_accuracy(c_right)
        if acc_left < acc_right:
            c_final = c_right
            c_left = 0.5 * (np.log10(c_right) + np.log10(c_left))
            c_right = np.log10(c_right)
        else:
            c_final = c_left
            c_right = 0.5 * (np.log10(c_right) + np.log10(c_left))
            c_left = np.log10(c_left)
        c_left, c_right = np.power(10, c_left), np.power(10, c_right)
    return c_final


def test_c_search_follows_lpclip(monkeypatch):
    """With a known val-accuracy curve (peaked at C = 10^0.37, plateaus that force ties), the method
    tries the same C values and keeps the same one as lpclip's loop."""

    def curve(c):
        return round(1.0 - abs(np.log10(c) - 0.37) / 20, 2)

    class Scored:
        def __init__(self, c):
            self.c = c

    monkeypatch.setattr(lp, "fit_logistic_regression", lambda *a, **k: Scored(a[3]))
    monkeypatch.setattr(lp, "_val_accuracy", lambda model, x, y: curve(model.c))
    data = clustered_data(("a", "b", "c"), 4, 1)
    recorded = {}
    ctx = FitContext(
        backbone=None, device=torch.device("cpu"), seed=1, text_features=None, record=recorded.__setitem__
    )
    model = LinearProbe().fit(data, LinearProbe().default_config("toy", 4), ctx)
    expected = lpclip_search(curve)
    assert model.c == pytest.approx(expected) and recorded["chosen_c"] == pytest.approx(expected)
    assert recorded["c_sweep_val_accuracy"] == [curve(c) for c in lp.C_SWEEP]


def test_fidelity_switches_objective_scaling_and_final_refit(tmp_path):
    """``objective=sum`` (sklearn < 1.4) has the same minimiser; ``final_fit=support+val`` refits on more data."""
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 16, generator=g) * 3
    x = torch.cat([centers[k] + torch.randn(8, 16, generator=g) for k in range(3)])
    y = torch.arange(3).repeat_interleave(8)
    tight = dict(max_iter=5000, tol=1e-10)
    mean = fit_logistic_regression(x, y, 3, 0.5, **tight)
    total = fit_logistic_regression(x, y, 3, 0.5, objective="sum", **tight)
    assert torch.allclose(mean.weight, total.weight, atol=1e-4)

    def data(n_val):
        return FewShotData(
            "synthetic",
            8,
            ("a", "b", "c"),
            {},
            FeatureSet(x[None], y),
            FeatureSet(x[None, :n_val], y[:n_val]),
        )

    ctx = FitContext(backbone=None, device=torch.device("cpu"), seed=1, text_features=None)
    support = LinearProbe().fit(data(24), LinearProbeConfig(search_steps=0), ctx)
    both = LinearProbe().fit(data(24), LinearProbeConfig(search_steps=0, final_fit="support+val"), ctx)
    assert not torch.equal(support.weight, both.weight)  # the refit saw the val images twice as many rows
    with pytest.raises(BenchError, match="linear_probe.objective"):
        LinearProbe().fit(data(24), LinearProbeConfig(objective="total"), ctx)


def test_two_class_binary_is_scikit_learns_binary_model():
    """``two_class=binary`` fits sklearn's binary model (one vector); the default 2-way softmax at C is
    that model at 2C, so the two differ at the same C."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 8, generator=g)
    y = (x[:, 0] + 0.5 * torch.randn(40, generator=g) > 0).long()
    tight = dict(max_iter=5000, tol=1e-10)
    binary = fit_logistic_regression(x, y, 2, 0.1, binary=True, **tight)
    reference = LogisticRegression(C=0.1, **tight).fit(x.numpy(), y.numpy())
    np.testing.assert_allclose(binary.weight[1].numpy(), reference.coef_[0], atol=1e-5)
    np.testing.assert_allclose(binary.bias[1].item(), reference.intercept_[0], atol=1e-5)
    assert binary.weight[0].abs().max() == 0 and binary.bias[0] == 0
    softmax_half_c = fit_logistic_regression(x, y, 2, 0.05, **tight)
    assert torch.allclose(softmax_half_c.weight[1] - softmax_half_c.weight[0], binary.weight[1], atol=1e-6)
    softmax_same_c = fit_logistic_regression(x, y, 2, 0.1, **tight)
    assert (softmax_same_c.weight[1] - softmax_same_c.weight[0] - binary.weight[1]).abs().max() > 0.1

    data = FewShotData("synthetic", 20, ("a", "b"), {}, FeatureSet(x[None], y), FeatureSet(x[None], y))
    ctx = FitContext(backbone=None, device=torch.device("cpu"), seed=1, text_features=None)
    probe = LinearProbe().fit(data, LinearProbeConfig(search_steps=0, two_class="binary"), ctx)
    assert probe.weight[0].abs().max() == 0  # the method fitted the binary model
    three = clustered_data(("a", "b", "c"), 4, 1)  # more than 2 classes: the switch changes nothing
    same = [
        LinearProbe().fit(three, LinearProbeConfig(search_steps=0, two_class=t), ctx).weight
        for t in ("softmax", "binary")
    ]
    assert torch.equal(*same)
    with pytest.raises(BenchError, match="linear_probe.two_class"):
        LinearProbe().fit(data, LinearProbeConfig(two_class="ovr"), ctx)
