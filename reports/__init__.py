"""Reports built from result records only (installed as ``bench.reports``)."""

from bench.reports.aggregate import aggregate, results_frame
from bench.reports.tables import render

__all__ = ["aggregate", "render", "results_frame"]
