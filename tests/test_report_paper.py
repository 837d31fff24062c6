import json

import pandas as pd
import pytest

from bench.errors import BenchError
from bench.reports.blocks import DATASET_TITLES, METHOD_ORDER
from bench.reports.paper import MARKERS, best_match, compare, default_path, load_paper_numbers


def test_shipped_numbers_are_sourced_marked_and_use_registry_names():
    doc = json.loads(default_path().read_text())
    paper = load_paper_numbers()
    assert len(paper.values) > 400
    for series in doc["series"]:
        assert series["marker"] in MARKERS  # [?] numbers (from memory) are not shipped
        assert series["method"] in METHOD_ORDER and set(series["values"]) <= set(DATASET_TITLES)
        assert series["generation"] in doc["generations"]
        source = doc["sources"][series["source"]]
        assert source["citation"] and source["where"]
    # spot checks against the published tables
    pick = {(v.source, v.method, v.dataset, v.shots): v.value for v in paper.values}
    assert pick[("tip_adapter_exp_log", "clip_adapter", "eurosat", 16)] == 84.43
    assert pick[("coop_protocol_zero_shot", "zero_shot", "imagenet", None)] == 58.18
    assert pick[("tip_adapter_paper_imagenet", "tip_adapter_f", "imagenet", 1)] == 61.32
    assert pick[("clip_adapter_v1_fig3", "coop", "eurosat", 1)] == 20.5


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
