import json
import re

import pandas as pd
import pytest

from bench.errors import BenchError
from bench.protocols import PROTOCOLS
from bench.reports import ReportOptions, render, results_frame
from bench.reports.blocks import DATASET_TITLES, METHOD_ORDER, STANDARD_DATASETS
from bench.reports.paper import AVERAGE, MARKERS, best_match, compare, default_path, load_paper_numbers
from bench.results import load_results

from .report_fixtures import record, save


def test_shipped_numbers_are_sourced_marked_and_use_registry_names():
    doc = json.loads(default_path().read_text())
    paper = load_paper_numbers()
    assert len(paper.values) > 400
    for series in doc["series"]:
        assert series["marker"] in MARKERS  # [?] numbers (from memory) are not shipped
        assert series["method"] in METHOD_ORDER and set(series["values"]) <= {*DATASET_TITLES, AVERAGE}
        assert series["generation"] in doc["generations"]
        assert series.get("protocol", "fewshot") in PROTOCOLS  # bench's own protocol names
        source = doc["sources"][series["source"]]
        assert source["citation"] and source["where"]
        if series.get("protocol") == "base2new":
            assert series["shots"] and all(
                set(v) == {"base", "new", "hm"}
                for raw in series["values"].values()
                for v in (raw if isinstance(raw, list) else [raw])
            )
    # spot checks against the published tables
    pick = {(v.source, v.method, v.dataset, v.shots): v.value for v in paper.values}
    assert pick[("tip_adapter_exp_log", "clip_adapter", "eurosat", 16)] == 84.43
    assert pick[("coop_protocol_zero_shot", "zero_shot", "imagenet", None)] == 58.18
    assert pick[("tip_adapter_paper_imagenet", "tip_adapter_f", "imagenet", 1)] == 61.32
    assert pick[("clip_adapter_v1_fig3", "coop", "eurosat", 1)] == 20.5
    parts = {(v.source, v.method, v.dataset, v.shots, v.part): v.value for v in paper.values}
    assert [parts[("maple_readme", "maple", AVERAGE, 16, p)] for p in ("base", "new", "hm")] == [
        82.28,
        75.14,
        78.55,
    ]
    assert [parts[("kgcoop_readme", "kgcoop", AVERAGE, 16, p)] for p in ("base", "new", "hm")] == [
        80.73,
        73.6,
        77.0,
    ]
    assert {v.protocol for v in paper.values if v.source in ("maple_readme", "kgcoop_readme")} == {"base2new"}
    assert {v.part for v in paper.values if v.protocol == "fewshot"} == {"top1"}
    lora = {(v.dataset, v.shots): v for v in paper.values if v.source == "clip_lora_readme_fig2"}
    assert len(lora) == 55 and {v.marker for v in lora.values()} == {"~"}  # digitised from the README figure
    assert (lora[("eurosat", 16)].value, lora[("food101", 4)].value) == (92.2, 82.7)


def test_match_respects_generation_prompts_and_markers():
    paper = load_paper_numbers()
    kw = {"method": "zero_shot", "arch": "RN50", "dataset": "imagenet", "shots": 16}
    assert best_match(paper, **kw, generation="coop_v2", prompts="coop").value == 58.18
    ensemble = best_match(paper, **kw, generation="coop_v2", prompts="coop_ensemble")
    assert ensemble.value == 60.32 and ensemble.source == "tip_adapter_exp_log"
    old = best_match(paper, **kw, generation="coop_v1", prompts="coop")
    assert old.value == 55.4 and old.marker == "~"
    assert best_match(paper, **kw, generation="?", prompts="coop") is None
    assert best_match(paper, **{**kw, "arch": "bench-tiny"}, generation="coop_v2", prompts="coop") is None
    lp = best_match(
        paper,
        method="linear_probe",
        arch="RN50",
        dataset="imagenet_r",
        shots=16,
        generation="coop_v2",
        prompts=None,
    )
    assert lp.value == 34.86 and lp.marker == "R"


