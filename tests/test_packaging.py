"""The built wheel installs methods/, datasets/, reports/ and slurm/ only under bench.*."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory) -> list[str]:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True)
    (wheel,) = out.glob("*.whl")
    return zipfile.ZipFile(wheel).namelist()


def test_no_top_level_package_shadows_other_distributions(wheel_files):
    top_level = {name.split("/")[0] for name in wheel_files if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"bench"}
    for shadowing in ("datasets/", "methods/", "reports/", "slurm/"):
        assert not any(name.startswith(shadowing) for name in wheel_files)


def test_subpackages_and_data_are_inside_bench(wheel_files):
    for required in ("bench/methods/clip_adapter.py", "bench/datasets/splits.py", "bench/reports/tables.py",
                     "bench/model_configs/bench-tiny.json", "bench/cli.py", "bench/reports/data/paper_numbers.json",
                     "bench/datasets/data/templates.json", "bench/datasets/data/imagenet_synsets.txt",
                     "bench/slurm/sweep.py", "bench/slurm/cluster.sh", "bench/slurm/profiles/gpu_short.json",
                     "bench/slurm/profiles/cpu_debug.json"):
        assert required in wheel_files
    entry_points = next(n for n in wheel_files if n.endswith("entry_points.txt"))
    assert entry_points
