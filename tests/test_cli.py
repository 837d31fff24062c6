import json

import pytest

from bench.cli import main


def _args(tmp_path, data_root, *extra):
    return [
        "run",
        "--data-root",
        str(data_root),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--results",
        str(tmp_path / "results"),
        "--device",
        "cpu",
        "--no-progress",
        *extra,
    ]


def test_run_then_report_then_resume(tmp_path, data_root, capsys):
    assert (
        main(
            _args(
                tmp_path, data_root, "--methods", "zero_shot,linear_probe", "--shots", "1,2", "--seeds", "1,2"
            )
        )
        == 0
    )
    assert "8 cells run, 0 already done" in capsys.readouterr().out
    assert (
        main(
            _args(
                tmp_path, data_root, "--methods", "zero_shot,linear_probe", "--shots", "1,2", "--seeds", "1,2"
            )
        )
        == 0
    )
    assert "0 cells run, 8 already done (resumed)" in capsys.readouterr().out
    assert main(["report", "--results", str(tmp_path / "results"), "--format", "json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert len(payload["cells"]) == 4 and payload["missing"] == [] and payload["failed"] == []
    out_file = tmp_path / "table.md"
    assert main(["report", "--results", str(tmp_path / "results"), "--out", str(out_file)]) == 0
    assert "| Linear probe" in out_file.read_text()  # the name papers print


def test_dry_run_counts_done_cells(tmp_path, data_root, capsys):
    main(_args(tmp_path, data_root, "--methods", "zero_shot", "--shots", "1", "--seeds", "1"))
    capsys.readouterr()
    assert (
        main(
            _args(
                tmp_path, data_root, "--methods", "zero_shot", "--shots", "1,2", "--seeds", "1", "--dry-run"
            )
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "2 cells, 1 done, 1 to run" in out
    assert not list((tmp_path / "results").rglob("k02-*.json"))


def test_user_errors_exit_2_with_one_line(tmp_path, data_root, capsys):
    assert main(_args(tmp_path, data_root, "--methods", "clip_adaptor")) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench: error: unknown method 'clip_adaptor'. Did you mean: clip_adapter")
    assert err.count("\n") == 1
    assert main(_args(tmp_path, data_root, "--shots", "one")) == 2
    assert "--shots" in capsys.readouterr().err
    assert main(_args(tmp_path, data_root, "--backbone", "RN50")) == 2
    assert "is not ARCH/WEIGHTS" in capsys.readouterr().err
    assert main(["report", "--results", str(tmp_path / "nothing")]) == 2


def test_methods_lists_config_fields_and_defaults(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "clip_adapter (v2, built-in)" in out
    assert "    alpha = 0.2" in out and "    reduction = 4" in out and "    branch = 'visual'" in out
    headers = {line.split(" ")[0]: line for line in out.splitlines() if not line.startswith(" ")}
    for name in (
        "coop",
        "clip_adapter_hyper",
        "tip_adapter",
        "tip_adapter_f",
        "lp_pp",
        "clap",
        "linear_probe_zs",
    ):
        assert headers[name].startswith(f"{name} (v1, built-in): ")
    assert "    class_token_position = 'end'" in out and "    constraint = 'l2'" in out
    assert "    (per dataset/shots, default_config sets: alpha, epochs; see --dataset)" in out  # α by dataset
    assert "    --tune searches: alpha [0, 1]" in out and "    --tune searches: nothing" in out


def test_methods_for_a_cell_show_its_defaults_and_search_space(capsys):
    assert main(["methods", "clip_adapter,coop", "--dataset", "dtd", "--shots", "2"]) == 0
    out = capsys.readouterr().out
    assert "    alpha = 0.6  (dtd, 2 shots; class default 0.2)" in out  # the paper's DTD ratio
    assert "    epochs = 100  (dtd, 2 shots; class default 200)" in out  # CoOp's epochs at 2 shots
    assert "    --tune searches: lr [0.0002, 0.02] log, n_ctx {4, 8, 16}" in out
    assert "zero_shot" not in out


@pytest.mark.parametrize(
    "setting,message",
    [
        ("clip_adapter.alpha=7", "config field clip_adapter.alpha: alpha = 7.0 is outside [0, 1]"),
        (
            "clip_adapter.reduction=0",
            "config field clip_adapter.reduction: reduction = 0 is outside [1, inf]",
        ),
        ("clip_adapter.epochs=-5", "config field clip_adapter.epochs: epochs = -5 is outside [0, inf]"),
        ("clip_adapter.lr=0", "config field clip_adapter.lr: lr = 0.0 must be positive"),
    ],
)
def test_out_of_range_config_values_are_refused_before_any_work(tmp_path, capsys, setting, message):
    results = tmp_path / "results"
    assert (
        main(
            [
                "run",
                "--methods",
                "clip_adapter",
                "--shots",
                "1",
                "--seeds",
                "1",
                "--set",
                setting,
                "--results",
                str(results),
                "--cache-dir",
                str(tmp_path / "cache"),
                "--no-progress",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not list(results.rglob("*.json"))
