"""Paper-ready tables: the LaTeX of the full default grid compiles and fits the page, display names,
bold best, --decimals, --no-std, zero-shot once, n=1 marks, and golden files for these options."""

import re
import shutil
import subprocess

import numpy as np
import pytest

from bench.cli import main
from bench.errors import BenchError
from bench.reports import ReportOptions, render, results_frame
from bench.reports.blocks import METHOD_NAMES, STANDARD_DATASETS
from bench.reports.formats import COLUMN_CHARS, PAGE_CHARS
from bench.results import load_results

from .report_fixtures import record, write_fixture_results

GOLDEN = __import__("pathlib").Path(__file__).parent / "golden"
DEFAULT_GRID = ("zero_shot", "linear_probe", "coop", "clip_adapter")  # bench run's default methods
SHOTS = (1, 2, 4, 8, 16)
PAPER = ReportOptions(
    decimals=1, spread=False, names={**METHOD_NAMES, "clip_adapter": "CLIP-A", "zero_shot": "ZS-CLIP"}
)


@pytest.fixture(scope="module")
def full_grid():
    """The default grid on the 11 datasets: 4 methods × 11 datasets × 5 shots × 3 seeds."""
    rng = np.random.default_rng(0)
    records = []
    for m, method in enumerate(DEFAULT_GRID):
        for d, dataset in enumerate(STANDARD_DATASETS):
            base = 0.3 + 0.05 * d
            for shots in SHOTS:
                mean = base if method == "zero_shot" else base + 0.02 * m + 0.03 * np.log2(shots)
                for seed in (1, 2, 3):
                    top1 = mean if method == "zero_shot" else mean + float(rng.normal(0, 0.01))
                    records.append(record(method, dataset, shots, seed, round(min(top1, 0.99), 4)))
    return results_frame(records)


@pytest.fixture
def frame(tmp_path):
    return results_frame(load_results(write_fixture_results(tmp_path)))


def _tables(tex: str) -> list[str]:
    return re.findall(r"\\begin\{table\*?\}.*?\\end\{table\*?\}", tex, flags=re.S)


def test_full_grid_latex_is_well_formed_and_sized(full_grid):
    tex = render(full_grid, "latex")
    tables = _tables(tex)
    assert len(tables) == 2  # the 11-dataset table and the average over the 11 datasets
    labels = re.findall(r"\\label\{([^}]*)\}", tex)
    assert len(labels) == len(set(labels)) == 2 and all(label.startswith("tab:") for label in labels)
    for table in tables:
        assert table.count("{") == table.count("}") - table.count(r"\}") + table.count(r"\{")
        assert re.search(r"\\caption\{[^}]+\}\n\\label\{tab:", table)
        spec = re.search(r"\\begin\{tabular\}\{([lr]+)\}", table).group(1)
        body = table.split("\\midrule\n", 1)[1].split("\n\\bottomrule", 1)[0].splitlines()
        header = table.split("\\toprule\n", 1)[1].splitlines()[0]
        for row in [header, *body]:
            assert row.endswith(r" \\") and len(re.findall(r"(?<!\\)&", row)) == len(spec) - 1, row
    main_table, average = tables
    assert main_table.startswith(r"\begin{table*}") and r"\resizebox{\textwidth}{!}{%" in main_table
    assert main_table.count("Zero-shot CLIP & 0 &") == 1  # zero-shot shown once, not on five shot rows
    assert "Zero-shot CLIP" in average and "Linear probe" in average and "CoOp" in average
    # bold best and underlined second in every dataset column of every shot count
    assert main_table.count(r"\textbf{") == 5 * 12 and main_table.count(r"\underline{") == 5 * 12
    assert "Average over the 11 datasets" in average and r"\pm" in average
    assert "0.00" not in re.sub(r"\d0\.00", "", main_table.replace("$\\pm$ 0.00", "X"))  # no ± 0.00 anywhere


@pytest.mark.skipif(
    shutil.which("pdflatex") is None,
    reason="pdflatex is not installed (scripts/setup.sh installs "
    "Debian's texlive-latex-base and texlive-latex-recommended where it runs as root)",
)
@pytest.mark.parametrize(
    "options", [ReportOptions(), PAPER, ReportOptions(ci="t")], ids=["default", "paper", "ci"]
)
def test_full_grid_latex_compiles_without_overfull_boxes(full_grid, tmp_path, options):
    body = render(full_grid, "latex", options)
    document = (
        "\\documentclass[twocolumn]{article}\n\\usepackage[T1]{fontenc}\n\\usepackage{booktabs}\n"
        "\\usepackage{graphicx}\n\\begin{document}\nText.\n" + body + "\n\\end{document}\n"
    )
    (tmp_path / "t.tex").write_text(document, encoding="utf-8")
    done = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    log = (tmp_path / "t.log").read_text(errors="replace")
    assert done.returncode == 0, log[-3000:]
    assert (tmp_path / "t.pdf").stat().st_size > 1000
    assert "Overfull \\hbox" not in log, re.findall(r"Overfull \\hbox.*", log)


def test_table_width_decides_column_page_or_scaled(frame):
    tex = render(frame, "latex")
    widths = dict(
        re.findall(r"\\begin\{(table\*?)\}\[t\]\n\\centering\n\\caption\{([^}]*)\}", tex)[i][::-1]
        for i in range(len(_tables(tex)))
    )
    assert widths["Average over 1 dataset (DTD)"] == "table"  # narrow: one column
    assert widths[r"RN50/openai $\cdot$ tuning: none"] == "table*"  # ± cells: the page width
    scaled = [t for t in _tables(tex) if r"\resizebox{\textwidth}{!}{%" in t]
    assert len(scaled) == 1 and r"\caption{Distribution shift}" in scaled[0] and COLUMN_CHARS < PAGE_CHARS


def test_paper_options_match_golden_files(frame):
    assert render(frame, "latex", PAPER) == (GOLDEN / "report-paper.tex").read_text()
    assert render(frame, "markdown", PAPER) == (GOLDEN / "report-paper.md").read_text()


def test_names_decimals_std_and_single_seed(frame):
    text = render(frame, "markdown", ReportOptions(decimals=3, names={}))
    assert "| zero_shot " in text and "| clip_adapter (oracle) | 16      | 70.000 (n=1) |" in text
    assert "± 0.000" not in text and "33.000 ± 2.449" in text
    plain = render(frame, "markdown", ReportOptions(spread=False, highlight=False))
    assert not any("±" in line for line in plain.splitlines() if line.startswith("|")) and "**" not in plain
    assert "| Linear probe   | 1       | 33.00" in plain
    with pytest.raises(BenchError, match="--decimals"):
        render(frame, "markdown", ReportOptions(decimals=9))


def test_cli_names_file_and_flags(tmp_path, capsys):
    results = write_fixture_results(tmp_path / "results")
    names = tmp_path / "names.json"
    names.write_text('{"clip_adapter": "CLIP-Adapter (ours)"}')
    assert (
        main(
            [
                "report",
                "--results",
                str(results),
                "--names",
                str(names),
                "--decimals",
                "1",
                "--no-std",
                "--no-highlight",
                "--format",
                "latex",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "CLIP-Adapter (ours) & 1 & 46.0 & 61.0 & 53.5" in out and "Linear probe" in out
    assert r"\textbf" not in out
    names.write_text("[1, 2]")
    assert main(["report", "--results", str(results), "--names", str(names)]) == 2
    assert "--names" in capsys.readouterr().err