def test_compare_flags_cells_beyond_the_tolerance():
    cells = pd.DataFrame(
        [
            {
                "method_name": "clip_adapter",
                "arch": "RN50",
                "dataset": "dtd",
                "eval_set": "dtd",
                "shots": 16,
                "generation": "coop_v2",
                "prompts": "coop",
                "mean": 66.5,
            },
            {
                "method_name": "clip_adapter",
                "arch": "RN50",
                "dataset": "dtd",
                "eval_set": "dtd",
                "shots": 1,
                "generation": "coop_v2",
                "prompts": "coop",
                "mean": 43.0,
            },
            {
                "method_name": "zero_shot",
                "arch": "RN50",
                "dataset": "imagenet",
                "eval_set": "imagenet",
                "shots": 4,
                "generation": "coop_v2",
                "prompts": "n/a",
                "mean": 58.0,
            },
            {
                "method_name": "clip_adapter",
                "arch": "RN50",
                "dataset": "synthetic",
                "eval_set": "synthetic",
                "shots": 1,
                "generation": "coop_v2",
                "prompts": "coop",
                "mean": 50.0,
            },
        ]
    )
    out = compare(cells, load_paper_numbers(), tolerance=1.0)
    assert out["paper"].tolist()[:2] == [65.96, 45.80]
    assert out["delta"].round(2).tolist()[:2] == [0.54, -2.8] and out["within"].tolist()[:2] == [True, False]
    assert out.loc[2, "note"].startswith("prompts differ") and pd.isna(out.loc[3, "paper"])


def test_source_filter_and_broken_files(tmp_path):
    only = load_paper_numbers(sources=("hc_paper_table2",))
    assert {v.source for v in only.values} == {"hc_paper_table2"}
    with pytest.raises(BenchError, match="--paper-source.*unknown paper source"):
        load_paper_numbers(sources=("coop_sheet",))
    doc = json.loads(default_path().read_text())
    doc["series"][0]["marker"] = "?"
    bad = tmp_path / "paper.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(BenchError, match=r"series\[0\]: marker '\?'"):
        load_paper_numbers(bad)
    doc["series"][0]["marker"] = "V"
    doc["series"][2]["values"]["dtd"] = [1.0, 2.0]
    bad.write_text(json.dumps(doc))
    with pytest.raises(BenchError, match="dtd: 2 values for 5 shot counts"):
        load_paper_numbers(bad)
    bad.write_text("{")
    with pytest.raises(BenchError, match="cannot read published numbers"):
        load_paper_numbers(bad)


