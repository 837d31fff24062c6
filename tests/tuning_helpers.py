"""Methods and a study worker used by the tuning tests.

``python -m tests.tuning_helpers STORAGE TARGET PAUSE`` fills the study ``two-workers`` with a
cheap objective and prints this worker's outcome as JSON (the two-process test runs two).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from typing import ClassVar

from bench.methods.base import Needs
from bench.methods.clip_adapter import ClipAdapter


@dataclass(frozen=True)
class ToyConfig:
    x: float = 0.5
    epochs: int = 10
    label: str = "toy"


@dataclass(frozen=True)
class ToyClassifier:
    x: float


class ToyMethod:
    """A method whose val score is its parameter x; it reports x every epoch (for the pruner)."""

    name, version, Config, trainable = "toy", "1", ToyConfig, True

    def __init__(self):
        self.fitted: list[float] = []

    def default_config(self, dataset, shots):
        return ToyConfig()

    def needs(self, cfg):
        return Needs()

    def search_space(self, trial, dataset, shots, cfg):
        return {"x": trial.suggest_float("x", 0.0, 1.0)}

    def fit(self, data, cfg, ctx):
        self.fitted.append(cfg.x)
        for epoch in range(cfg.epochs):
            if ctx.report is not None:
                ctx.report(epoch, cfg.x)
        return ToyClassifier(cfg.x)


class SpyAdapter(ClipAdapter):
    """CLIP-Adapter that logs each fit's alpha (the runner tests count trials and final fits)."""

    fits: ClassVar[list[float]] = []

    def fit(self, data, cfg, ctx):
        SpyAdapter.fits.append(cfg.alpha)
        return super().fit(data, cfg, ctx)


def _worker(storage: str, target: int, pause: float) -> dict:
    from bench.tuning import StudyRef, run_study

    def objective(trial):
        x = trial.suggest_float("x", 0.0, 1.0)
        time.sleep(pause)
        return x

    ref = StudyRef(name="two-workers", storage=storage, mode="val", trials=target, seed=1)
    outcome = run_study(ref, objective, default_params={})
    return {"ran": outcome.ran, "closed_here": outcome.closed_here}


if __name__ == "__main__":
    print(json.dumps(_worker(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))))
