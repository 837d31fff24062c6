"""Reports built from result records only (installed as ``bench.reports``)."""

from bench.reports.aggregate import Filters, aggregate, results_frame
from bench.reports.tables import ReportOptions, build_report, render

__all__ = ["Filters", "ReportOptions", "aggregate", "build_report", "render", "results_frame"]