def test_protocol_decides_what_matches_both_ways():
    paper = load_paper_numbers()
    b2n = {"method": "maple", "arch": "ViT-B-16", "dataset": AVERAGE, "shots": 16, "generation": "coop_v2"}
    found = {
        p: best_match(paper, **b2n, prompts=None, protocol="base2new", part=p) for p in ("base", "new", "hm")
    }
    assert {p: (v.value, v.source, v.marker) for p, v in found.items()} == {
        "base": (82.28, "maple_readme", "V"),
        "new": (75.14, "maple_readme", "V"),
        "hm": (78.55, "maple_readme", "V"),
    }
    assert best_match(paper, **b2n, prompts=None) is None  # a few-shot cell never meets a base2new value
    assert best_match(paper, **b2n, prompts=None, protocol="base2new", part="top1") is None
    assert best_match(paper, **{**b2n, "shots": 4}, prompts=None, protocol="base2new", part="base") is None
    fewshot = {
        "method": "clip_adapter",
        "arch": "RN50",
        "dataset": "dtd",
        "shots": 16,
        "generation": "coop_v2",
    }
    assert best_match(paper, **fewshot, prompts="coop").value == 65.96
    for part in ("top1", "base", "new", "hm"):  # ... and a base2new cell never meets a few-shot value
        assert best_match(paper, **fewshot, prompts="coop", protocol="base2new", part=part) is None

    cells = pd.DataFrame(
        [
            {
                "method_name": "kgcoop",
                "arch": "ViT-B-16",
                "dataset": AVERAGE,
                "eval_set": AVERAGE,
                "shots": 16,
                "generation": "coop_v2",
                "prompts": "n/a",
                "protocol": "base2new",
                "part": part,
                "mean": mean,
            }
            for part, mean in (("base", 80.5), ("new", 75.0), ("hm", 77.65))
        ]
        + [
            {
                "method_name": "kgcoop",
                "arch": "ViT-B-16",
                "dataset": AVERAGE,
                "eval_set": AVERAGE,
                "shots": 16,
                "generation": "coop_v2",
                "prompts": "n/a",
                "protocol": "fewshot",
                "part": "top1",
                "mean": 80.5,
            },
            {
                "method_name": "clip_adapter",
                "arch": "RN50",
                "dataset": "dtd",
                "eval_set": "dtd",
                "shots": 16,
                "generation": "coop_v2",
                "prompts": "coop",
                "protocol": "base2new",
                "part": "base",
                "mean": 66.0,
            },
        ]
    )
    out = compare(cells, paper, tolerance=1.0)
    assert out["paper"].tolist()[:3] == [80.73, 73.6, 77.0] and out["paper_source"][0] == "kgcoop_readme"
    assert out["delta"].tolist()[:3] == [-0.23, 1.4, 0.65] and out["within"].tolist()[:3] == [
        True,
        False,
        True,
    ]
    assert out["paper"][3:].isna().all()


def _b2n_records(root, method, datasets, base, new, *, seeds=(1, 2), protocol="base2new"):
    """ViT-B-16 records at 16 shots; a few-shot record scores ``base`` as its top-1."""
    for dataset in datasets:
        for seed in seeds:
            metrics = None
            if protocol == "base2new":
                metrics = {"base_top1": base, "new_top1": new, "harmonic_mean": 2 * base * new / (base + new)}
            save(
                root,
                record(
                    method,
                    dataset,
                    16,
                    seed,
                    base,
                    backbone="ViT-B-16/openai",
                    prompts=None,
                    protocol=protocol,
                    extra_metrics=metrics,
                ),
            )


def test_report_compares_base2new_tables_with_base2new_numbers_only(tmp_path):
    _b2n_records(tmp_path, "maple", STANDARD_DATASETS, 0.82, 0.75)
    _b2n_records(tmp_path, "maple", ["dtd"], 0.70, 0.70, protocol="fewshot")
    text = render(results_frame(load_results(tmp_path)), "markdown", ReportOptions(compare_paper=True))
    b2n = text.split("protocol: base2new", 1)[1]
    block = b2n.split("### Comparison with published base-to-new numbers", 1)[1]
    rows = [
        [c.strip() for c in line.strip("|").split("|")] for line in block.splitlines() if line.startswith("|")
    ]
    hm = 2 * 82 * 75 / (82 + 75)
    assert rows[0][:8] == ["Method", "Shots", "Dataset", "Part", "Ours", "Paper", "Δ", "Within ±1 pt"]
    assert [r[:7] for r in rows[2:]] == [
        ["MaPLe", "16", "Average", "base", "82.00", "82.28", "−0.28"],
        ["MaPLe", "16", "Average", "new", "75.00", "75.14", "−0.14"],
        ["MaPLe", "16", "Average", "H", f"{hm:.2f}", "78.55", f"−{78.55 - round(hm, 2):.2f}"],
    ]
    assert "maple_readme [V]" in block and "3 of 3 compared values are within ±1 pt" in block
    assert "cover the few-shot protocol only" not in b2n.split("\n## ", 1)[0]
    fewshot = text.split("protocol: base2new", 1)[0]  # the few-shot table (ViT-B-16, DTD) matches nothing
    assert "No published number matches these cells" in fewshot and "maple_readme" not in fewshot

    (tmp_path / "part").mkdir()  # without all 11 datasets no average is formed, so nothing is compared
    _b2n_records(tmp_path / "part", "maple", STANDARD_DATASETS[:10], 0.82, 0.75)
    text = render(
        results_frame(load_results(tmp_path / "part")), "markdown", ReportOptions(compare_paper=True)
    )
    assert "published base-to-new" not in text and "cover the few-shot protocol only" not in text
    assert "No published series matches these cells" in text and "same protocol (base2new)" in text


