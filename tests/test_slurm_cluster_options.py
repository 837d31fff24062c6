"""Site options against the real Slurm of slurm/cluster.sh (QOS and associations enforced, a fake gpu:bench GRES):
a sweep from a config file with qos + gres + setup lines runs, and its cell succeeds only if the setup line ran in
the job; a QOS Slurm does not know is one line naming it, with nothing submitted. Skipped without the cluster,
unless BENCH_REQUIRE_SLURM=1 (CI)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from bench.cli import main
from bench.slurm.manifest import find_manifest, list_sweeps

from .test_slurm_cluster import _wait, slurm_cluster  # noqa: F401 - the fixture

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(600)]

PLUGIN = '''import os

from bench.methods.zero_shot import ZeroShot


class NeedsSetup(ZeroShot):
    """Zero-shot that fails unless the job's setup lines exported BENCH_SITE_SETUP=ok."""

    name = "needs_setup"

    def fit(self, data, cfg, ctx):
        if os.environ.get("BENCH_SITE_SETUP") != "ok":
            raise RuntimeError("the sweep's setup lines did not run before the task")
        return super().fit(data, cfg, ctx)


BENCH_METHODS = {"needs_setup": NeedsSetup}
'''


def _config(tmp_path, qos: str) -> str:
    (tmp_path / "needs_setup.py").write_text(PLUGIN)
    grid = tmp_path / f"sweep-{qos}.yaml"
    grid.write_text(f"""
plugins: [needs_setup.py]
methods: [needs_setup]
datasets: [synthetic]
shots: [1, 2]
seeds: [1]
workers: 0
executor: slurm
slurm_profile: cpu_debug
time: 60
qos: {qos}
gres: "gpu:bench:1"
setup:
  - export BENCH_SITE_SETUP=ok
  - touch {tmp_path}/setup-ran-$SLURM_JOB_ID
poll: 1
""")
    return str(grid)


def _args(tmp_path, grid: str) -> list[str]:
    return [
        "run",
        "--config",
        grid,
        "--data-root",
        str(tmp_path / "data"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--results",
        str(tmp_path / "results"),
        "--device",
        "cpu",
        "--no-progress",
    ]


def test_a_config_file_sweep_with_qos_gres_and_setup_lines(slurm_cluster, tmp_path, capsys):  # noqa: F811
    assert "BENCH_SITE_SETUP" not in os.environ
    grid = _config(tmp_path, "bench_qos")
    assert main(_args(tmp_path, grid)) == 0, capsys.readouterr()
    manifest = find_manifest(tmp_path / "results")
    assert (
        manifest.config["qos"] == "bench_qos" and manifest.config["setup"][0] == "export BENCH_SITE_SETUP=ok"
    )
    assert grid not in json.dumps(manifest.config)
    ids = [f.job_id for f in manifest.features] + [t.job_id for t in manifest.tasks]

    def accounted() -> list[list[str]]:
        out = subprocess.run(
            [
                "sacct",
                "-n",
                "-P",
                "-X",
                "-o",
                "JobID,QOS,ReqTRES,State",
                *[a for i in ids for a in ("-j", i)],
            ],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
        return [line.split("|") for line in out.splitlines() if line]

    _wait(
        lambda: len(rows := accounted()) == len(ids) and all(r[3] == "COMPLETED" for r in rows),
        60,
        "the jobs to end in accounting",
    )
    rows = accounted()
    assert all(qos == "bench_qos" and "gres/gpu=1" in tres for _, qos, tres, _ in rows), rows
    assert len(list(tmp_path.glob("setup-ran-*"))) == len(ids)  # every job ran the setup lines


def test_a_qos_slurm_refuses_is_one_line_and_nothing_is_submitted(slurm_cluster, tmp_path, capsys):  # noqa: F811
    before = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=20).stdout
    assert main(_args(tmp_path, _config(tmp_path, "no_such_qos"))) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and "--qos no_such_qos: sbatch refused the sweep's jobs, nothing was submitted" in err
    )
    assert "Invalid qos specification" in err
    assert list_sweeps(tmp_path / "results") == []
    after = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=20).stdout
    assert after == before
