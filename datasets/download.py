"""Resumable, verified downloads and all-or-nothing unpacking.

A download streams into ``<file>.part``; an interrupted transfer leaves the part file and
the next call asks the server for the rest (HTTP ``Range``), starting over when the server
ignores it. The file gets its final name only after its checksum matched, so a file
without ``.part`` is always complete and verified. Archives are unpacked into a scratch
folder next to their destination and moved into place by renames afterwards
(:mod:`bench.datasets.prepare`), so nothing half-extracted ever looks complete.
"""

from __future__ import annotations

import hashlib
import http.client
import shutil
import stat
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm.auto import tqdm

from bench.errors import BenchError

CHUNK_BYTES = 1 << 20
USER_AGENT = "clip-fewshot-bench (bench data prepare)"


def file_digests(path: Path) -> dict[str, str]:
    """md5 and sha256 of a file, in one pass (published checksums are md5 for most datasets)."""
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK_BYTES), b""):
            md5.update(chunk)
            sha256.update(chunk)
    return {"md5": md5.hexdigest(), "sha256": sha256.hexdigest()}


def verify(path: Path, checksum: str | None) -> dict[str, str]:
    """The file's digests; raises if they contradict ``checksum`` (``"md5:<hex>"`` / ``"sha256:<hex>"``)."""
    digests = file_digests(path)
    if checksum is None:
        return digests
    kind, _, expected = checksum.partition(":")
    if kind not in digests:
        raise BenchError(
            f"unknown checksum kind {kind!r}", where=checksum, fix="write md5:<hex> or sha256:<hex>"
        )
    if digests[kind] != expected.lower():
        raise BenchError(
            f"{kind} is {digests[kind]}, expected {expected}",
            where=str(path),
            fix="the file is corrupt or not the published one: delete it and run the command again",
        )
    return digests


def fetch(
    url: str, dest: Path, checksum: str | None, *, progress: bool = False, timeout: float = 60.0
) -> dict[str, str]:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), verify it, and return its digests.

    Raises:
        BenchError: HTTP error, interrupted transfer (the part file is kept: run again to resume),
            a web page instead of the file, or a checksum mismatch (the part file is deleted).
    """
    dest = Path(dest)
    if dest.is_file():
        return verify(dest, checksum)
    part = dest.with_name(dest.name + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    _transfer(url, part, progress=progress, timeout=timeout)
    try:
        digests = verify(part, checksum)
    except BenchError as exc:
        part.unlink(missing_ok=True)
        raise BenchError(
            f"download of {dest.name} failed verification: {exc.what}",
            where=url,
            fix="the partial file was deleted; run the command again to download it afresh",
        ) from exc
    part.replace(dest)
    return digests


def _transfer(url: str, part: Path, *, progress: bool, timeout: float) -> None:
    start = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT, **({"Range": f"bytes={start}-"} if start else {})}
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=timeout
        ) as response:
            if start and response.status != 206:
                start = 0  # the server ignored the range: start over
            _refuse_web_page(response, url, part)
            length = response.headers.get("Content-Length")
            expected = start + int(length) if length is not None else None
            _stream(response, part, start, expected, progress)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:
            return  # the part file already holds everything; verification decides
        raise BenchError(
            f"HTTP {exc.code} {exc.reason}",
            where=url,
            fix="check the address or your network; a dead link is a manual download (see the instructions)",
        ) from exc
    except urllib.error.URLError as exc:  # no connection at all: nothing to resume
        raise BenchError(
            f"cannot connect ({exc.reason})",
            where=url,
            fix="check the network (or proxy settings), or download the file by hand "
            f"and save it as {part.with_suffix('')}",
        ) from exc
    except (OSError, http.client.HTTPException) as exc:
        raise _interrupted(url, part, exc) from exc
    if expected is not None and part.stat().st_size < expected:
        raise _interrupted(url, part, f"{expected - part.stat().st_size} bytes missing")


def _stream(response, part: Path, start: int, expected: int | None, progress: bool) -> None:
    with (
        part.open("ab" if start else "wb") as fh,
        tqdm(
            total=expected,
            initial=start,
            unit="B",
            unit_scale=True,
            desc=part.name[:-5],
            disable=not progress,
            leave=False,
        ) as bar,
    ):
        for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
            fh.write(chunk)
            bar.update(len(chunk))


def _refuse_web_page(response, url: str, part: Path) -> None:
    if response.headers.get_content_type() == "text/html" and not url.endswith((".html", ".htm")):
        raise BenchError(
            "the server sent a web page instead of the file (Google Drive asks for a confirmation "
            "or its download quota is exceeded)",
            where=url,
            fix=f"download it in a browser and save it as {part.with_suffix('')}, then run the command again",
        )


def _interrupted(url: str, part: Path, reason: object) -> BenchError:
    size = part.stat().st_size if part.exists() else 0
    return BenchError(
        f"download interrupted after {size} bytes ({reason})",
        where=url,
        fix=f"run the same command again: it resumes from {part}",
    )


def unpack(archive: Path, into: Path) -> Path:
    """Extract a tar (any compression) or zip archive into the fresh folder ``into``; returns ``into``.

    Every member is checked before anything is written (:func:`_check_tar_members`,
    :func:`_check_zip_members`), on every Python: tarfile's ``data`` filter, missing before 3.10.12
    and 3.11.4, is only a second line of defence where it exists.
    """
    archive, into = Path(archive), Path(into)
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            _check_zip_members(zf, archive)
            zf.extractall(into)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            members = _check_tar_members(tf, archive)
            if hasattr(tarfile, "data_filter"):
                tf.extractall(into, members=members, filter="data")
            else:
                tf.extractall(into, members=members)  # every member was checked above
    else:
        raise BenchError(
            "not a tar or zip archive", where=str(archive), fix="delete it and run the command again"
        )
    return into


_NOT_PUBLISHED = "this is not the published archive: delete it"


def _outside(name: str) -> bool:
    """True for a member name or link target that is absolute or climbs with ``..`` (either separator)."""
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":")


def _check_tar_members(tf: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    """The members, each checked: a plain name, a link target that stays inside, no device or FIFO.

    Link targets with ``..`` are refused outright, so no chain of links can climb out either. Modes are
    cut to rwx bits (no setuid), as the ``data`` filter does.
    """
    members = tf.getmembers()
    for member in members:
        if _outside(member.name):
            raise BenchError(
                f"archive member {member.name!r} points outside the archive",
                where=str(archive),
                fix=_NOT_PUBLISHED,
            )
        if (member.issym() or member.islnk()) and (_outside(member.linkname) or not member.linkname):
            kind = "symbolic" if member.issym() else "hard"
            raise BenchError(
                f"archive member {member.name!r} is a {kind} link to {member.linkname!r}, outside "
                "the archive",
                where=str(archive),
                fix=_NOT_PUBLISHED,
            )
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            raise BenchError(
                f"archive member {member.name!r} is a device or FIFO, not a file",
                where=str(archive),
                fix=_NOT_PUBLISHED,
            )
        member.mode &= 0o777
    return members


def _check_zip_members(zf: zipfile.ZipFile, archive: Path) -> None:
    """Zip members must have plain names (zipfile would silently rewrite others) and be files or folders."""
    for info in zf.infolist():
        if _outside(info.filename):
            raise BenchError(
                f"archive member {info.filename!r} points outside the archive",
                where=str(archive),
                fix=_NOT_PUBLISHED,
            )
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise BenchError(
                f"archive member {info.filename!r} is a link or special file, not a file",
                where=str(archive),
                fix=_NOT_PUBLISHED,
            )
