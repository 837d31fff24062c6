"""Progress of a grid: nested bars with an ETA on a terminal, one plain line per finished cell elsewhere."""

import dataclasses
import io
import re

from bench.progress import GridProgress, format_seconds
from bench.runner import run_cells
from bench.spec import expand_grid

TINY = "bench-tiny/random"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class _Record:
    status, metrics = "ok", {"top1": 0.6123}


def test_plain_lines_without_a_terminal_and_an_eta_from_finished_cells():
    stream = io.StringIO()
    progress = GridProgress(total=5, todo=3, stream=stream)
    progress.skip()
    progress.skip()
    assert progress.start("coop/dtd/k16/s1") is None  # no bar to drive
    progress.finish("coop/dtd/k16/s1", _Record(), 10.0)
    progress.finish("coop/dtd/k16/s2", _Record(), 20.0)
    progress.finish("coop/dtd/k16/s3", None, 30.0)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines == [
        "[1/3] ok coop/dtd/k16/s1  top-1 61.23%  10.0 s  ETA 20 s",
        "[2/3] ok coop/dtd/k16/s2  top-1 61.23%  20.0 s  ETA 15 s",
        "[3/3] deferred coop/dtd/k16/s3  top-1 —  30.0 s  ETA 0 s",
    ]
    assert "\x1b" not in stream.getvalue() and "\r" not in stream.getvalue()
    assert (
        format_seconds(1617) == "26m 57s"
        and format_seconds(11100) == "3h 05m"
        and format_seconds(None) == "?"
    )


def test_a_cell_bar_under_the_grid_bar_on_a_terminal():
    stream = _Terminal()
    progress = GridProgress(total=2, todo=2, stream=stream)
    step = progress.start("coop/dtd/k16/s1")
    for epoch in range(1, 4):
        step(epoch, 3, "epoch")
    progress.finish("coop/dtd/k16/s1", _Record(), 4.0)
    step = progress.start("clip_adapter/dtd/k16/s1")
    step(1, 5, "trial")
    progress.finish("clip_adapter/dtd/k16/s1", _Record(), 6.0)
    progress.close()
    out = stream.getvalue()
    assert "cells" in out and "epochs" in out and "trials" in out and "cell/s" not in out
    assert "ETA 4 s" in out and "[1/2]" not in out  # bars, not log lines


def test_run_cells_logs_one_line_per_finished_cell_when_not_on_a_terminal(run_options, capsys):
    specs = expand_grid(
        ["zero_shot", "clip_adapter"],
        ["synthetic"],
        [1],
        [1],
        [TINY],
        overrides={"clip_adapter": (("epochs", 3),)},
    )
    run_cells(
        specs, dataclasses.replace(run_options, progress=True)
    )  # bars wanted, but stderr is no terminal
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("[")]
    assert len(lines) == 2 and all(
        re.search(r"ok \S+/synthetic/k1/s1  top-1 \d+\.\d\d%  \d+\.\d s  ETA", line) for line in lines
    )
    assert "\x1b" not in err and "\r" not in err
    run_cells(specs, run_options)  # every cell done: nothing to log
    assert not [line for line in capsys.readouterr().err.splitlines() if line.startswith("[")]


def test_trainable_methods_report_their_epochs(run_options):
    from bench.methods.base import FitContext

    steps = []
    assert "progress_step" in {f.name for f in dataclasses.fields(FitContext)}
    from bench import runner

    specs = expand_grid(
        ["clip_adapter"], ["synthetic"], [1], [2], [TINY], overrides={"clip_adapter": (("epochs", 4),)}
    )
    session = runner.Session(run_options)
    (cell,) = runner.plan_cells(specs, session)
    result = runner.run_cell(cell, session, step=lambda done, total, unit: steps.append((done, total, unit)))
    assert result.ok and steps == [(e, 4, "epoch") for e in range(1, 5)]