def test_gda_vit_b16_series_load_and_match_base2new_and_fewshot_cells(tmp_path):
    paper = load_paper_numbers()
    b2n = [v for v in paper.values if v.source == "gda_base2new_log"]
    assert len(b2n) == 33 and {v.dataset for v in b2n} == set(STANDARD_DATASETS)  # no average printed
    assert {(v.method, v.arch, v.protocol, v.shots, v.generation, v.marker) for v in b2n} == {
        ("gda", "ViT-B-16", "base2new", 16, "coop_v2", "V")
    }
    assert {v.prompts for v in b2n if v.dataset != "imagenet"} == {"coop"}
    kw = {"method": "gda", "arch": "ViT-B-16", "shots": 16, "generation": "coop_v2", "protocol": "base2new"}
    eurosat = {
        p: best_match(paper, **kw, dataset="eurosat", prompts="coop", part=p) for p in ("base", "new", "hm")
    }
    assert {p: v.value for p, v in eurosat.items()} == {"base": 93.28, "new": 79.21, "hm": 85.67}
    imagenet = best_match(paper, **kw, dataset="imagenet", prompts="coop_ensemble", part="new")
    assert (imagenet.value, imagenet.prompts) == (69.79, "coop_ensemble")
    assert best_match(paper, **{**kw, "arch": "RN50"}, dataset="dtd", prompts="coop", part="base") is None
    # the ViT-B/16 few-shot runs (16 shots) of logs/architecture.log; the RN50 curves stay exp.log's
    fewshot = {k: v for k, v in kw.items() if k != "protocol"}
    dtd = best_match(paper, **fewshot, dataset="dtd", prompts="coop")
    assert (dtd.value, dtd.source, dtd.marker) == (71.26, "gda_architecture_log", "V")
    assert best_match(paper, **{**fewshot, "shots": 4}, dataset="dtd", prompts="coop") is None
    assert (
        best_match(paper, **{**fewshot, "arch": "RN50"}, dataset="dtd", prompts="coop").source
        == "gda_exp_log"
    )

    for seed in (1, 2, 3):  # a base2new record of gda on ViT-B-16 meets the per-dataset series
        save(
            tmp_path,
            record(
                "gda",
                "eurosat",
                16,
                seed,
                0.93,
                backbone="ViT-B-16/openai",
                protocol="base2new",
                extra_metrics={"base_top1": 0.93, "new_top1": 0.80, "harmonic_mean": 2 * 0.93 * 0.8 / 1.73},
            ),
        )
    text = render(results_frame(load_results(tmp_path)), "markdown", ReportOptions(compare_paper=True))
    block = text.split("### Comparison with published base-to-new numbers", 1)[1]
    rows = [
        [c.strip() for c in line.strip("|").split("|")] for line in block.splitlines() if line.startswith("|")
    ]
    hm = 2 * 93 * 80 / (93 + 80)
    assert [r[:7] for r in rows[2:]] == [
        ["GDA", "16", "EuroSAT", "base", "93.00", "93.28", "−0.28"],
        ["GDA", "16", "EuroSAT", "new", "80.00", "79.21", "+0.79"],
        ["GDA", "16", "EuroSAT", "H", f"{hm:.2f}", "85.67", f"{hm - 85.67:+.2f}".replace("-", "−")],
    ]
    assert "gda_base2new_log [V]" in block and "3 of 3 compared values are within ±1 pt" in block
    assert "No published series matches" not in text


