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
    assert set(figures) == {"RN50_openai-none", "RN50_openai-oracle", "ViT-B-16_openai-none"}  # no base-to-new curves
    rn50 = figures["RN50_openai-none"]
    assert set(rn50) == {"dtd", "eurosat", "average"}
    ax = rn50["dtd"].axes[0]
    lines = {line.get_label(): line for line in ax.lines}
    assert list(lines) == ["zero_shot", "linear_probe", "clip_adapter"]
    # zero-shot does not depend on the shot count: one star at 0 shots, as in CoOp's figure
    assert lines["zero_shot"].get_marker() == "*" and list(lines["zero_shot"].get_xdata()) == [0]
    assert list(lines["linear_probe"].get_xdata()) == [1, 16] and lines["linear_probe"].get_linestyle() == ":"
    np.testing.assert_allclose(lines["linear_probe"].get_ydata(), [33.0, 62.0])
    np.testing.assert_allclose(lines["clip_adapter"].get_ydata(), [46.0, 66.5])
    assert len(ax.collections) == 2  # a band for linear_probe and clip_adapter; none for the constant zero-shot
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx(33.0 - np.std([30, 33, 36])) and band.max() == pytest.approx(62.0 + np.std([60, 62, 64]))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "16"]
    average = rn50["average"].axes[0]
    assert average.get_title() == "Average over 2 datasets" and len(average.lines) == 3
    np.testing.assert_allclose({ln.get_label(): ln for ln in average.lines}["linear_probe"].get_ydata(), [42.5, 72.0])
    assert "ORACLE" in figures["RN50_openai-oracle"]["dtd"].axes[0].get_title()


def test_plot_files_open(frame, tmp_path):
    paths = write_plots(frame, tmp_path)
    assert len(paths) == 2 * (3 + 2 + 2)  # PNG + SVG for (dtd, eurosat, average), (dtd, average), (imagenet, average)
    for path in paths:
        if path.suffix == ".png":
            with Image.open(path) as image:
                image.verify()
                assert image.format == "PNG" and image.size[0] > 300
        else:
            assert ET.parse(path).getroot().tag.endswith("svg")


def test_the_star_is_decided_by_the_method_not_by_flat_numbers():
    import pandas as pd

    from bench.reports.plots import curve_figure

    def rows(shots, means, half=1.0):
        return pd.DataFrame({"shots": shots, "mean": means, "half": [half] * len(shots), "n_seeds": [3] * len(shots)})

    series = {"zero_shot (prompts: ensemble)": rows([16], [40.0], half=0.0),  # run at one shot count only
              "clip_adapter": rows([1, 16], [50.0, 50.0])}                  # trained, flat by chance
    ax = curve_figure(series, "t").axes[0]
    lines = {line.get_label(): line for line in ax.lines}
    assert lines["zero_shot (prompts: ensemble)"].get_marker() == "*"
    assert list(lines["zero_shot (prompts: ensemble)"].get_xdata()) == [0]
    assert lines["clip_adapter"].get_marker() == "o" and list(lines["clip_adapter"].get_xdata()) == [1, 16]
    assert len(ax.collections) == 1  # the flat trained method keeps its seed band
