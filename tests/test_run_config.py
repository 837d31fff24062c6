"""`bench run`'s options defined once (bench.run_config.RunConfig): the parser, --config files and the sweep
read the same fields; flags override the file; the file's content goes into the sweep manifest; bad files
are one line naming the file and the key."""

from __future__ import annotations

import json
import pdb
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import _specs_from_args, build_parser, main, run_config_from_args
from bench.errors import BenchError
from bench.run_config import FOLDERS, RunConfig, flag_of, load_config_file, option_fields, resolve

from .conftest import TINY

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"


def _config(argv: list[str]) -> RunConfig:
    return run_config_from_args(build_parser().parse_args(["run", *argv]))[0]


def test_every_option_is_one_flag_and_the_defaults_are_the_dataclass_defaults(tmp_path, monkeypatch):
    help_text = build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    for f in option_fields():
        assert flag_of(f) in help_text, f.name
    monkeypatch.setenv("BENCH_RESULTS_DIR", str(tmp_path / "r"))
    assert _config([]) == RunConfig()
    assert RunConfig().results == tmp_path / "r" and FOLDERS["results"].value() == tmp_path / "r"


def test_parser_and_run_config_do_not_import_torch():
    code = "import sys; from bench.run_config import RunConfig; RunConfig(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_yaml_file_sets_every_kind_of_option_and_flags_override_it(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("""
methods: [zero_shot, linear_probe, clip_adapter]
datasets: synthetic,synthetic_alt
shots: [1, 2]
seeds: [1]
backbone: [bench-tiny/random]
tune: val
trials: 3
set:
  clip_adapter: {alpha: 0.5, epochs: 2}
executor: slurm
slurm_profile: cpu_debug
qos: normal
gres: "gpu:a100:1"
time: 30
setup: ["module load cuda", "export X=1"]
slurm_additional_parameters: {nice: 10}
force: true
""")
    config = _config(
        [
            "--config",
            str(grid),
            "--shots",
            "4",
            "--set",
            "clip_adapter.alpha=0.7",
            "--setup",
            "echo hi",
            "--slurm-param",
            "comment=mine",
        ]
    )
    assert (
        config.methods == "zero_shot,linear_probe,clip_adapter"
        and config.datasets == "synthetic,synthetic_alt"
    )
    assert (config.shots, config.seeds, config.tune, config.trials, config.force) == (
        "4",
        "1",
        "val",
        3,
        True,
    )
    assert config.overrides == ("clip_adapter.alpha=0.5", "clip_adapter.epochs=2", "clip_adapter.alpha=0.7")
    assert (config.executor, config.slurm_profile, config.qos, config.gres, config.time_min) == (
        "slurm",
        "cpu_debug",
        "normal",
        "gpu:a100:1",
        30,
    )
    assert config.setup == ("echo hi",)  # a flag replaces the file's list ...
    assert config.slurm_additional_parameters == {"nice": "10", "comment": "mine"}  # ... a map is merged
    specs = _specs_from_args(config)
    alpha = {dict(s.overrides).get("alpha") for s in specs if s.method == "clip_adapter"}
    assert alpha == {0.7} and {s.shots for s in specs} == {4}


def test_json_config_and_the_shipped_examples_load(tmp_path):
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"methods": "zero_shot", "seeds": [1, 2], "dry-run": True}))
    config, content = resolve({}, grid)
    assert (config.methods, config.seeds, config.dry_run) == ("zero_shot", "1,2", True)
    assert content == {"methods": "zero_shot", "seeds": [1, 2], "dry-run": True}
    for example in ("paper_grid.yaml", "cluster_sweep.yaml"):
        config, _ = resolve({}, EXAMPLES / example)
        assert _specs_from_args(config)
    sweep, _ = resolve({}, EXAMPLES / "cluster_sweep.yaml")
    from bench.slurm.cli import sweep_options

    resources = sweep_options(sweep).resources
    assert (resources.qos, resources.gres, resources.setup[0]) == (
        "normal",
        "gpu:a100:1",
        "module load cuda/12.1",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("methds: [zero_shot]\n", "unknown key 'methds'. Did you mean: methods?"),
        ("shots: {a: 1}\n", "key 'shots' must be a list of names/numbers or a comma string"),
        ("trials: three\n", "key 'trials' must be an integer"),
        ("force: 1\n", "key 'force' must be true or false"),
        ("tune: maybe\n", "key 'tune' must be one of none, val, oracle"),
        ("set: 3\n", "key 'set' must be a list of METHOD.FIELD=VALUE strings"),
        ("setup: module load cuda\n", "key 'setup' must be a list of strings"),
        ("set: {clip_adapter: {alpha: .nan}}\n", "key 'set' must be a mapping"),
        ("- methods\n", "a config file holds a mapping of options, not a list"),
        ("methods: [zero_shot\n", "not valid YAML at line 2"),
    ],
)
def test_bad_config_files_are_one_line_naming_the_file_and_key(tmp_path, capsys, text, message):
    grid = tmp_path / "grid.yaml"
    grid.write_text(text)
    with pytest.raises(BenchError, match=message):
        load_config_file(grid)
    assert main(["run", "--config", str(grid)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(grid) in err and message.split("'")[0] in err


def test_unreadable_config_file(tmp_path, capsys):
    assert main(["run", "--config", str(tmp_path / "absent.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{tmp_path / 'absent.yaml'}: cannot read the config file (No such file or directory)" in err
    with pytest.raises(BenchError, match="cannot read the config file") as info:
        load_config_file(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_the_config_files_content_goes_into_the_sweep_manifest(tmp_path, data_root, monkeypatch):
    from bench.slurm.manifest import find_manifest

    monkeypatch.setattr(pdb, "post_mortem", lambda *a, **k: None)
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"methods: [zero_shot]\nshots: [1]\nseeds: [1]\nbackbone: {TINY}\nexecutor: debug\n")
    assert (
        main(
            [
                "run",
                "--config",
                str(grid),
                "--data-root",
                str(data_root),
                "--cache-dir",
                str(tmp_path / "c"),
                "--results",
                str(tmp_path / "r"),
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    manifest = find_manifest(tmp_path / "r")
    assert manifest.config == {
        "methods": ["zero_shot"],
        "shots": [1],
        "seeds": [1],
        "backbone": TINY,
        "executor": "debug",
    }
    assert str(grid) not in json.dumps(manifest.config)


def test_sweep_only_options_from_a_file_need_a_sweep_executor(tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text("qos: normal\nsetup: [module load cuda]\n")
    assert main(["run", "--config", str(grid)]) == 2
    assert "--qos, --setup only apply to sweeps" in capsys.readouterr().err


def test_folder_defaults_are_declared_only_in_run_config():
    root = Path(__file__).resolve().parent.parent
    sources = [
        p for d in ("bench", "datasets", "reports", "slurm", "methods") for p in (root / d).rglob("*.py")
    ]
    declaring = sorted(
        str(p.relative_to(root))
        for p in sources
        if p.name != "run_config.py" and any(f.env in p.read_text() for f in FOLDERS.values())
    )
    assert declaring == [], "declare folder defaults through bench.run_config.FOLDERS / add_folder_argument"
