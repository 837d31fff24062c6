"""The built wheel installs methods/, datasets/, reports/ and slurm/ only under bench.*."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _source_copy(target: Path) -> Path:
    """The files git would ship (tracked, plus untracked ones it does not ignore), copied to ``target``:
    the wheel is built from what a clean clone has, and the build writes nothing into the checkout."""
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    source = _source_copy(tmp_path_factory.mktemp("source"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("*.whl")
    return zipfile.ZipFile(built)


@pytest.fixture(scope="module")
def wheel_files(wheel) -> list[str]:
    return wheel.namelist()


def test_no_top_level_package_shadows_other_distributions(wheel_files):
    top_level = {name.split("/")[0] for name in wheel_files if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"bench"}
    for shadowing in ("datasets/", "methods/", "reports/", "slurm/"):
        assert not any(name.startswith(shadowing) for name in wheel_files)


def test_subpackages_and_data_are_inside_bench(wheel_files):
    for required in (
        "bench/methods/clip_adapter.py",
        "bench/datasets/splits.py",
        "bench/reports/tables.py",
        "bench/model_configs/bench-tiny.json",
        "bench/cli.py",
        "bench/reports/data/paper_numbers.json",
        "bench/datasets/data/templates.json",
        "bench/datasets/data/imagenet_synsets.txt",
        "bench/slurm/sweep.py",
        "bench/slurm/cluster.sh",
        "bench/slurm/profiles/gpu_short.json",
        "bench/slurm/profiles/cpu_debug.json",
    ):
        assert required in wheel_files


def test_the_bench_command_is_a_console_script(wheel):
    entry_points = next(n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt"))
    text = wheel.read(entry_points).decode()
    assert "[console_scripts]" in text and "bench = bench.cli:main" in text
