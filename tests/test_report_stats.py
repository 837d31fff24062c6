import numpy as np
import pytest
from scipy import stats

from bench.errors import BenchError
from bench.reports import results_frame
from bench.reports.stats import paired_differences, paired_t, summarize, wilcoxon
from bench.results import load_results

from .report_fixtures import record, save


def test_wilcoxon_is_exact_without_ties_and_names_its_limits():
    diffs = np.array([1.5, 2.0, -0.5, 3.0, 2.5, 4.0, 0.0])
    result = wilcoxon(diffs)
    reference = stats.wilcoxon(diffs[diffs != 0], method="exact")
    assert result.name == "Wilcoxon signed-rank" and result.n == 6
    assert result.p == pytest.approx(reference.pvalue) and result.statistic == reference.statistic
    assert "exact" in result.note and "1 zero difference(s) dropped" in result.note
    small = wilcoxon(np.array([1.0, 2.0, 3.0]))
    assert small.p == pytest.approx(0.25) and "smallest attainable p is 0.25" in small.note
    assert "normal approximation" in wilcoxon(np.array([1.0, 1.0, 2.0, -3.0])).note
    undefined = wilcoxon(np.zeros(4))
    assert undefined.p is None and "every difference is zero" in undefined.note


def test_paired_t_is_undefined_where_scipy_would_print_a_number():
    diffs = np.array([1.0, 2.0, 4.0])
    assert paired_t(diffs).p == pytest.approx(stats.ttest_rel(diffs, np.zeros(3)).pvalue)
    assert paired_t(np.array([2.0, 2.0, 2.0])).p is None  # scipy says t = inf, p = 0
    assert paired_t(np.array([2.0])).p is None


def test_pairs_use_common_seeds_and_the_sentence_counts_datasets(tmp_path):
    grid = {
        "dtd": ([0.50, 0.52, 0.54], [0.40, 0.40, 0.40]),
        "eurosat": ([0.70, 0.60, None], [0.65, 0.65, 0.65]),
        "caltech101": ([0.80, 0.80, 0.80], [0.85, 0.85, 0.85]),
    }
    for dataset, (a, b) in grid.items():
        for seed, (ta, tb) in enumerate(zip(a, b, strict=True), start=1):
            if ta is not None:
                save(tmp_path, record("clip_adapter", dataset, 16, seed, ta))
            save(tmp_path, record("linear_probe", dataset, 16, seed, tb))
    frame = results_frame(load_results(tmp_path))
    pairs = paired_differences(frame, "clip_adapter", "linear_probe")
    eurosat = pairs[pairs["dataset"] == "eurosat"].iloc[0]
    assert eurosat["n_pairs"] == 2 and eurosat["delta"] == pytest.approx(0.0) and eurosat["a_wins"] == 1
    [summary] = summarize(pairs, "clip_adapter", "linear_probe")
    assert summary["a_wins"] == 1 and summary["ties"] == 1 and summary["n_datasets"] == 3
    assert summary["sentence"].startswith(
        "clip_adapter beats linear_probe on 1/3 datasets at 16 shots, ties on 1"
    )
    assert (
        "Wilcoxon signed-rank: W = " in summary["sentence"] and "paired t-test: t = " in summary["sentence"]
    )
    with pytest.raises(BenchError, match="no results for 'coop'"):
        paired_differences(frame, "coop", "linear_probe")
