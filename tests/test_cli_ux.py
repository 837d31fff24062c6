"""The command line as a user meets it: a fast --help that imports no torch, --version, python -m bench,
options after the command, --json outputs, documented exit codes, repeated --set, report filters on
miniature records."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from bench.cli import EXIT_USAGE, build_parser, main

from .report_fixtures import record, save


def _python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return done.stdout


def test_help_imports_no_torch_numpy_or_pandas():
    out = _python(
        "import sys\nfrom bench.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('HEAVY', sorted(m for m in ('torch', 'numpy', 'pandas', 'scipy') if m in sys.modules))"
    )
    assert "exit status:" in out and "usage error" in out and "interrupted" in out
    assert out.strip().endswith("HEAVY []")


def test_version_and_python_dash_m(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("bench ")
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--version"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.startswith("bench ")


def test_verbose_is_accepted_after_the_command(capsys):
    assert main(["methods", "zero_shot", "-v"]) == 0
    assert main(["-v", "methods", "zero_shot"]) == 0
    capsys.readouterr()


def test_every_command_still_has_its_full_parser():
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert {"run", "methods", "report", "data", "status", "demo", "perf", "weights"} <= set(commands)
    assert (
        "--format" in commands["report"]._option_string_actions
        and "-v" in commands["report"]._option_string_actions
    )


def test_methods_json(capsys):
    assert main(["methods", "clip_adapter", "--dataset", "dtd", "--shots", "2", "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["name"] == "clip_adapter" and entry["config"]["alpha"] == 0.6 and "alpha" in entry["search"]


def test_data_list_json(tmp_path, capsys):
    assert main(["data", "list", "--json", "--data-root", str(tmp_path)]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["dtd"]["status"] == "missing" and rows["synthetic"]["kind"] == "generated"


def test_dry_run_json(tmp_path, capsys):
    assert (
        main(
            [
                "run",
                "--dry-run",
                "--json",
                "--methods",
                "zero_shot",
                "--shots",
                "1,2",
                "--seeds",
                "1",
                "--results",
                str(tmp_path / "results"),
                "--cache-dir",
                str(tmp_path / "cache"),
                "--data-root",
                str(tmp_path / "data"),
            ]
        )
        == 0
    )
    plan = json.loads(capsys.readouterr().out)
    assert plan["total"] == 2 and plan["todo"] == 2 and {c["done"] for c in plan["cells"]} == {False}


def test_a_repeated_set_for_one_field_is_a_usage_error(tmp_path, capsys):
    code = main(
        [
            "run",
            "--methods",
            "clip_adapter",
            "--set",
            "clip_adapter.alpha=0.5",
            "--set",
            "clip_adapter.alpha=0.6",
            "--results",
            str(tmp_path),
            "--dry-run",
        ]
    )
    err = capsys.readouterr().err
    assert code == EXIT_USAGE and "clip_adapter.alpha is set twice" in err and err.count("\n") == 1


def test_report_dataset_filter_matches_miniature_records(tmp_path, capsys):
    for seed in (1, 2):
        save(tmp_path, record("zero_shot", "dtd", 1, seed, 0.4))
    for path in tmp_path.rglob(
        "*.json"
    ):  # mark them as records of a miniature, as bench data miniature makes
        content = json.loads(path.read_text())
        content["data"]["miniature"] = True
        path.write_text(json.dumps(content))
    assert main(["report", "--results", str(tmp_path), "--datasets", "dtd", "--format", "json"]) == 0
    cells = json.loads(capsys.readouterr().out)["cells"]
    assert {c["dataset"] for c in cells} == {"dtd (miniature)"}


@pytest.mark.skipif(
    importlib.util.find_spec("argcomplete") is None, reason="the completion extra is not installed"
)
def test_shell_completion_through_argcomplete(tmp_path):
    out = tmp_path / "completions"
    env = {
        **os.environ,
        "_ARGCOMPLETE": "1",
        "COMP_LINE": "bench report --for",
        "COMP_POINT": "18",
        "_ARGCOMPLETE_STDOUT_FILENAME": str(out),
    }
    code = "import sys\nsys.argv = ['bench']\nfrom bench.cli import main\nmain()"
    subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        timeout=120,
        check=True,
        pass_fds=(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    assert out.read_text().split() == ["--format"]
