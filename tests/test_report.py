import json
from pathlib import Path

import pytest

from bench.errors import BenchError
from bench.reports import render, results_frame
from bench.results import load_results

from .report_fixtures import write_fixture_results

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture
def frame(tmp_path):
    return results_frame(load_results(write_fixture_results(tmp_path)))


@pytest.mark.parametrize("fmt,suffix", [("markdown", "md"), ("csv", "csv"), ("json", "json")])
def test_report_matches_golden_file(frame, fmt, suffix):
    expected = (GOLDEN / f"report.{suffix}").read_text()
    assert render(frame, fmt) == expected


def test_markdown_shows_mean_std_average_and_holes(frame):
    text = render(frame, "markdown")
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| clip")]
    assert ["clip_adapter", "1", "46.00 ± 0.82", "61.00 ± 0.82", "53.50"] in rows
    assert "84.50 ± 0.50 (2/3 seeds)" in text  # incomplete cell marked
    assert "**Missing cells (1):** clip_adapter/eurosat/k16/s3" in text
    assert "**Failed cells (1):** clip_adapter/dtd/k16/s1" in text
    oracle_part = text.split("tuning: oracle")[1]
    assert "ORACLE" in oracle_part and "clip_adapter (oracle)" in oracle_part
    assert "tuning: none" in text  # honest and oracle cells are in separate tables


def test_json_has_machine_readable_cells(frame):
    payload = json.loads(render(frame, "json"))
    cell = next(c for c in payload["cells"] if c["method"] == "zero_shot" and c["dataset"] == "dtd" and c["shots"] == 1)
    assert cell["mean"] == 42.0 and cell["std"] == 0.0 and cell["n_seeds"] == 3


def test_unknown_format_and_empty_results(frame, tmp_path):
    with pytest.raises(BenchError, match="unknown report format"):
        render(frame, "docx")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchError, match="no result records"):
        render(results_frame(load_results(tmp_path / "empty")), "markdown")
