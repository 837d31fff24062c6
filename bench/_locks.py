"""Per-cell lock files, so runners started on one results folder share the cells instead of repeating them.

A lock is a hidden file beside the cell's record, created with ``O_CREAT | O_EXCL`` (atomic, also on
NFS v3+) and holding ``{"host", "pid", "time"}`` of its holder, who touches it every
:data:`HEARTBEAT_S` seconds while the cell runs. Another runner treats it as stale, removes it and
takes the cell, when the holder is a dead process on the same machine, or when the file has not
been touched for :data:`STALE_AFTER_S` (a holder on another machine that died or was preempted)::

    lock = try_lock(path)
    if lock is None:
        ...  # another live runner has this cell
    try:
        ...
    finally:
        lock.release()

Locks only decide who runs a cell; they never guard a record's bytes (records are written
atomically either way), so the rare race of two runners breaking one stale lock at the same
moment costs a cell run twice, nothing else.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

from bench.fileio import process_alive

HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0  # ten missed heartbeats: the holder is gone, whichever machine it ran on


class Lock:
    """A lock this process holds; a daemon thread keeps its file fresh until :meth:`release`."""

    def __init__(self, path: Path, content: bytes, heartbeat_s: float = HEARTBEAT_S):
        self.path, self.content = path, content
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, args=(heartbeat_s,), daemon=True, name=f"lock-heartbeat {path.name}"
        )
        self._thread.start()

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                os.utime(self.path)
            except OSError:  # broken by another runner who judged us gone: nothing to keep fresh
                return

    def release(self) -> None:
        """Stop the heartbeat and remove the file, unless another runner has taken it over meanwhile."""
        self._stop.set()
        self._thread.join()
        if _read(self.path) == self.content:
            self.path.unlink(missing_ok=True)


def try_lock(
    path: Path, *, stale_after_s: float = STALE_AFTER_S, heartbeat_s: float = HEARTBEAT_S
) -> Lock | None:
    """Take the lock at ``path``: a :class:`Lock`, or ``None`` when a live holder has it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    content = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}).encode()
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)  # less the umask
        except FileExistsError:
            seen = _read(path)
            if seen is None or not _stale(path, seen, stale_after_s):
                return None
            _break(path, seen)
            continue
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        return Lock(path, content, heartbeat_s)
    return None


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _stale(path: Path, content: bytes, stale_after_s: float) -> bool:
    try:
        holder = json.loads(content)
        if process_alive(str(holder["host"]), int(holder["pid"])) is False:
            return True
    except (ValueError, KeyError, TypeError):
        pass  # being written right now, or damaged: the age decides
    try:
        return time.time() - path.stat().st_mtime > stale_after_s
    except OSError:
        return False


def _break(path: Path, seen: bytes) -> None:
    """Remove the stale lock ``seen``: renamed aside first, and put back if it turns out to be a fresh one."""
    aside = path.with_name(f"{path.name}.{socket.gethostname()}@{os.getpid()}.broken")
    try:
        path.replace(aside)
    except OSError:
        return  # someone else removed it
    if _read(aside) != seen:  # another runner took the lock between our read and the rename: give it back
        try:
            os.link(aside, path)
        except OSError:
            pass
    aside.unlink(missing_ok=True)