@pytest.mark.parametrize(
    "change,error",
    [
        ({"protocol": "cross_dataset"}, "unknown protocol 'cross_dataset'"),
        (
            {"shots": None, "values": {"dtd": {"base": 80.0, "new": 70.0, "hm": 74.67}}},
            "base2new series without",
        ),
        ({"values": {"dtd": [{"base": 80.0, "new": 70.0}]}}, "is not {'base', 'new', 'hm'}"),
        ({"values": {"dtd": [{"base": 80.0, "new": 70.0, "hm": 76.0}]}}, "hm 76.0 is not the harmonic mean"),
        ({"values": {"dtd": [75.0]}}, "75.0 is not {'base'"),
        (
            {"protocol": "fewshot", "values": {"dtd": [{"base": 80.0, "new": 70.0, "hm": 74.67}]}},
            "is not a number",
        ),
    ],
)
def test_malformed_base2new_series_are_refused(tmp_path, change, error):
    doc = json.loads(default_path().read_text())
    index = next(i for i, s in enumerate(doc["series"]) if s.get("protocol") == "base2new")
    doc["series"][index].update(change)
    bad = tmp_path / "paper.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(BenchError, match=rf"series\[{index}\].*{re.escape(error)}"):
        load_paper_numbers(bad)


def test_cross_modal_lp_rn50_series_loads_and_matches_fewshot_cells(tmp_path):
    paper = load_paper_numbers()
    series = [v for v in paper.values if v.source == "cross_modal_lp_paper_table10"]
    assert len(series) == 55 and {v.dataset for v in series} == set(STANDARD_DATASETS)  # 11 x 5 shots
    assert {(v.method, v.arch, v.protocol, v.part, v.generation, v.marker) for v in series} == {
        ("cross_modal_lp", "RN50", "fewshot", "top1", "coop_v2", "V")
    }
    assert {v.shots for v in series} == {1, 2, 4, 8, 16}
    assert {v.prompts for v in series if v.dataset != "imagenet"} == {"coop"}
    kw = {"method": "cross_modal_lp", "arch": "RN50", "generation": "coop_v2"}
    # spot checks against the paper's Table 10 ('Cross-Modal Linear Probe' rows, the means)
    assert best_match(paper, **kw, dataset="dtd", shots=16, prompts="coop").value == 67.43
    assert best_match(paper, **kw, dataset="eurosat", shots=1, prompts="coop").value == 59.54
    imagenet = best_match(paper, **kw, dataset="imagenet", shots=4, prompts="coop_ensemble")
    assert (imagenet.value, imagenet.prompts) == (61.48, "coop_ensemble")
    assert best_match(paper, **{**kw, "arch": "ViT-B-16"}, dataset="dtd", shots=16, prompts="coop") is None
    assert (
        best_match(paper, **kw, dataset="dtd", shots=16, prompts="coop", protocol="base2new", part="base")
        is None
    )

    for seed in (1, 2, 3):  # a few-shot record of cross_modal_lp on RN50 meets the series
        save(tmp_path, record("cross_modal_lp", "eurosat", 16, seed, 0.85, prompts="coop"))
    text = render(results_frame(load_results(tmp_path)), "markdown", ReportOptions(compare_paper=True))
    block = text.split("### Comparison with published numbers", 1)[1]
    rows = [
        [c.strip() for c in line.strip("|").split("|")] for line in block.splitlines() if line.startswith("|")
    ]
    assert [r[:7] for r in rows[2:]] == [
        ["Cross-modal LP", "16", "EuroSAT", "85.00", "84.91", "+0.09", "yes"]
    ]
    assert "cross_modal_lp_paper_table10" in block
