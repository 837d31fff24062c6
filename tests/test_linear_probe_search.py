"""The linear probe's cheaper C search (issue 22): each C fitted once gives the C, the weights and the test
predictions of the search as it was (kept here as ``reference_fit``, the code before the change), bit for bit,
on demo-like and synthetic problems. Warm starts (opt-in) are not exact: they move the chosen C."""

from __future__ import annotations

import numpy as np
import torch

from bench.methods import linear_probe as lp
from bench.methods.base import FewShotData, FitContext
from bench.methods.linear_probe import LinearProbe, fit_logistic_regression
from tests.toy import clustered_data


def reference_fit(data: FewShotData, cfg: lp.LinearProbeConfig) -> tuple[float, lp.LinearLogits, int]:
    """The search before issue 22, verbatim: every C fitted from zeros, the kept end re-fitted every step.
    Returns (chosen C, model, fits)."""
    x_train, y_train = data.train.center, data.train.labels
    x_val, y_val = data.val.center, data.val.labels
    count = [0]

    def fit_and_score(c):
        count[0] += 1
        model = fit_logistic_regression(x_train, y_train, data.n_classes, c, cfg.max_iter, cfg.tol)
        return lp._val_accuracy(model, x_val, y_val), model

    sweep = [fit_and_score(c)[0] for c in cfg.c_sweep]
    c_peak = cfg.c_sweep[int(np.argmax(sweep))]
    c_left, c_right = 0.1 * c_peak, 10.0 * c_peak
    c_final, model = c_peak, None
    for _ in range(cfg.search_steps):
        (acc_left, left), (acc_right, right) = fit_and_score(c_left), fit_and_score(c_right)
        if acc_left < acc_right:
            c_final, model = c_right, right
            c_left, c_right = 10 ** (0.5 * (np.log10(c_right) + np.log10(c_left))), c_right
        else:
            c_final, model = c_left, left
            c_left, c_right = c_left, 10 ** (0.5 * (np.log10(c_right) + np.log10(c_left)))
    return c_final, model, count[0]


def problems():
    """Demo-like (10 classes, as fashion_mnist_fewshot; 64-d features) and synthetic (5 classes) few-shot
    problems at 1/4/16 shots and three seeds, with overlapping classes."""
    for name, n_classes, noise in (("demo-like", 10, 1.5), ("synthetic", 5, 2.5)):
        for shots in (1, 4, 16):
            for seed in (1, 2, 3):
                names = tuple(f"c{i}" for i in range(n_classes))
                yield f"{name}-k{shots}-s{seed}", clustered_data(names, shots, 1, noise=noise, seed=seed)


def _test_features(data: FewShotData, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1000 + seed)
    x = data.train.center
    return x[torch.randint(len(x), (200,), generator=generator)] + torch.randn(
        200, x.shape[1], generator=generator
    )


def test_search_chooses_the_same_c_and_predictions(monkeypatch):
    monkeypatch.setattr(lp, "SMALL_PROBLEM", 10**12)  # one torch thread: the test's speed on a busy machine
    for i, (name, data) in enumerate(problems()):
        c_ref, ref, n_ref = reference_fit(data, lp.LinearProbeConfig())
        recorded = {}
        ctx = FitContext(
            backbone=None, device=torch.device("cpu"), seed=1, text_features=None, record=recorded.__setitem__
        )
        ours = LinearProbe().fit(data, lp.LinearProbeConfig(), ctx)
        test = _test_features(data, i)
        assert n_ref == 23 and recorded["chosen_c"] == c_ref, name
        assert torch.equal(ours(test).argmax(1), ref(test).argmax(1)), name
        assert torch.equal(ours.weight, ref.weight) and torch.equal(ours.bias, ref.bias), name


def test_warm_start_is_opt_in_and_starts_from_the_given_solution():
    """Warm starts are off by default: from a neighbouring C's solution L-BFGS-B stops (gtol 1e-4) at another
    point than from zeros, and on these problems that moved the chosen C in 12 of 30 cells."""
    assert lp.LinearProbeConfig().warm_start is False
    data = clustered_data(tuple("abc"), 4, 1, seed=2)
    x, y = data.train.center, data.train.labels
    solution = fit_logistic_regression(x, y, 3, 1.0)
    again = fit_logistic_regression(x, y, 3, 1.0, init=solution)  # at the optimum already: (almost) no steps
    assert torch.allclose(again.weight, solution.weight, atol=1e-4)


def test_each_c_is_fitted_once(monkeypatch):
    calls = []
    real = lp.fit_logistic_regression
    monkeypatch.setattr(lp, "fit_logistic_regression", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    data = clustered_data(tuple("abcde"), 4, 1, seed=3)
    ctx = FitContext(backbone=None, device=torch.device("cpu"), seed=1, text_features=None)
    LinearProbe().fit(data, lp.LinearProbeConfig(), ctx)
    # the sweep, both ends once, then one midpoint a step (the first may land on the sweep's peak again)
    assert len(calls) == len(set(calls)) and len(calls) <= 7 + 2 + 7
