"""Linear-probe CLIP, as CoOp's ``lpclip/linear_probe.py`` runs it.

Multinomial logistic regression on raw image features (``clip_model.visual`` output, centre
view, no augmentation), L2 strength C chosen on the few-shot val split: a sweep over
C ∈ {1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6}, then 8 steps of lpclip's log-space binary search
around the peak (ties keep the larger C in the sweep and the left end in the search). The
final classifier is the one fit on the support set at the chosen C. lpclip re-fits the end of the
interval it keeps at every search step; that fit is deterministic, so each C is fitted once here
(16 fits instead of 23, the same numbers bit for bit: ``tests/test_linear_probe_search.py``).

The solver is sklearn's: scipy's L-BFGS-B (history 10, gtol 1e-4, up to 1000 iterations)
on ``mean CE + ||W||² / (2 C N)`` (sklearn's objective divided by C·N), in float64, with the
loss and gradient computed by torch on the fit device, so it runs on the GPU.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import scipy.optimize
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits

from bench.errors import NonFiniteError
from bench.methods.base import FewShotData, FitContext, Needs, check_choice

C_SWEEP = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)
SMALL_PROBLEM = 50_000_000  # N x D x C below which one CPU thread beats several


@dataclass(frozen=True)
class LinearProbeConfig:
    BOUNDS: ClassVar[dict] = {"search_steps": (0, None), "max_iter": (1, None)}
    c_sweep: tuple[float, ...] = C_SWEEP  # lpclip's initial search list
    search_steps: int = 8  # lpclip --num_step
    max_iter: int = 1000  # sklearn LogisticRegression(max_iter=1000)
    tol: float = 1e-4  # sklearn's default tol (L-BFGS-B gtol)
    warm_start: bool = False  # True: start each fit from the nearest fitted C's solution instead of
    # zeros (lpclip); ~5% faster, but moves the chosen C (docs/performance.md)
    objective: str = "mean"  # "mean": sklearn >= 1.4's mean CE + ||W||^2/(2CN); "sum": Σ CE + ||W||^2/(2C),
    # the release lpclip ran with (same minimiser, another stopping point under the same gtol)
    final_fit: str = "support"  # "support": refit on the support set (lpclip); "support+val": on support and
    # few-shot val together, as the CLIP paper refits on train + val
    # with 2 classes: "softmax" (a 2-way softmax, as for any C) or "binary" (sklearn's binary model: one
    # weight vector, as lpclip fits; a 2-way softmax at C is the binary model at 2C)
    two_class: str = "softmax"


class LinearLogits(torch.nn.Module):
    """logits = f · Wᵀ + b on raw features. W: (C, D), b: (C,)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features.to(self.weight.dtype) @ self.weight.t() + self.bias

    def theta(self, rows: int) -> np.ndarray:
        """The solver's flat parameter vector over the last ``rows`` classes (W row-major, then b), float64:
        every class, or a binary fit's class-1 row."""
        return torch.cat([self.weight[-rows:].flatten(), self.bias[-rows:]]).double().cpu().numpy()


def fit_logistic_regression(
    features: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    c: float,
    max_iter: int = 1000,
    tol: float = 1e-4,
    init: LinearLogits | None = None,
    objective: str = "mean",
    binary: bool = False,
) -> LinearLogits:
    """L2-regularised multinomial logistic regression (sklearn's objective and solver).

    Args:
        features: (N, D) on the fit device. labels: (N,) int64. c: inverse regularisation strength.
        init: start L-BFGS-B from this solution (a neighbouring C's) instead of zeros (sklearn's start).
        objective: ``"mean"`` (sklearn >= 1.4) or ``"sum"`` (sklearn < 1.4: the same objective times N).
        binary: with ``n_classes == 2``, sklearn's binary model: one weight vector w and bias b for
            class 1, penalty ``||w||² / (2C)``; returned as the rows ``[0, w]``, ``[0, b]``.

    Returns:
        A float64 :class:`LinearLogits` on the same device.
    """
    x = features.double()
    y = labels.to(x.device)
    n, d = x.shape
    penalty = 1.0 / (2.0 * c * n)
    scale = {"mean": 1.0, "sum": float(n)}[objective]
    if binary and n_classes != 2:
        raise ValueError(f"a binary fit needs 2 classes, got {n_classes}")
    rows = 1 if binary else n_classes  # binary: class 0's logit is fixed at 0, as in sklearn's model

    one_hot = F.one_hot(y, n_classes).double()

    @torch.no_grad()
    def loss_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        params = torch.from_numpy(theta).to(x.device)
        weight, bias = params[: rows * d].view(rows, d), params[rows * d :]
        logits = x @ weight.t() + bias
        if binary:
            logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
        log_probs = logits.log_softmax(dim=1)
        loss = -(log_probs * one_hot).sum() / n + penalty * weight.pow(2).sum()
        residual = ((log_probs.exp() - one_hot) / n)[:, n_classes - rows :]  # d(mean CE)/d(free logits)
        grad = torch.cat([(residual.t() @ x + 2 * penalty * weight).flatten(), residual.sum(0)])
        return scale * float(loss), scale * grad.cpu().numpy()

    theta0 = np.zeros(rows * d + rows) if init is None else init.theta(rows)
    with _few_threads(x.device.type == "cpu" and n * d * n_classes < SMALL_PROBLEM):
        result = scipy.optimize.minimize(
            loss_and_grad,
            theta0,
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": max_iter, "maxls": 50, "gtol": tol, "ftol": 64 * np.finfo(float).eps},
        )
    if not (np.isfinite(result.fun) and np.isfinite(result.x).all()):
        raise NonFiniteError(f"logistic regression diverged at C={c:g} after {result.nit} iterations")
    theta = torch.from_numpy(result.x).to(x.device)
    weight, bias = theta[: rows * d].view(rows, d), theta[rows * d :]
    if binary:
        weight, bias = (
            torch.cat([torch.zeros_like(weight), weight]),
            torch.cat([torch.zeros_like(bias), bias]),
        )
    return LinearLogits(weight, bias)


