"""The one user-facing error type: it says what is wrong, where, and how to fix it."""

from __future__ import annotations


class BenchError(Exception):
    """An error caused by input the user controls (a file, a flag, a config field).

    The CLI prints it as one line and exits with status 2; anything else is a bug
    and keeps its traceback.

    Args:
        what: what is wrong, e.g. ``"image file missing"``.
        where: the file, field or flag it concerns, e.g. ``"data/dtd/split.json: test[3]"``.
        fix: what the user should do about it.
    """

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None):
        self.what, self.where, self.fix = what, where, fix
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.where}: {self.what}" if self.where else self.what
        if not self.fix:
            return text
        return f"{text}{'' if text.endswith(('.', '?', '!')) else '.'} Fix: {self.fix}"

    def __reduce__(self):
        # Keep the keyword-only fields through pickling (submitit ships errors back from workers).
        return (_rebuild_bench_error, (self.what, self.where, self.fix))


def _rebuild_bench_error(what: str, where: str | None, fix: str | None) -> BenchError:
    return BenchError(what, where=where, fix=fix)


class NonFiniteError(ArithmeticError):
    """A number that must be finite is NaN or infinite: a diverged fit, a damaged feature, a broken checkpoint.

    Not a user error: inside ``run_cell`` it becomes a ``failed`` record whose message names what was
    not finite (the epoch, the image, the shard file), and the grid goes on. No record with such a
    number is ever written as ``ok``.
    """
