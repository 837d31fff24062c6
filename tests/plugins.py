"""Methods and datasets used as registry entries by the tests."""

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from bench.datasets.catalog import SYNTHETIC
from bench.methods.base import FewShotData, Needs
from bench.methods.zero_shot import ZeroShot

REAL_LOOKING = dataclasses.replace(SYNTHETIC, generator=None)


@dataclass(frozen=True)
class EmptyConfig:
    prompts: str = "coop"


class ExplodingMethod:
    name, version, Config, trainable = "exploding", "1", EmptyConfig, False

    def default_config(self, dataset, shots):
        return EmptyConfig()

    def needs(self, cfg):
        return Needs()

    def fit(self, data, cfg, ctx):
        raise RuntimeError("boom")


class SpyMethod(ZeroShot):
    """Zero-shot that remembers the data it was given."""

    seen: ClassVar[list[FewShotData]] = []

    def fit(self, data, cfg, ctx):
        SpyMethod.seen.append(data)
        return super().fit(data, cfg, ctx)
