"""The paper-grid cost model counts the steps the methods really take (no timing is asserted)."""

import pytest

from bench.tools.grid_cost import (
    GRID_SHOTS,
    StepCosts,
    affine,
    cell_steps,
    grid_seconds,
    paper_datasets,
    steps,
)


def test_coop_steps_per_seed_match_the_reference_count():
    """anchors-and-protocols.md §4 derives ≈249k CoOp iterations per seed from CoOp's configs
    (SUN397 67k, ImageNet 48k, StanfordCars 33k); the harness's own defaults give the same."""
    per_dataset = {
        d.name: sum(cell_steps("coop", d.name, d.n_classes, k) for k in GRID_SHOTS) for d in paper_datasets()
    }
    assert len(per_dataset) == 11
    assert sum(per_dataset.values()) == 249_200
    assert (per_dataset["sun397"], per_dataset["imagenet"], per_dataset["stanford_cars"]) == (
        67_300,
        48_400,
        33_300,
    )


def test_steps_follow_the_loader_guard():
    assert steps(16_000, 32, 50) == 500 * 50  # ImageNet 16-shot: 500 steps an epoch
    assert steps(10, 32, 50) == 50  # EuroSAT 1-shot: one partial batch, not an empty loader
    assert steps(33, 32, 2) == 2  # the last partial batch is dropped once a full one exists


def test_affine_costs_interpolate_between_the_measured_sizes():
    assert affine({100: 1.0, 1000: 10.0}, 550) == pytest.approx(5.5)
    assert affine({100: 2.0}, 300) == pytest.approx(6.0)  # one point: through zero
    assert affine({100: 5.0, 1000: 1.0}, 5000) == 0.0  # never negative


def test_grid_total_adds_every_cell_of_every_part():
    unit = StepCosts(
        coop_per_step={1: 1.0},
        adapter_per_step=0.0,
        linear_probe_cell={1: 0.0},
        zero_shot_cell=0.0,
        ref_classes=1,
        centre_rate=float("inf"),
        augmented_rate=float("inf"),
    )
    parts = grid_seconds(unit)  # CoOp: one second per step and class
    expected = 3 * sum(
        cell_steps("coop", d.name, d.n_classes, k) * d.n_classes for d in paper_datasets() for k in GRID_SHOTS
    )
    assert parts["coop"] == pytest.approx(expected) and parts["total"] == pytest.approx(expected)
    images = StepCosts(
        coop_per_step={1: 0.0},
        adapter_per_step=0.0,
        linear_probe_cell={1: 0.0},
        zero_shot_cell=0.0,
        ref_classes=1,
        centre_rate=1.0,
        augmented_rate=1.0,
    )
    n_test = sum(d.n_test for d in paper_datasets())
    n_support = 3 * sum(d.n_classes * k for d in paper_datasets() for k in GRID_SHOTS)
    n_val = 3 * sum(d.n_classes * min(k, 4) for d in paper_datasets() for k in GRID_SHOTS)
    assert grid_seconds(images)["extraction"] == pytest.approx(n_test + n_support + n_val)
