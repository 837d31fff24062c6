from importlib.metadata import EntryPoint

import pytest

from bench.errors import BenchError
from bench.registry import Registry

BUILTINS = {
    "zero_shot": "bench.methods.zero_shot:ZeroShot",
    "clip_adapter": "bench.methods.clip_adapter:ClipAdapter",
    "clip_adapter_hyper": "bench.methods.clip_adapter:ClipAdapter",
}


def test_get_imports_lazily_and_returns_the_object():
    from bench.methods.zero_shot import ZeroShot

    registry = Registry("method", BUILTINS, plugins=[])
    assert registry.get("zero_shot") is ZeroShot
    assert registry.origin("zero_shot") == "built-in"


def test_unknown_name_suggests_close_matches():
    registry = Registry("method", BUILTINS, plugins=[])
    with pytest.raises(BenchError, match=r"unknown method 'zeroshot'\. Did you mean: zero_shot\?"):
        registry.get("zeroshot")


def test_entry_point_plugins_are_added_and_duplicates_rejected():
    plugin = EntryPoint(name="my_method", value="bench.methods.zero_shot:ZeroShot", group="bench.methods")
    registry = Registry("method", BUILTINS, plugins=[plugin])
    assert "my_method" in registry.names()
    assert "entry point" in registry.origin("my_method")
    clash = EntryPoint(name="zero_shot", value="somewhere:Else", group="bench.methods")
    with pytest.raises(BenchError, match="two methods are registered as 'zero_shot'"):
        Registry("method", BUILTINS, plugins=[clash])


def test_broken_target_names_the_entry():
    registry = Registry("method", {"broken": "bench.methods.nope:Missing"}, plugins=[])
    with pytest.raises(BenchError, match="'broken' .* cannot be loaded"):
        registry.get("broken")


def test_expand_all_patterns_and_lists_keep_order_without_duplicates():
    registry = Registry("method", BUILTINS, plugins=[])
    assert registry.expand("all") == ["clip_adapter", "clip_adapter_hyper", "zero_shot"]
    assert registry.expand("zero_shot,clip_adapter*") == ["zero_shot", "clip_adapter", "clip_adapter_hyper"]
    with pytest.raises(BenchError, match="no method matches"):
        registry.expand("lin*")
    with pytest.raises(BenchError, match="no method named"):
        registry.expand(" , ")


def test_grid_lists_with_repeats_or_nothing_in_them_are_refused(capsys):
    from bench.cli import main

    for flags, message in (
        (["--shots", "1,1"], "--shots: '1,1' lists 1 more than once"),
        (["--seeds", "2,2,3"], "--seeds: '2,2,3' lists 2 more than once"),
        (["--datasets", ","], "--datasets: ',' names no few-shot dataset"),
        (["--backbone", ","], "--backbone: no backbone named"),
    ):
        assert main(["run", "--dry-run", *flags]) == 2
        assert message in capsys.readouterr().err


def test_installed_registries_hold_the_core_methods_and_synthetic():
    from bench.datasets import dataset_registry
    from bench.methods import method_registry

    assert {"zero_shot", "linear_probe", "clip_adapter"} <= set(method_registry().names())
    assert "synthetic" in dataset_registry().names()


def test_an_installed_distribution_adds_a_method_through_its_entry_point(tmp_path, monkeypatch, capsys):
    """The real discovery path (importlib.metadata over sys.path), as `pip install` of a plugin leaves it."""
    from bench.cli import main

    dist = tmp_path / "bench_plugin_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bench-plugin-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[bench.methods]\nmy_zero_shot = bench.methods.zero_shot:ZeroShot\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry("method", BUILTINS, group="bench.methods")
    assert "my_zero_shot" in registry.names()
    assert registry.origin("my_zero_shot") == (
        "entry point 'bench.methods.zero_shot:ZeroShot' from bench-plugin-demo"
    )
    assert registry.get("my_zero_shot").__name__ == "ZeroShot"
    import bench.methods

    bench.methods.method_registry.cache_clear()  # the CLI's registry is built once per process
    try:
        assert main(["methods", "my_zero_shot"]) == 0
        assert (
            "my_zero_shot (v1, entry point 'bench.methods.zero_shot:ZeroShot' from bench-plugin-demo)"
            in capsys.readouterr().out
        )
    finally:
        bench.methods.method_registry.cache_clear()
