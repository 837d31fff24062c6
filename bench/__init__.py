"""clip-fewshot-bench: a benchmark harness for few-shot CLIP adaptation methods.

The public surface is small: :func:`bench.runner.run_cells` runs a grid of
:class:`bench.spec.RunSpec` cells and writes one :class:`bench.results.RunResult`
record per cell; :mod:`bench.reports` turns those records into tables.
"""

__version__ = "0.1.0"
