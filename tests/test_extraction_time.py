"""Issue 23: the feature pre-pass, which no cell's ``timing_s`` holds, is recorded per backbone x dataset and
counted in the grid's wall time (``bench report`` prints it; ``grid_wall_seconds``)."""

from __future__ import annotations

import json

import pytest

from bench.errors import BenchError
from bench.results import (
    ExtractionPass,
    append_extraction_pass,
    grid_wall_seconds,
    load_extraction_passes,
    load_results,
)
from bench.runner import Session, run_cells
from bench.spec import expand_grid

from .conftest import TINY


def test_the_pre_pass_is_recorded_once_and_counted_in_the_grid_total(run_options, capsys):
    specs = expand_grid(
        ["zero_shot", "clip_adapter"],
        ["synthetic"],
        [1],
        [1, 2],
        [TINY],
        overrides={"clip_adapter": (("epochs", 1),)},
    )
    run_cells(specs, run_options, Session(run_options))
    results = load_results(run_options.results_root)
    passes = load_extraction_passes(run_options.results_root)
    assert len(passes) == 1
    (entry,) = passes
    assert (entry.backbone, entry.dataset) == (TINY, "synthetic")
    assert entry.images_encoded > 0 and entry.seconds > 0
    assert entry.images_per_s == pytest.approx(entry.images_encoded / entry.seconds, rel=1e-3)
    assert set(entry.run_ids) == {r.run_id for r in results}
    wall = grid_wall_seconds(results, passes)
    assert wall["extraction"] == entry.seconds
    assert wall["total"] == pytest.approx(sum(r.timing_s.total for r in results) + entry.seconds)

    run_cells(specs, run_options, Session(run_options))  # all cached and done: no new pass
    assert len(load_extraction_passes(run_options.results_root)) == 1

    from bench.cli import main

    assert main(["report", "--results", str(run_options.results_root)]) == 0
    assert f"+ {entry.seconds:.1f} s feature extraction (pre-pass)" in capsys.readouterr().err


def test_passes_of_other_cells_are_not_counted(tmp_path):
    entry = ExtractionPass("A/b", "d", 5.0, 10, 2.0, "2025-01-01T00:00:00Z", ["other"])
    append_extraction_pass(tmp_path, "A_b", entry)
    append_extraction_pass(tmp_path, "A_b", entry)
    assert load_extraction_passes(tmp_path) == [entry, entry]
    assert grid_wall_seconds([], load_extraction_passes(tmp_path))["extraction"] == 0


def test_extraction_files_are_read_strictly(tmp_path):
    path = tmp_path / "A_b" / "d" / "extraction.json"
    path.parent.mkdir(parents=True)
    path.write_text(
        json.dumps(
            {
                "schema_version": 1,
                "passes": [
                    {
                        "backbone": "A/b",
                        "dataset": "d",
                        "seconds": 1.0,
                        "images_encoded": 1,
                        "images_per_s": 1.0,
                        "finished_at": "x",
                        "speed": 3,
                    }
                ],
            }
        )
    )
    with pytest.raises(BenchError, match="unknown field extraction pass.speed"):
        load_extraction_passes(tmp_path)
    path.write_text(json.dumps({"passes": []}))
    with pytest.raises(BenchError, match="not an extraction file"):
        load_extraction_passes(tmp_path)
