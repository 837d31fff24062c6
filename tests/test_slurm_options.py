"""Site-specific Slurm options: qos, gres, reservation, exclude, mail, free-form sbatch parameters and setup lines,
from profiles and flags; every string checked; --dry-run prints the sbatch scripts; a refused option is one line
and nothing is submitted. Against a real Slurm: tests/test_slurm_cluster_options.py."""

from __future__ import annotations

import json
import os
import stat

import pytest

from bench.cli import main
from bench.errors import BenchError
from bench.slurm.resources import Resources, executor_parameters, load_profile, sbatch_script, with_overrides

SITE = {
    "partition": "gpu",
    "gpus_per_task": 1,
    "qos": "high",
    "gres": "gpu:a100:1",
    "reservation": "course",
    "exclude": "node[01-03]",
    "mail_type": "END,FAIL",
    "mail_user": "me@lab.example",
    "slurm_additional_parameters": {"nice": 10, "comment": "bench"},
    "setup": ["module load cuda/12.1", "source /opt/env/bin/activate"],
}


def _cli(tmp_path, data_root, *extra):
    return [
        "run",
        "--data-root",
        str(data_root),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--results",
        str(tmp_path / "r"),
        "--device",
        "cpu",
        "--no-progress",
        "--methods",
        "zero_shot",
        "--shots",
        "1",
        "--seeds",
        "1",
        *extra,
    ]


def test_a_profile_with_site_options_renders_into_the_sbatch_script(tmp_path):
    profile = tmp_path / "site.json"
    profile.write_text(json.dumps({**SITE, "description": "our cluster"}))
    res = load_profile(str(profile))
    assert res.setup == tuple(SITE["setup"]) and res.uses_gpus
    params = executor_parameters(res, "slurm", name="bench-cells-x", dependency="42")
    assert params["slurm_qos"] == "high" and params["slurm_setup"] == SITE["setup"]
    assert params["slurm_additional_parameters"] == {
        "nice": "10",
        "comment": "bench",
        "reservation": "course",
        "kill-on-invalid-dep": "yes",
    }
    script = sbatch_script(res, name="bench-cells-x", folder=tmp_path / "%j", array_size=3, dependency="42")
    lines = script.splitlines()
    for flag in (
        "--qos=high",
        "--gres=gpu:a100:1",
        "--reservation=course",
        "--exclude='node[01-03]'",
        "--mail-type=END,FAIL",
        "--mail-user=me@lab.example",
        "--nice=10",
        "--comment=bench",
        "--partition=gpu",
        "--dependency=afterok:42",
        "--array=0-2%3",
        "--job-name=bench-cells-x",
    ):
        assert f"#SBATCH {flag}" in lines, flag
    assert not any("--gpus-per-task" in line for line in lines)  # the gres asks for the GPUs
    setup = lines.index("# setup")
    assert lines[setup + 1 : setup + 3] == SITE["setup"] and setup < lines.index("# command")


def test_flags_override_and_extend_the_profile():
    base = Resources(**{**SITE, "setup": tuple(SITE["setup"])})
    res = with_overrides(base, qos="low", setup=("echo extra",), slurm_additional_parameters={"nice": "5"})
    assert res.qos == "low" and res.setup == (*SITE["setup"], "echo extra")
    assert res.slurm_additional_parameters == {"nice": "5", "comment": "bench"}


@pytest.mark.parametrize(
    ("field", "value", "where"),
    [
        ("qos", "high\n#SBATCH --account=other", "qos"),
        ("gres", "gpu:1\r", "gres"),
        ("exclude", "", "exclude"),
        ("setup", ("module load cuda\nrm -rf ~",), "setup[0]"),
        ("slurm_additional_parameters", {"nice": "1\n"}, "slurm_additional_parameters.nice"),
        ("slurm_additional_parameters", {"bad key": "1"}, "slurm_additional_parameters.bad key"),
    ],
)
def test_every_string_is_one_printable_line(field, value, where):
    with pytest.raises(BenchError) as info:
        Resources(**{field: value})
    assert info.value.where == where


def test_unknown_mail_type_and_wrong_types_in_a_profile(tmp_path):
    with pytest.raises(BenchError, match="unknown mail type"):
        Resources(mail_type="END,SOMETIMES")
    profile = tmp_path / "p.json"
    profile.write_text(json.dumps({"setup": "module load cuda"}))
    with pytest.raises(BenchError, match="p.json: field 'setup' has the wrong type"):
        load_profile(str(profile))
    profile.write_text(json.dumps({"qos": "a\tb"}))
    with pytest.raises(BenchError, match=r"p.json: qos: qos 'a\\tb' holds a control character"):
        load_profile(str(profile))


def test_dry_run_prints_the_sbatch_scripts_with_the_site_flags(tmp_path, data_root, capsys):
    assert (
        main(
            _cli(
                tmp_path,
                data_root,
                "--executor",
                "slurm",
                "--slurm-profile",
                "cpu_debug",
                "--qos",
                "high",
                "--gres",
                "gpu:a100:1",
                "--setup",
                "module load cuda",
                "--setup",
                "export BENCH_X=1",
                "--slurm-param",
                "nice=10",
                "--mail-type",
                "END",
                "--dry-run",
            )
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "--- sbatch script: feature job ---" in out and "--- sbatch script: cell array (1 task(s)" in out
    for line in (
        "#SBATCH --qos=high",
        "#SBATCH --gres=gpu:a100:1",
        "#SBATCH --nice=10",
        "#SBATCH --mail-type=END",
        "module load cuda\nexport BENCH_X=1",
        "#SBATCH --dependency='afterok:<FEATURE_JOB_ID>'",
    ):
        assert line in out, line
    assert not (tmp_path / "r" / ".sweeps").exists()


def test_site_flags_without_a_sweep_are_refused(tmp_path, data_root, capsys):
    assert main(_cli(tmp_path, data_root, "--qos", "high", "--setup", "x")) == 2
    assert "--qos, --setup only apply to sweeps" in capsys.readouterr().err


def _fake_slurm(tmp_path, monkeypatch, sbatch_body: str):
    """sbatch/srun/squeue/sacct stand-ins on PATH (submitit looks for srun; bench for sbatch, sacct, squeue)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "sbatch-calls"
    for tool, body in {
        "sbatch": f'echo "$@" >> {calls}\n{sbatch_body}',
        "srun": "exit 0",
        "squeue": "exit 0",
        "sacct": "exit 0",
    }.items():
        path = bin_dir / tool
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return calls


def test_an_option_sbatch_refuses_is_one_line_naming_it_and_nothing_is_submitted(
    tmp_path, data_root, capsys, monkeypatch
):
    calls = _fake_slurm(
        tmp_path,
        monkeypatch,
        'echo "sbatch: error: Batch job submission failed: Invalid qos specification" >&2\nexit 1',
    )
    assert (
        main(
            _cli(tmp_path, data_root, "--executor", "slurm", "--slurm-profile", "cpu_debug", "--qos", "nope")
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert (
        "--qos nope: sbatch refused the sweep's jobs, nothing was submitted: sbatch: error: Batch job "
        "submission failed: Invalid qos specification" in err
    )
    assert calls.read_text().count("\n") == 1  # the first refusal stops the submission
    assert not any((tmp_path / "r" / ".sweeps").iterdir())  # no manifest, no scripts
