"""Issue 16, untrusted folders and bad input: one test per finding (items 5, 6, 7, 8, 10, 11).

Each test plants what a careless or hostile folder could hold (a pickle, a crafted archive, a state file
pointing elsewhere, a profile with a newline, a damaged file) and checks that the harness refuses it in
one line, or ignores it, without touching anything outside its folder. ``docs/reliability.md`` lists
the promises these tests keep.
"""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

from bench.cli import main

from .conftest import TINY


class _Planted:
    """Unpickling this creates ``path``: proof that a pickle was loaded."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def _plant(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(("error", _Planted(marker))))


# item 5 ---------------------------------------------------------------------------------------------


def _sweep(results: Path, executor: str, log_folder: Path):
    from bench.slurm.manifest import CellEntry, FeatureEntry, Manifest, TaskEntry, write_manifest

    cells = (CellEntry("zero_shot/synthetic/k1/s1", TINY, "r/k1.json", 0),)
    manifest = Manifest("20260101T000000Z-abcdef", "2026-01-01T00:00:00+00:00", executor, False, "/elsewhere",
                        str(log_folder / "%j"), {}, cells, (FeatureEntry(TINY, "synthetic", "7"),),
                        (TaskEntry((0,), 0, "8"),))
    # written as if under /elsewhere, then moved here: bench status must use where it finds it
    write_manifest(dataclasses.replace(manifest, results_root=str(results)))
    return manifest


def test_status_never_unpickles_a_planted_result(tmp_path, monkeypatch, capsys):
    """Item 5: submitit result pickles in a results folder (or where its manifest points) are never loaded."""
    from bench.slurm import sweep

    marker = tmp_path / "PWNED"
    results, elsewhere = tmp_path / "results", tmp_path / "attacker"
    for executor in ("processes", "slurm"):
        _sweep(results, executor, elsewhere)
        for folder in (elsewhere, results / ".sweeps" / "20260101T000000Z-abcdef" / "logs"):
            for job in ("7", "8"):
                _plant(folder / job / f"{job}_0_result.pkl", marker)
        if executor == "slurm":  # sacct says both jobs failed: the detail comes from their logs
            monkeypatch.setattr(sweep, "check_slurm_available", lambda: None)
            monkeypatch.setattr(sweep, "SlurmInfoWatcher", _FailedJobs)
        main(["status", "--results", str(results)])
        out = capsys.readouterr().out
        assert not marker.exists(), f"{executor}: a pickle from the results folder was loaded"
        assert "1 cells:" in out
        assert str(elsewhere) not in out  # the manifest's own log folder is ignored


class _FailedJobs:
    def __init__(self, delay_s=0):
        pass

    def register_job(self, job_id):
        pass

    def update(self):
        pass

    def get_state(self, job_id, mode="cache"):
        return "FAILED"
