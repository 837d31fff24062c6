"""bench perf --profile cpu's linear-probe grid rows, before (the search as it was: tests/test_linear_probe_search.py
reference_fit) and after (LinearProbe.fit), timed interleaved on the profile's own features (bench-tiny/random,
generated 500x375 JPEGs, 10 augmented views; the probe reads the first view as perf does), at C=10 and C=2, K=16."""

import tempfile
import time
from pathlib import Path

import torch

from bench.backbone import BackboneRef, load_backbone
from bench.features import ExtractOptions
from bench.images import ViewSpec
from bench.methods import linear_probe as lp
from bench.methods.base import FeatureSet, FewShotData, FitContext
from bench.tools.grid_cost import StepCosts
from bench.tools.perf import PROFILES, _classes_subset, make_jpegs, time_extraction
from tests.test_linear_probe_search import reference_fit


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main():
    p = PROFILES["cpu"]
    work = Path(tempfile.mkdtemp())
    bb = load_backbone(BackboneRef.parse(p.backbone), torch.device("cpu"))
    support = make_jpegs(work / "train", p.n_classes, p.shots)
    views, _ = time_extraction(
        bb,
        work / "train",
        support,
        ViewSpec.augment(p.train_views),
        ExtractOptions(batch_size=p.batch_size, num_workers=0, progress=False),
        work / "cache",
    )
    labels = torch.tensor(support.labels)
    names = tuple(f"class {i}" for i in range(p.n_classes))
    data = FewShotData(
        "perf", p.shots, names, {}, FeatureSet(views, labels), FeatureSet(views[:1, ::4], labels[::4])
    )
    K = p.shots
    costs = {"before": {}, "after": {}}
    for c in (p.n_classes, 2):
        d = data if c == p.n_classes else _classes_subset(data, c)
        t_ref, t_new, same = [], [], True
        for _rep in range(3):
            (c_ref, m_ref, _), dt = timed(lambda: reference_fit(d, lp.LinearProbeConfig()))  # noqa: B023
            t_ref.append(dt)
            rec = {}
            ctx = FitContext(
                backbone=None, device=torch.device("cpu"), seed=1, text_features=None, record=rec.__setitem__
            )
            m, dt = timed(lambda: lp.LinearProbe().fit(d, lp.LinearProbeConfig(), ctx))  # noqa: B023
            t_new.append(dt)
            same &= rec["chosen_c"] == c_ref and torch.equal(m.weight, m_ref.weight)
        costs["before"][c * c * K], costs["after"][c * c * K] = min(t_ref), min(t_new)
    for _k, probe in costs.items():
        StepCosts(
            coop_per_step={1: 0.0},
            adapter_per_step=0.0,
            linear_probe_cell=probe,
            zero_shot_cell=0.0,
            ref_classes=1,
            centre_rate=float("inf"),
            augmented_rate=float("inf"),
        )


if __name__ == "__main__":
    main()
