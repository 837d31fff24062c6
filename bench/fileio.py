"""Atomic file writes and content hashing.

Every file the harness writes (result records, feature shards, split indices) goes
through :func:`atomic_write_bytes`: data lands in a temporary file in the target
folder and is renamed into place, and the folder is fsynced, so a killed process (or a
lost machine) never leaves a half-written file that looks complete. A temporary file
left by a process killed before its rename is removed by the next write to that folder
(:func:`clean_stale_temps`). Files get the permissions ``open()`` would give them
(``0o666`` less the umask), so a group sharing a results or cache folder can read them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.errors import BenchError

TEMP_MAX_AGE_S = 24 * 3600  # a temporary file untouched this long is left over, whoever wrote it
_TEMP_OWNER = re.compile(r"\.tmp@(?P<host>[^@/]+)@(?P<pid>\d+)@[^@/]*\.tmp$")


def ensure_writable_dir(path: Path, *, purpose: str) -> Path:
    """Create ``path`` if needed and check that files can be written in it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".write-probe-", delete=True)
        probe.close()
    except OSError as exc:
        raise BenchError(
            f"cannot write the {purpose} folder ({exc.strerror or exc})",
            where=str(path),
            fix=f"pass a writable folder for the {purpose} or fix its permissions",
        ) from exc
    return path


def _umask_at_import() -> int:
    """The umask when this module was imported: set and restored once, before any thread of ours writes."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_IMPORT_UMASK = _umask_at_import()


def current_umask() -> int:
    """The process's umask now, read without changing it (``/proc/self/status`` on Linux >= 4.7);
    elsewhere the umask at import."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:  # noqa: PTH123
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return _IMPORT_UMASK


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see either the old file or the whole new one.

    The file's mode is what ``open(path, "wb")`` would give it (``0o666 & ~umask``), not
    ``mkstemp``'s private ``0o600``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    owner = f"{socket.gethostname()}@{os.getpid()}@"  # lets a later writer tell a dead writer's leftovers
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp@{owner}", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~current_umask())
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    clean_stale_temps(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (some filesystems refuse to fsync a folder: then nothing)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def process_alive(host: str, pid: int) -> bool | None:
    """Whether process ``pid`` on ``host`` runs; ``None`` when ``host`` is another machine (cannot tell)."""
    if host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def clean_stale_temps(folder: Path, max_age_s: float = TEMP_MAX_AGE_S) -> list[Path]:
    """Remove the hidden temporary files that writers killed before their rename left in ``folder``.

    A temporary file is stale when its writer (host and pid in its name) is a dead process on this
    machine, or when it has not changed for ``max_age_s`` (a writer on another machine, or a file
    named before writers signed their temporary files). Returns the files removed.
    """
    try:
        entries = [e for e in os.scandir(folder) if e.name.startswith(".") and e.name.endswith(".tmp")]
    except OSError:
        return []
    removed, now = [], time.time()
    for entry in entries:
        owner = _TEMP_OWNER.search(entry.name)
        try:
            dead = owner is not None and process_alive(owner["host"], int(owner["pid"])) is False
            if dead or now - entry.stat().st_mtime > max_age_s:
                Path(entry.path).unlink(missing_ok=True)
                removed.append(Path(entry.path))
        except OSError:  # gone meanwhile, or not ours to remove
            continue
    return removed


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the form every hash in the harness is taken of."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically; NaN and infinities are refused."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode())


def atomic_torch_save(path: Path, obj: Any) -> None:
    """``torch.save`` into a temporary file, then rename into place."""
    import torch  # here, not at the top: bench.spec and the CLI's parser import this module

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_json(obj: Any) -> str:
    """sha256 of :func:`canonical_json` of ``obj``."""
    return sha256_bytes(canonical_json(obj).encode())


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()
