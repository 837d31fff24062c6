"""Files are written with the permissions the umask gives (as ``open()`` would), so two users of one
Unix group can share a results and cache folder: records, feature shards, few-shot index files,
reports (``--out``) and plots, under umask 022 and 002."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from bench.cli import main
from bench.fileio import atomic_write_bytes, current_umask

from .conftest import TINY


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _modes(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode)
        for p in root.rglob("*")
        if p.is_file() and not p.name.endswith(".lock")
    }


def test_current_umask_reads_without_changing_it(umask):
    assert current_umask() == umask
    assert current_umask() == umask


def test_atomic_writes_follow_the_umask(tmp_path, umask):
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    plain = tmp_path / "plain.bin"
    with plain.open("wb") as fh:
        fh.write(b"x")
    assert (
        stat.S_IMODE((tmp_path / "a.bin").stat().st_mode)
        == stat.S_IMODE(plain.stat().st_mode)
        == 0o666 & ~umask
    )


def test_records_shards_indices_reports_and_plots_are_group_readable(tmp_path, data_root, umask):
    args = [
        "run",
        "--methods",
        "zero_shot,linear_probe",
        "--datasets",
        "synthetic",
        "--shots",
        "1,2",
        "--seeds",
        "1",
        "--backbone",
        TINY,
        "--data-root",
        str(data_root),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--results",
        str(tmp_path / "results"),
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert main(args) == 0
    assert (
        main(
            [
                "report",
                "--results",
                str(tmp_path / "results"),
                "--out",
                str(tmp_path / "out" / "table.md"),
                "--plot",
                str(tmp_path / "plots"),
            ]
        )
        == 0
    )
    expected = 0o666 & ~umask
    files = {}
    for folder in ("results", "cache", "out", "plots"):
        found = _modes(tmp_path / folder)
        assert found, folder
        files.update({f"{folder}/{name}": mode for name, mode in found.items()})
    kinds = {"record": ".json", "shard": ".pt", "index": "splits/", "report": "out/", "plot": ".png"}
    for kind, marker in kinds.items():
        assert any(marker in name for name in files), (kind, sorted(files))
    wrong = {name: oct(mode) for name, mode in files.items() if mode != expected}
    assert not wrong, f"expected {oct(expected)}: {wrong}"
