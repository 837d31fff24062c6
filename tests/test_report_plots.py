import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from bench.reports import results_frame
from bench.reports.plots import table_figures, write_plots
from bench.results import load_results

from .report_fixtures import write_fixture_results


@pytest.fixture(scope="module")
def frame(tmp_path_factory):
    return results_frame(load_results(write_fixture_results(tmp_path_factory.mktemp("results"))))


def test_one_line_per_method_with_seed_bands(frame):
    figures = table_figures(frame)
    assert set(figures) == {
        "RN50_openai-none",
        "RN50_openai-oracle",
        "ViT-B-16_openai-none",
    }  # no base-to-new curves
    rn50 = figures["RN50_openai-none"]
    assert set(rn50) == {"dtd", "eurosat", "average", "all"}
    ax = rn50["dtd"].axes[0]
    lines = {line.get_label(): line for line in ax.lines}
    assert list(lines) == ["Zero-shot CLIP", "Linear probe", "CLIP-Adapter"]  # the names the papers print
    # zero-shot does not depend on the shot count: one star at 0 shots, as in CoOp's figure
    assert lines["Zero-shot CLIP"].get_marker() == "*" and list(lines["Zero-shot CLIP"].get_xdata()) == [0]
    assert list(lines["Linear probe"].get_xdata()) == [1, 16] and lines["Linear probe"].get_linestyle() == ":"
    np.testing.assert_allclose(lines["Linear probe"].get_ydata(), [33.0, 62.0])
    np.testing.assert_allclose(lines["CLIP-Adapter"].get_ydata(), [46.0, 66.5])
    assert (
        len(ax.collections) == 2
    )  # a band for linear_probe and clip_adapter; none for the constant zero-shot
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx(33.0 - np.std([30, 33, 36])) and band.max() == pytest.approx(
        62.0 + np.std([60, 62, 64])
    )
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "16"]
    average = rn50["average"].axes[0]
    assert average.get_title() == "Average over 2 datasets" and len(average.lines) == 3
    np.testing.assert_allclose(
        {ln.get_label(): ln for ln in average.lines}["Linear probe"].get_ydata(), [42.5, 72.0]
    )
    assert "ORACLE" in figures["RN50_openai-oracle"]["dtd"].axes[0].get_title()


def test_plot_files_open(frame, tmp_path):
    paths = write_plots(frame, tmp_path)
    # PNG + SVG + PDF for (dtd, eurosat, average, all), (dtd, average, all), (imagenet, average, all)
    assert len(paths) == 3 * (4 + 3 + 3)
    for path in paths:
        if path.suffix == ".pdf":
            assert path.read_bytes().startswith(b"%PDF-")
        elif path.suffix == ".png":
            with Image.open(path) as image:
                image.verify()
                assert image.format == "PNG" and image.size[0] > 300
        else:
            assert ET.parse(path).getroot().tag.endswith("svg")


def test_the_star_is_decided_by_the_method_not_by_flat_numbers():
    import pandas as pd

    from bench.reports.plots import curve_figure

    def rows(shots, means, half=1.0):
        return pd.DataFrame(
            {"shots": shots, "mean": means, "half": [half] * len(shots), "n_seeds": [3] * len(shots)}
        )

    series = {
        "zero_shot (prompts: ensemble)": rows([16], [40.0], half=0.0),  # run at one shot count only
        "clip_adapter": rows([1, 16], [50.0, 50.0]),
    }  # trained, flat by chance
    ax = curve_figure(series, "t", names={}).axes[0]
    lines = {line.get_label(): line for line in ax.lines}
    assert lines["zero_shot (prompts: ensemble)"].get_marker() == "*"
    assert list(lines["zero_shot (prompts: ensemble)"].get_xdata()) == [0]
    assert lines["clip_adapter"].get_marker() == "^" and list(lines["clip_adapter"].get_xdata()) == [1, 16]
    assert len(ax.collections) == 1  # the flat trained method keeps its seed band


def test_one_colour_and_marker_per_method_in_every_figure_and_the_combined_layout(frame):
    from matplotlib.colors import to_hex

    figures = table_figures(frame)
    styles = {}
    for table in figures.values():
        for fig in table.values():
            for ax in fig.axes:
                for line in ax.lines:
                    style = (to_hex(line.get_color()), line.get_marker())
                    assert styles.setdefault(line.get_label(), style) == style, line.get_label()
    assert len(set(styles.values())) == len(styles) == 3
    combined = figures["RN50_openai-none"]["all"]
    titles = [ax.get_title() for ax in combined.axes if ax.get_visible()]
    assert titles == ["Average over 2 datasets", "DTD", "EuroSAT"]  # the average first, as CoOp's Figure 3
    assert [t.get_text() for t in combined.legends[0].get_texts()] == [
        "Zero-shot CLIP",
        "Linear probe",
        "CLIP-Adapter",
    ]
    single = figures["RN50_openai-none"]["dtd"]
    assert single.get_size_inches()[0] <= 3.5  # drawn at column width: 8 pt text stays 8 pt in print
