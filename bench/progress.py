"""What a running grid tells the person watching it.

On a terminal: the grid bar (cells) with the sweep's ETA, and under it one bar for the running
cell's epochs or tuning trials (tqdm ``position=1``, removed when the cell ends). Methods drive it
through :attr:`bench.methods.base.FitContext.progress_step`.

Elsewhere (a Slurm log, a pipe, ``--no-progress``): no bars and no escape codes, one plain line
per finished cell instead::

    [3/40] ok coop/dtd/k16/s1  top-1 61.23%  42.1 s  ETA 26m 57s

The ETA is the mean time of the cells finished so far times the cells still to run (cells skipped
because they had a record do not count: they take no time).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TextIO

from tqdm.auto import tqdm

Step = Callable[[int, int, str], None]  # (done, total, unit): after each epoch ("epoch") or trial ("trial")


def bars_on(wanted: bool, stream: TextIO | None = None) -> bool:
    """Whether to draw a progress bar: wanted (no ``--no-progress``) and ``stream`` (stderr) is a terminal.
    A Slurm log or a pipe gets no bar, so no carriage returns and escape codes end up in it."""
    return wanted and (stream or sys.stderr).isatty()


def format_seconds(seconds: float | None) -> str:
    """``"42 s"``, ``"26m 57s"``, ``"3h 05m"``; ``"?"`` before anything finished."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def top1_of(result: Any) -> float | None:
    """The top-1 fraction of a record, whatever shape its metrics have (a dict or a typed section)."""
    metrics = getattr(result, "metrics", None)
    value = metrics.get("top1") if isinstance(metrics, dict) else getattr(metrics, "top1", None)
    return None if value is None else float(value)


class GridProgress:
    """Bars on a terminal, one line per finished cell elsewhere.

    Args:
        total: cells in the grid. todo: cells that will run (no record yet, or ``--force``).
        bars: whether bars are wanted (``--no-progress`` says no); they are drawn only on a terminal.
        stream: where to write (default: stderr, beside the logging).
    """

    def __init__(self, total: int, todo: int, *, bars: bool = True, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.interactive = bars_on(bars, self.stream)
        self.todo, self.done = todo, 0
        self.durations: list[float] = []
        self._cell: tqdm | None = None
        # tqdm's own rate and remaining time would count the skipped cells: the postfix carries our ETA
        self._grid = (
            tqdm(
                total=total,
                desc="cells",
                unit="cell",
                position=0,
                file=self.stream,
                dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]",
            )
            if self.interactive
            else None
        )

    def eta(self) -> float | None:
        """Seconds left: the mean duration of the finished cells times the cells still to run."""
        if not self.durations:
            return None
        return sum(self.durations) / len(self.durations) * max(self.todo - self.done, 0)

    def skip(self) -> None:
        """A cell with a record (or left to another runner): the grid bar moves, nothing is printed."""
        if self._grid is not None:
            self._grid.update(1)

    def start(self, name: str) -> Step | None:
        """A cell starts; returns the callback for its epochs/trials (None when no bar shows them)."""
        if self._grid is None:
            return None
        self._grid.set_postfix_str(f"{name} · ETA {format_seconds(self.eta())}", refresh=True)
        return self._step

    def _step(self, done: int, total: int, unit: str) -> None:
        if self._cell is None or self._cell.total != total or self._cell.unit != unit:
            self._close_cell()
            self._cell = tqdm(
                total=total,
                desc=f"{unit}s",
                unit=unit,
                position=1,
                leave=False,
                file=self.stream,
                dynamic_ncols=True,
            )
        self._cell.update(done - self._cell.n)

    def _close_cell(self) -> None:
        if self._cell is not None:
            self._cell.close()
            self._cell = None

    def finish(self, name: str, result: Any, seconds: float) -> None:
        """A cell ran (``result`` its record, or None when another worker writes it)."""
        self._close_cell()
        self.done += 1
        self.durations.append(seconds)
        if self._grid is not None:
            self._grid.update(1)
            self._grid.set_postfix_str(f"ETA {format_seconds(self.eta())}", refresh=True)
            return
        status = "deferred" if result is None else getattr(result, "status", "?")
        top1 = top1_of(result) if status == "ok" else None
        score = f"top-1 {100 * top1:.2f}%" if top1 is not None else "top-1 —"
        self.stream.write(
            f"[{self.done}/{self.todo}] {status} {name}  {score}  {seconds:.1f} s  "
            f"ETA {format_seconds(self.eta())}\n"
        )
        self.stream.flush()

    def close(self) -> None:
        self._close_cell()
        if self._grid is not None:
            self._grid.close()