@contextmanager
def _few_threads(single_torch_thread: bool):
    """One BLAS thread for scipy's L-BFGS-B bookkeeping, and one torch thread for small CPU problems.

    scipy's OpenBLAS threads spin against torch's OpenMP pool, and on a busy machine torch's pool
    spins on tiny matrices: 150 ms instead of 3 ms per evaluation was measured for a 160 x 64 x 10 problem.
    """
    previous = torch.get_num_threads()
    with threadpool_limits(limits=1, user_api="blas"):
        if single_torch_thread:
            torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(previous)


def _val_accuracy(model: LinearLogits, features: torch.Tensor, labels: torch.Tensor) -> float:
    return float((model(features).argmax(1) == labels).double().mean())


class LinearProbe:
    name = "linear_probe"
    version = "1"
    trainable = True
    Config = LinearProbeConfig
    as_published: ClassVar[dict[str, Any]] = {
        "objective": "sum",
        "two_class": "binary",
    }  # lpclip, 2021 sklearn

    def default_config(self, dataset: str, shots: int) -> LinearProbeConfig:
        return LinearProbeConfig()

    def needs(self, cfg: LinearProbeConfig) -> Needs:
        return Needs(train_views=0)

    def fit(self, data: FewShotData, cfg: LinearProbeConfig, ctx: FitContext) -> LinearLogits:
        check_choice(self.name, "objective", cfg.objective, ("mean", "sum"), see="docs/fidelity.md")
        check_choice(
            self.name, "final_fit", cfg.final_fit, ("support", "support+val"), see="docs/fidelity.md"
        )
        check_choice(self.name, "two_class", cfg.two_class, ("softmax", "binary"), see="docs/fidelity.md")
        binary = cfg.two_class == "binary" and data.n_classes == 2
        x_train, y_train = data.train.center.to(ctx.device), data.train.labels.to(ctx.device)
        x_val, y_val = data.val.center.to(ctx.device), data.val.labels.to(ctx.device)

        fits: dict[float, tuple[float, LinearLogits]] = {}

        def fit_and_score(c: float) -> tuple[float, LinearLogits]:
            # lpclip re-fits the end of the interval it keeps at every search step: the same C, the same
            # deterministic fit, so it is fitted once. A new C starts from the fitted C nearest in log space.
            if c not in fits:
                near = min(fits, key=lambda f: abs(np.log10(f) - np.log10(c)), default=None)
                init = fits[near][1] if cfg.warm_start and near is not None else None
                model = fit_logistic_regression(
                    x_train, y_train, data.n_classes, c, cfg.max_iter, cfg.tol, init, cfg.objective, binary
                )
                fits[c] = _val_accuracy(model, x_val, y_val), model
            return fits[c]

        sweep = [fit_and_score(c)[0] for c in cfg.c_sweep]
        c_peak = cfg.c_sweep[int(np.argmax(sweep))]
        c_left, c_right = 0.1 * c_peak, 10.0 * c_peak
        c_final, model, history = c_peak, None, []
        for _ in range(cfg.search_steps):
            (acc_left, left), (acc_right, right) = fit_and_score(c_left), fit_and_score(c_right)
            if acc_left < acc_right:
                c_final, model = c_right, right
                c_left, c_right = 10 ** (0.5 * (np.log10(c_right) + np.log10(c_left))), c_right
            else:
                c_final, model = c_left, left
                c_left, c_right = c_left, 10 ** (0.5 * (np.log10(c_right) + np.log10(c_left)))
            history.append([float(c_final), max(acc_left, acc_right)])
        if model is None:  # search_steps = 0: the sweep's peak
            model = fit_and_score(c_peak)[1]
        if cfg.final_fit == "support+val":  # the CLIP paper's refit at the chosen C on everything labelled
            model = fit_logistic_regression(
                torch.cat([x_train, x_val]),
                torch.cat([y_train, y_val]),
                data.n_classes,
                c_final,
                cfg.max_iter,
                cfg.tol,
                None,
                cfg.objective,
                binary,
            )
        ctx.record("c_sweep_val_accuracy", [float(a) for a in sweep])
        ctx.record("c_search", history)
        ctx.record("chosen_c", float(c_final))
        return model
