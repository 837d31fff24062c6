"""Plugins without packaging (bench.plugins): methods and datasets from files, folders and spec files through the
registries; bad plugins are one line naming the file; declared subsets of known datasets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench.cli import main
from bench.datasets import dataset_registry, read_dataset
from bench.datasets.catalog import SYNTHETIC
from bench.datasets.spec_files import load_spec_file
from bench.errors import BenchError
from bench.methods import method_registry
from bench.plugins import activated

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples" / "extending"
METHOD = (EXAMPLES / "prototype_blend.py").read_text()


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_file_a_package_and_a_folder_register_through_the_same_registries(tmp_path, monkeypatch):
    monkeypatch.delenv("BENCH_PLUGINS", raising=False)
    single = _write(tmp_path / "one.py", METHOD)
    package = _write(
        tmp_path / "pkg" / "__init__.py", "from .impl import Blend2\nBENCH_METHODS = {'blend2': Blend2}\n"
    )
    _write(
        tmp_path / "pkg" / "impl.py",
        METHOD.replace("BENCH_METHODS = ", "_UNUSED = ")
        + "\nclass Blend2(PrototypeBlend):\n    name = 'blend2'\n",
    )
    folder = tmp_path / "more"
    _write(folder / "m.py", METHOD.replace('"prototype_blend"', '"blend3"'))
    shutil.copy(EXAMPLES / "my_patterns.yaml", folder / "my_patterns.yaml")
    with activated([str(single), str(package.parent), str(folder)]):
        methods = method_registry()
        assert {"prototype_blend", "blend2", "blend3", "zero_shot"} <= set(methods.names())
        assert methods.origin("blend2") == f"plugin {package.parent.resolve()}"
        spec = dataset_registry().get("my_patterns")
        assert spec.prompts["coop"] == ("a photo of a {}.",) and len(spec.classnames) == 8
    assert "prototype_blend" not in method_registry().names()  # the environment is restored


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "boom.py",
            "raise ImportError('no module named cupy')\n",
            "plugin raised ImportError on import: no module named cupy",
        ),
        ("syntax.py", "def broken(:\n", "plugin raised SyntaxError on import"),
        (
            "taken.py",
            METHOD.replace('"prototype_blend": PrototypeBlend', '"zero_shot": PrototypeBlend'),
            "two methods are registered as 'zero_shot': built-in and plugin",
        ),
        ("empty.py", "X = 1\n", "plugin defines neither BENCH_METHODS nor BENCH_DATASETS"),
        (
            "instance.py",
            METHOD.replace('{"prototype_blend": PrototypeBlend}', '{"prototype_blend": PrototypeBlend()}'),
            "method 'prototype_blend' is not a method class",
        ),
        ("notes.txt", "hello", "a plugin is a .py file, a folder or a"),
    ],
)
def test_bad_plugins_are_one_line_naming_the_file(tmp_path, monkeypatch, capsys, name, text, message):
    monkeypatch.delenv("BENCH_PLUGINS", raising=False)
    plugin = _write(tmp_path / name, text)
    assert main(["methods", "--plugins", str(plugin)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and str(plugin) in err, err


def test_a_missing_plugin_and_a_taken_dataset_name(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("BENCH_PLUGINS", raising=False)
    assert main(["methods", "--plugins", str(tmp_path / "absent.py")]) == 2
    assert "absent.py: plugin not found" in capsys.readouterr().err
    spec = _write(tmp_path / "dtd.yaml", "name: dtd\nfolder: x\nsplit_file: s.json\ntemplates: ['a {}.']\n")
    monkeypatch.setenv("BENCH_PLUGINS", str(spec))
    with pytest.raises(BenchError, match="two datasets are registered as 'dtd': built-in and plugin"):
        dataset_registry.cache_clear()
        dataset_registry()
    dataset_registry.cache_clear()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "name: a\nfolder: x\nsplit_file: s.json\ntemplates: ['a {}.']\ncolour: red\n",
            "unknown key(s) 'colour'",
        ),
        ("name: a\nfolder: x\nsplit_file: s.json\n", "no prompt templates"),
        (
            "name: a\nfolder: x\nsplit_file: s.json\ntemplates: ['a photo']\n",
            "needs exactly one {} for the class name",
        ),
        ("name: A b\nfolder: x\nsplit_file: s.json\ntemplates: ['a {}.']\n", "is not lowercase letters"),
        ("name: a\nsubset_of: pets\nsplit_file: s.json\n", "subset_of 'pets' is not a built-in dataset"),
        (
            "name: a\nfolder: [x]\nsplit_file: s.json\ntemplates: ['a {}.']\n",
            "key 'folder' must be a non-empty one-line",
        ),
        ("name: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_spec_files_name_the_file_and_key(tmp_path, text, message):
    path = _write(tmp_path / "spec.yaml", text)
    with pytest.raises(BenchError, match=re_escape(message)) as info:
        load_spec_file(path)
    assert str(path) in str(info.value)


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def _subset_data(data_root: Path, tmp_path: Path) -> Path:
    """A copy of the synthetic set whose extra split file lists only its first three classes."""
    root = tmp_path / "data"
    shutil.copytree(data_root / SYNTHETIC.folder, root / SYNTHETIC.folder)
    split = json.loads((root / SYNTHETIC.folder / SYNTHETIC.split_file).read_text())
    three = {k: [e for e in v if e[1] < 3] for k, v in split.items()}
    (root / SYNTHETIC.folder / "split_three.json").write_text(json.dumps(three))
    return root


def test_a_subset_is_refused_with_a_hint_and_read_once_declared(tmp_path, data_root):
    root = _subset_data(data_root, tmp_path)
    import dataclasses

    undeclared = dataclasses.replace(SYNTHETIC, split_file="split_three.json")
    with pytest.raises(BenchError, match="3 classes, expected 8 for 'synthetic'.*subset_of: synthetic"):
        read_dataset(undeclared, root)
    spec = load_spec_file(
        _write(
            tmp_path / "three.yaml",
            "name: three\nsubset_of: synthetic\nsplit_file: "
            "split_three.json\nclassnames: [red_stripes, green_stripes, blue_stripes]\n",
        )
    )
    assert (spec.folder, spec.prompts, spec.subset_of, spec.n_classes) == (
        "synthetic",
        SYNTHETIC.prompts,
        "synthetic",
        3,
    )
    assert spec.version == f"{SYNTHETIC.version}.subset1" and spec.generator is None
    splits = read_dataset(spec, root)
    assert splits.raw_classnames == ("red_stripes", "green_stripes", "blue_stripes")
    wrong = dataclasses.replace(spec, classnames=("red_stripes", "blue_stripes", "green_stripes"))
    with pytest.raises(BenchError, match="label 1 is 'green_stripes' in the split file but 'blue_stripes'"):
        read_dataset(wrong, root)


def test_a_declared_subset_runs_from_a_config_file_with_its_plugins(tmp_path, data_root, monkeypatch, capsys):
    monkeypatch.delenv("BENCH_PLUGINS", raising=False)
    root = _subset_data(data_root, tmp_path)
    _write(
        tmp_path / "conf" / "three.yaml", "name: three\nsubset_of: synthetic\nsplit_file: split_three.json\n"
    )
    shutil.copy(EXAMPLES / "prototype_blend.py", tmp_path / "conf" / "blend.py")
    grid = _write(
        tmp_path / "conf" / "grid.yaml",
        "plugins: [blend.py, three.yaml]\nmethods: [prototype_blend]\n"
        "datasets: [three]\nshots: [1]\nseeds: [1]\n",
    )
    assert (
        main(
            [
                "run",
                "--config",
                str(grid),
                "--data-root",
                str(root),
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
    [record] = list((tmp_path / "r").rglob("k01-s1-*.json"))
    assert json.loads(record.read_text())["spec"]["dataset"] == "three"
