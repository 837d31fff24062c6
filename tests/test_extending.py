"""docs/extending.md, run as written: the tutorial's method and dataset files (docs/examples/extending/) are the
files the doc shows, and its commands run, in a fresh folder, to a report with a row per method."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from bench.cli import main

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "extending.md"
FILES = ROOT / "docs" / "examples" / "extending"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_doc_shows_the_tutorial_files_as_they_are():
    python, yaml = _blocks("python"), _blocks("yaml")
    assert (FILES / "prototype_blend.py").read_text() in python
    assert (FILES / "my_patterns.yaml").read_text() in yaml
    pets3 = (FILES / "pets3.yaml").read_text()
    assert any(block in pets3 for block in yaml)


def test_the_tutorial_commands_run_and_report_both_methods(tmp_path, monkeypatch, capsys):
    (tmp_path / "docs").symlink_to(ROOT / "docs")
    monkeypatch.chdir(tmp_path)
    for var in ("BENCH_DATA_ROOT", "BENCH_CACHE_DIR", "BENCH_RESULTS_DIR", "BENCH_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    [commands] = [b for b in _blocks("bash") if "BENCH_PLUGINS" in b]
    outputs = {}
    for line in filter(None, commands.splitlines()):
        words = shlex.split(line)
        if words[:2] == ["python", "-c"]:
            exec(words[2], {})  # noqa: S102 - the doc's own one-liner
        elif words[0] == "mv":
            Path(words[1]).rename(words[2])
        elif words[0] == "export":
            name, _, value = words[1].partition("=")
            monkeypatch.setenv(name, value)
        elif words[0] == "bench":
            assert (
                main([*words[1:], *(["--device", "cpu", "--no-progress"] if words[1] == "run" else [])]) == 0
            ), line
            outputs[words[1]] = capsys.readouterr().out
        else:
            pytest.fail(f"the tutorial has a command this test cannot run: {line}")
    assert "prototype_blend (v1, plugin " in outputs["methods"] and "blend = 0.5" in outputs["methods"]
    rows = [line.split("|")[1].strip() for line in outputs["report"].splitlines() if line.startswith("| ")]
    assert {"prototype_blend", "prototype_blend[blend=0.8]"} <= set(rows), outputs["report"]
    assert any(row in ("zero_shot", "Zero-shot CLIP") for row in rows), outputs["report"]
