import json
import math
import re
from html.parser import HTMLParser
from io import StringIO

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench.cli import main
from bench.errors import BenchError
from bench.reports import Filters, ReportOptions, render, results_frame
from bench.reports.formats import latex_text
from bench.results import load_results

from .report_fixtures import record, save, write_fixture_results

GOLDEN = __import__("pathlib").Path(__file__).parent / "golden"
COMPARE = ReportOptions(ci="coop", compare_paper=True, compare_methods=("clip_adapter", "zero_shot"))
IDS = ReportOptions(names={}, highlight=False)  # rows by identifier, no emphasis: for the aggregation tests


class _TagChecker(HTMLParser):
    """Fails on a closing tag that does not close the innermost open element."""

    VOID = {"meta", "br", "hr", "img", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.counts = [], {}

    def handle_starttag(self, tag, attrs):
        self.counts[tag] = self.counts.get(tag, 0) + 1
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack.pop() == tag, f"unbalanced </{tag}>"


@pytest.fixture
def frame(tmp_path):
    return results_frame(load_results(write_fixture_results(tmp_path)))


def _rows(markdown: str, section: str) -> list[list[str]]:
    """The table rows (cells stripped) of the first table after the heading that contains ``section``."""
    lines = markdown.split(section, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return [rows[0], *rows[2:]]  # header, then the body without the :--- rule


@pytest.mark.parametrize(
    "fmt,suffix", [("markdown", "md"), ("latex", "tex"), ("html", "html"), ("csv", "csv"), ("json", "json")]
)
def test_report_matches_golden_file(frame, fmt, suffix):
    expected = (GOLDEN / f"report.{suffix}").read_text()
    assert render(frame, fmt) == expected


def test_comparison_report_matches_golden_file(frame):
    assert render(frame, "markdown", COMPARE) == (GOLDEN / "report-compare.md").read_text()


def test_markdown_shows_mean_std_average_and_holes(frame):
    text = render(frame, "markdown")
    rows = _rows(text, "## RN50/openai · tuning: none\n")
    assert rows[0] == ["Method", "Shots", "DTD", "EuroSAT", "Average"]
    assert [
        "CLIP-Adapter",
        "1",
        "**46.00 ± 0.82**",
        "**61.00 ± 0.82**",
        "**53.50**",
    ] in rows  # best of 1 shot
    assert ["Linear probe", "1", "33.00 ± 2.45", "52.00 ± 1.63", "42.50"] in rows
    # paper order, zero-shot first and once (it sees no training images), without a spread it does not have
    assert ["Zero-shot CLIP", "0", "42.00", "37.50", "39.75"] == rows[1] and len(rows) == 6
    assert "84.50 ± 0.50 (2/3 seeds)" in text  # incomplete cell marked
    assert "Missing cells (1): clip_adapter/eurosat/k16/s3" in text
    assert "Failed cells (1): clip_adapter/dtd/k16/s1" in text
    oracle_part = text.split("tuning: oracle")[1].split("\n## ")[0]
    assert "ORACLE" in oracle_part and "CLIP-Adapter (oracle)" in oracle_part
    assert "70.00 (n=1)" in oracle_part and "± 0.00" not in text  # one seed: marked, never ± 0.00
    assert "70.00" not in text.split("tuning: oracle")[0]  # the oracle cell never enters the honest table


def test_header_lists_backbone_weights_preprocessing_and_prompt_sets(frame):
    text = render(frame, "markdown")
    header = text.split("## RN50/openai · tuning: none\n")[1].split("|")[0]
    assert "- Backbone: RN50/openai (architecture RN50)" in header
    assert "- Weights sha256: aaaaaaaaaaaa" in header
    assert "- Preprocessing: shortest 224px bicubic (published-number generation coop_v2)" in header
    assert "- Prompt sets: zero_shot: coop; linear_probe: n/a; clip_adapter: coop" in header


def test_average_panel_is_shots_by_method_with_spread_over_per_seed_averages(frame):
    rows = _rows(render(frame, "markdown"), "### Average over 2 datasets")
    assert rows[0] == ["Method", "1-shot", "16-shot"]
    lp = next(r for r in rows if r[0] == "Linear probe")
    per_seed = [(30 + 50) / 2, (33 + 52) / 2, (36 + 54) / 2]  # seeds 1..3, dtd and eurosat at 1 shot
    assert lp[1] == f"{np.mean(per_seed):.2f} ± {np.std(per_seed):.2f}"
    # clip_adapter 16-shot: dtd has seeds 2,3 and eurosat 1,2, so only seed 2 is common
    assert next(r for r in rows if r[0] == "CLIP-Adapter")[2] == "**75.50 (1/3 seeds)**"


def test_json_and_csv_are_machine_readable(frame):
    payload = json.loads(render(frame, "json"))
    cell = next(
        c
        for c in payload["cells"]
        if c["label"] == "zero_shot"
        and c["dataset"] == "dtd"
        and c["shots"] == 1
        and c["backbone"] == "RN50/openai"
    )
    assert cell["mean"] == 42.0 and cell["std"] == 0.0 and cell["n_seeds"] == 3 and cell["complete"] is True
    partial = next(
        c
        for c in payload["cells"]
        if c["label"] == "clip_adapter" and c["dataset"] == "eurosat" and c["shots"] == 16
    )
    assert partial["n_seeds"] == 2 and partial["n_expected"] == 3 and partial["complete"] is False
    assert any(c["oracle"] for c in payload["cells"]) and not all(c["oracle"] for c in payload["cells"])
    shift = {(t["label"], t["eval_set"]): t["mean"] for t in payload["transfer"]}
    assert shift[("clip_adapter", "imagenet_v2")] == 62.9
    table = pd.read_csv(StringIO(render(frame, "csv")))
    assert set(table["metric"]) == {
        "top1",
        "transfer/imagenet_v2/top1",
        "transfer/imagenet_sketch/top1",
        "base_top1",
        "new_top1",
        "harmonic_mean",
    }
    row = table[
        (table["label"] == "linear_probe")
        & (table["dataset"] == "dtd")
        & (table["shots"] == 1)
        & (table["metric"] == "top1")
    ].iloc[0]
    assert row["mean"] == 33.0 and row["ci95"] == round(1.96 * np.std([30, 33, 36]) / math.sqrt(3), 2)


def test_ci_options_use_the_named_formula(frame):
    values = np.array([30.0, 33.0, 36.0])  # linear_probe / dtd / 1 shot
    coop = render(frame, "markdown", ReportOptions(ci="coop"))
    assert f"33.00 ± {1.96 * np.std(values) / math.sqrt(3):.2f}" in coop and "1.96·σ/√n" in coop
    t = render(frame, "markdown", ReportOptions(ci="t"))
    half = stats.t.ppf(0.975, 2) * np.std(values, ddof=1) / math.sqrt(3)
    assert f"33.00 ± {half:.2f}" in t and "t(0.975, n−1)" in t


def test_filters_select_records_and_say_so(frame):
    text = render(
        frame,
        "markdown",
        ReportOptions(
            filters=Filters(datasets=("dtd",), methods=("clip*",), backbones=("RN50/*",), tune=("none",)),
            names={},
        ),
    )
    assert "Records selected with --methods clip* --datasets dtd --backbone RN50/* --tune none." in text
    rows = _rows(text, "## RN50/openai · tuning: none\n")
    assert rows[0] == ["Method", "Shots", "DTD", "Average"] and {r[0] for r in rows[1:]} == {"clip_adapter"}
    assert "ViT-B-16" not in text and "oracle" not in text.split("Records selected")[1]
    with pytest.raises(
        BenchError, match="--datasets: no result records match pets.*records have: dtd, eurosat"
    ):
        render(frame, "markdown", ReportOptions(filters=Filters(datasets=("pets",))))


def test_seeds_filter_sets_what_a_complete_cell_has(frame):
    text = render(frame, "markdown", ReportOptions(filters=Filters(seeds=(2, 3))))
    assert "66.50 ± 0.50" in text and "66.50 ± 0.50 (" not in text  # dtd/16 has seeds 2 and 3: complete now
    assert "85.00 (1/2 seeds)" in text  # eurosat/16 has seed 2 only: one seed has no spread


def test_differing_settings_are_not_averaged_unless_allowed(tmp_path):
    squash = {"resize": "squash", "image_size": 224, "interpolation": "bicubic"}
    for seed, top1 in ((1, 0.40), (2, 0.42)):
        save(tmp_path, record("zero_shot", "dtd", 1, seed, top1))
    save(tmp_path, record("zero_shot", "dtd", 1, 3, 0.50, preprocessing=squash))
    save(tmp_path, record("zero_shot", "eurosat", 1, 1, 0.30, prompts="ensemble"))
    save(tmp_path, record("zero_shot", "eurosat", 1, 2, 0.31, prompts="coop"))
    frame = results_frame(load_results(tmp_path))
    apart = render(frame, "markdown", IDS)
    assert apart.count("## RN50/openai · tuning: none") == 2  # preprocessing splits the table
    assert "zero_shot (prompts: coop)" in apart and "zero_shot (prompts: ensemble)" in apart
    assert "generation coop_v1" in apart and "MIXED" not in apart
    mixed = render(
        frame, "markdown", ReportOptions(allow_mixed=frozenset({"preprocessing", "prompts"}), names={})
    )
    assert mixed.count("## RN50/openai · tuning: none") == 1
    assert "- MIXED: cells average over differing preprocessing, prompts (--allow-mixed)" in mixed
    assert "mixed: shortest 224px bicubic + squash 224px bicubic" in mixed
    rows = _rows(mixed, "## RN50/openai")
    assert rows[1] == [
        "zero_shot",
        "0",
        f"44.00 ± {np.std([40, 42, 50]):.2f}",
        "30.50 ± 0.50 (2/3 seeds)",
        "37.25",
    ]
    with pytest.raises(BenchError, match="--allow-mixed"):
        render(frame, "markdown", ReportOptions(allow_mixed=frozenset({"tune"})))


def test_failed_record_without_identity_joins_its_table(tmp_path):
    save(tmp_path, record("zero_shot", "dtd", 1, 1, 0.40))
    orphan = record("zero_shot", "dtd", 1, 2, None, status="failed")
    orphan = type(orphan)(
        **{**orphan.to_json(), "backbone": {"id": "RN50/openai"}, "data": {}, "prompts": None}
    )
    save(tmp_path, orphan)
    text = render(results_frame(load_results(tmp_path)), "markdown")
    assert text.count("## RN50/openai") == 1 and "Failed cells (1): zero_shot/dtd/k1/s2" in text
    assert "40.00 (1/2 seeds)" in text


def test_transfer_and_base_to_new_tables(frame):
    text = render(frame, "markdown", IDS)
    shift = _rows(text, "### Distribution shift")
    assert shift[0] == [
        "Method",
        "Shots",
        "Trained on",
        "Source",
        "ImageNet-V2",
        "ImageNet-Sketch",
        "Average (shift sets)",
    ]
    assert shift[2] == [
        "clip_adapter",
        "16",
        "ImageNet",
        "71.10 ± 0.10",
        "62.90 ± 0.10",
        "46.90 ± 0.10",
        "54.90",
    ]
    b2n = _rows(text, "protocol: base2new")
    harmonic = 2 * 79.0 * 51.0 / (79.0 + 51.0)  # of the mean base and mean new accuracy
    assert ["clip_adapter", "16", f"79.00 / 51.00 / {harmonic:.2f}", f"79.00 / 51.00 / {harmonic:.2f}"] in b2n
    assert ["linear_probe", "16", "76.00 / — / —", "76.00 / — / —"] in b2n  # no for_classes: no new accuracy


def test_latex_and_html_are_well_formed(frame):
    tex = render(frame, "latex", COMPARE)
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == tex.count(r"\toprule") > 5
    assert r"CLIP-Adapter & 1 & \textbf{46.00 $\pm$ 0.92}" in tex and r"\label{tab:" in tex
    body = [line for line in tex.splitlines() if not line.startswith("%")]
    assert not any(ch in "".join(body) for ch in "±Δ—−")  # every symbol spelled for LaTeX outside comments
    page = render(frame, "html", COMPARE)
    checker = _TagChecker()
    checker.feed(page)
    assert checker.stack == [] and checker.counts["table"] == page.count("<table") > 5
    assert checker.counts["h2"] == render(frame, "markdown", COMPARE).count("\n## ")
    assert latex_text("a_b & 5% ± #1 {x}") == r"a\_b \& 5\% $\pm$ \#1 \{x\}"


def test_unknown_format_metric_and_empty_results(frame, tmp_path):
    with pytest.raises(BenchError, match="unknown report format"):
        render(frame, "docx")
    with pytest.raises(BenchError, match="published numbers are top-1"):
        render(frame, "markdown", ReportOptions(metric="top5", compare_paper=True))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchError, match="no result records"):
        render(results_frame(load_results(tmp_path / "empty")), "markdown")


def test_cli_report_every_format_plots_and_comparisons(tmp_path, capsys):
    results = write_fixture_results(tmp_path / "results")
    for fmt in ("markdown", "latex", "html", "csv", "json"):
        out = tmp_path / f"report.{fmt}"
        assert main(["report", "--results", str(results), "--format", fmt, "--out", str(out)]) == 0
        assert out.read_text() == render(results_frame(load_results(results)), fmt)
    assert (
        main(
            [
                "report",
                "--results",
                str(results),
                "--compare",
                "paper",
                "--tolerance",
                "0.1",
                "--compare-methods",
                "clip_adapter,zero_shot",
                "--datasets",
                "dtd,eurosat",
                "--shots",
                "1,16",
                "--plot",
                str(tmp_path / "plots"),
            ]
        )
        == 0
    )
    out = capsys.readouterr()
    assert (
        "Within ±0.1 pt" in out.out and "clip_adapter beats zero_shot on 2/2 datasets at 16 shots" in out.out
    )
    assert "plot files" in out.err and (tmp_path / "plots" / "RN50_openai-none" / "average.svg").is_file()
    assert main(["report", "--results", str(results), "--compare-methods", "clip_adapter"]) == 2
    assert "--compare-methods" in capsys.readouterr().err
    assert main(["report", "--results", str(results), "--compare-methods", "clip_adapter,coop"]) == 2
    assert "no results for 'coop'" in capsys.readouterr().err


def test_report_of_a_real_run_renders_everywhere(tmp_path, data_root, capsys):
    results = tmp_path / "results"
    assert (
        main(
            [
                "run",
                "--data-root",
                str(data_root),
                "--cache-dir",
                str(tmp_path / "cache"),
                "--results",
                str(results),
                "--device",
                "cpu",
                "--no-progress",
                "--methods",
                "zero_shot,linear_probe",
                "--shots",
                "1,2",
                "--seeds",
                "1,2",
            ]
        )
        == 0
    )
    capsys.readouterr()
    for fmt in ("markdown", "latex", "html", "csv", "json"):
        plot = ["--plot", str(tmp_path / "plots")] if fmt == "markdown" else []
        assert main(["report", "--results", str(results), "--format", fmt, "--compare", "paper", *plot]) == 0
        out = capsys.readouterr().out
        assert ("Linear probe" if fmt in ("markdown", "latex", "html") else "linear_probe") in out
        assert "bench-tiny/random" in out and not re.search(
            r"\bnan\b", out, flags=re.I
        )  # never a literal nan
    assert "No published number matches these cells (architecture bench-tiny" in render(
        results_frame(load_results(results)), "markdown", ReportOptions(compare_paper=True)
    )
    pngs = sorted(p.name for p in (tmp_path / "plots" / "bench-tiny_random-none").glob("*.png"))
    assert pngs == ["all.png", "average.png", "synthetic.png"]
    assert (
        main(
            [
                "report",
                "--results",
                str(results),
                "--format",
                "csv",
                "--compare-methods",
                "linear_probe,zero_shot",
            ]
        )
        == 0
    )
    table = pd.read_csv(StringIO(capsys.readouterr().out))
    assert (
        list(table["shots"]) == [1, 2]
        and set(table["n_pairs"]) == {2}
        and (table["a"] == "linear_probe").all()
    )


def test_tuned_cells_with_different_trial_budgets_get_their_own_rows(tmp_path):
    for seed, (short, long) in enumerate(((0.60, 0.64), (0.62, 0.66)), start=1):
        save(tmp_path, record("clip_adapter", "dtd", 1, seed, short, tune="val", trials=20))
        save(
            tmp_path,
            record(
                "clip_adapter",
                "dtd",
                1,
                seed,
                long,
                tune="val",
                trials=50,
                finished=f"2026-11-23T09:00:0{seed}+00:00",
            ),
        )  # older: must not vanish
    rows = _rows(render(results_frame(load_results(tmp_path)), "markdown", IDS), "## RN50/openai")
    assert ["clip_adapter (20 trials)", "1", "61.00 ± 1.00", "61.00"] in rows
    assert ["clip_adapter (50 trials)", "1", "65.00 ± 1.00", "65.00"] in rows
    save(tmp_path / "one", record("clip_adapter", "dtd", 2, 1, 0.70, tune="val", trials=20))
    one_budget = _rows(
        render(results_frame(load_results(tmp_path / "one")), "markdown", IDS), "## RN50/openai"
    )
    assert one_budget[1][0] == "clip_adapter"  # a single budget adds nothing to the label


def test_a_trial_batched_study_is_a_row_of_its_own(tmp_path):
    """--trial-batch 4 is another search (its own run id and study): a later batch-4 record never replaces the
    one-at-a-time record of the same cell, and a batch-1 sampler section adds no label."""
    for seed, (one, four) in enumerate(((0.60, 0.70), (0.62, 0.72)), start=1):
        save(tmp_path, record("clip_adapter", "dtd", 1, seed, one, tune="val", trials=20, trial_batch=1))
        save(
            tmp_path,
            record(
                "clip_adapter",
                "dtd",
                1,
                seed,
                four,
                tune="val",
                trials=20,
                trial_batch=4,
                finished=f"2026-11-24T10:00:0{seed}+00:00",
            ),
        )
    frame = results_frame(load_results(tmp_path))
    assert sorted(frame["label"].unique()) == ["clip_adapter", "clip_adapter (trial batch 4)"]
    assert sorted(frame.loc[frame["label"] == "clip_adapter", "top1"]) == pytest.approx([60.0, 62.0])


def test_another_sampling_is_a_row_of_its_own(tmp_path):
    """Subsets drawn with --sampling dassl_full_val (another selection split) never average with, or
    replace, the default's; ImageNet's +val_from_train is the dataset's and adds no label."""
    for seed, (plain, full) in enumerate(((0.60, 0.70), (0.62, 0.72)), start=1):
        save(tmp_path, record("tip_adapter", "dtd", 1, seed, plain, split_protocol="dassl"))
        save(tmp_path, record("tip_adapter", "dtd", 1, seed, full, split_protocol="dassl_full_val"))
        save(
            tmp_path, record("tip_adapter", "imagenet", 1, seed, plain, split_protocol="dassl+val_from_train")
        )
    frame = results_frame(load_results(tmp_path))
    assert set(frame["label"]) == {"tip_adapter", "tip_adapter (sampling: dassl_full_val)"}
    assert len(frame) == 6
    rows = _rows(render(frame, "markdown", IDS), "## RN50/openai")
    assert any(r[0] == "tip_adapter (sampling: dassl_full_val)" and "71.00 ± 1.00" in r for r in rows)


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda r: [1, 2], "a result record is a JSON object, not list"),
        (lambda r: {**r, "metrics": "x"}, "field 'metrics' must be a JSON object"),
        (lambda r: {**r, "spec": {k: v for k, v in r["spec"].items() if k != "shots"}}, "spec lacks shots"),
        (lambda r: {**r, "metrics": {"top5": 0.9}}, "an ok record needs metrics.top1 as a fraction in"),
        (lambda r: {**r, "status": "maybe"}, "field 'status' is 'maybe'"),
    ],
)
def test_a_damaged_record_is_one_error_naming_the_file(tmp_path, capsys, damage, message):
    root = write_fixture_results(tmp_path / "results")
    victim = sorted(root.rglob("k*.json"))[3]
    victim.write_text(json.dumps(damage(json.loads(victim.read_text()))))
    assert main(["report", "--results", str(root)]) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1 and str(victim) in err and message in err and "Fix: delete it and re-run" in err
    )
