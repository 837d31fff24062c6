"""``bench data prepare``: fetch what is missing, verify it, unpack it into CoOp's layout.

Each :class:`~bench.datasets.spec.Download` of a spec is a step. A step whose destinations
all exist is skipped (data you already have is never touched or re-downloaded). Otherwise
the file is downloaded into ``<dataset folder>/.downloads/`` (resuming, verified), unpacked
into a scratch folder, and its members are renamed into place. The steps' state is kept in
``.downloads/state.json``; a step interrupted while moving its members is rolled back and
redone on the next run, so a destination that exists is always complete. Files that cannot be
downloaded (ImageNet, dead links) come with instructions; a file the user puts in the
downloads folder is verified and unpacked like a downloaded one.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from bench.datasets import read_dataset
from bench.datasets.download import fetch, unpack, verify
from bench.datasets.spec import DatasetSpec, Download
from bench.errors import BenchError
from bench.fileio import atomic_write_bytes, atomic_write_json

DOWNLOADS = ".downloads"
STATE_FILE = "state.json"
CLASS_LIST_READERS = ("read_imagenet", "read_imagenet_v2", "read_wnid_folders")


@dataclass
class PrepareReport:
    """What ``prepare`` did, line by line, and whether the dataset is complete afterwards."""

    lines: list[str] = field(default_factory=list)
    manual: list[str] = field(default_factory=list)
    problem: str | None = None

    @property
    def complete(self) -> bool:
        return not self.manual and self.problem is None


def prepare(
    spec: DatasetSpec, data_root: Path, *, keep_archives: bool = False, progress: bool = True
) -> PrepareReport:
    """Bring ``spec``'s folder under ``data_root`` to CoOp's layout, as far as downloads allow."""
    folder = Path(data_root) / spec.folder
    downloads = folder / DOWNLOADS
    report = PrepareReport()
    failed = []
    for step in spec.downloads:  # a failed step does not stop the others: each is independent
        try:
            _run_step(step, folder, downloads, report, keep_archives=keep_archives, progress=progress)
        except BenchError as exc:
            report.lines.append(f"failed   {step.filename}: {exc}")
            failed.append(step.filename)
    if spec.reader.rpartition(":")[2] in CLASS_LIST_READERS:
        _write_class_list(spec, folder, report)
    try:
        splits = read_dataset(spec, data_root)
        report.lines.append(
            f"checked  {len(splits.classnames)} classes, {len(splits.train)}/"
            f"{len(splits.val) if spec.val_source == 'split' else 0}/{len(splits.test)} "
            "train/val/test images listed and present (`bench data check` decodes them)"
        )
    except BenchError as exc:
        report.problem = (
            f"{len(failed)} download step(s) failed ({', '.join(failed)}; see above); then: {exc}"
            if failed
            else str(exc)
        )
        if spec.manual:
            report.manual.append(spec.manual.format(folder=folder, downloads=downloads))
    return report


def _destinations(step: Download, folder: Path) -> list[str]:
    """Where ``step`` puts its files: plain paths inside the dataset folder (no absolute path, no ``..``)."""
    dests = [dest for _, dest in step.members] if step.members else [step.place or step.filename]
    for dest in dests:
        if Path(dest).is_absolute() or ".." in Path(dest).parts or not Path(dest).parts:
            raise BenchError(
                f"destination {dest!r} of {step.filename} is outside the dataset folder",
                where=str(folder),
                fix="fix the dataset spec: destinations are paths inside its folder",
            )
    return dests


def _run_step(
    step: Download,
    folder: Path,
    downloads: Path,
    report: PrepareReport,
    *,
    keep_archives: bool,
    progress: bool,
) -> None:
    state = _read_state(downloads)
    entry = state.get(step.filename, {})
    dests = _destinations(step, folder)
    if (
        isinstance(entry, dict) and entry.get("status") == "placing"
    ):  # interrupted while placing: undo, then redo
        for dest in dests:  # the spec's own destinations, never paths the state file names
            _remove(folder / dest, folder)
    elif all((folder / d).exists() for d in dests):
        report.lines.append(f"present  {', '.join(dests)}")
        return
    elif any((folder / d).exists() for d in dests):
        have = [d for d in dests if (folder / d).exists()]
        raise BenchError(
            f"{', '.join(have)} exist(s) but {step.filename} also provides "
            f"{', '.join(d for d in dests if d not in have)}",
            where=str(folder),
            fix="remove the partial copy (it will be downloaded again) or complete it by hand",
        )
    file = downloads / step.filename
    if step.url is None and not file.is_file():
        report.manual.append(f"missing  {file} (manual download)")
        return
    digests = (
        fetch(step.url, file, step.checksum, progress=progress) if step.url else verify(file, step.checksum)
    )
    _place(step, file, folder, downloads, dests)
    _write_state(
        downloads,
        {
            **_read_state(downloads),
            step.filename: {
                "status": "done",
                "dests": dests,
                "sha256": digests["sha256"],
                "checksum": step.checksum,
                "url": step.url,
            },
        },
    )
    if step.members and not keep_archives and step.url is not None:
        file.unlink(missing_ok=True)
    verified = (
        f"verified {step.checksum}"
        if step.checksum
        else f"sha256 {digests['sha256']} (no published checksum)"
    )
    report.lines.append(f"ready    {', '.join(dests)}  <- {step.filename}, {verified}")


def _place(step: Download, file: Path, folder: Path, downloads: Path, dests: list[str]) -> None:
    """Move a verified file, or the members of an unpacked archive, to their destinations."""
    if not step.members:
        _mark_placing(downloads, step, dests)
        (folder / dests[0]).parent.mkdir(parents=True, exist_ok=True)
        file.replace(folder / dests[0])
        return
    scratch = unpack(file, downloads / f"{step.filename}.unpacked")
    root = unpack(scratch / step.inner, downloads / f"{step.filename}.inner") if step.inner else scratch
    absent = [src for src, _ in step.members if not (root / src).exists()]
    if absent:
        raise BenchError(
            f"archive has no {absent[0]!r}",
            where=str(file),
            fix="this is not the archive the dataset spec expects: delete it and run the command again",
        )
    _mark_placing(downloads, step, dests)
    for src, dest in step.members:
        (folder / dest).parent.mkdir(parents=True, exist_ok=True)
        (root / src).rename(folder / dest)
    for tmp in (scratch, downloads / f"{step.filename}.inner"):
        shutil.rmtree(tmp, ignore_errors=True)


def _write_class_list(spec: DatasetSpec, folder: Path, report: PrepareReport) -> None:
    from bench.datasets.miniature import imagenet_classnames_txt

    path = folder / spec.split_file
    if path.is_file():
        report.lines.append(f"present  {spec.split_file}")
        return
    atomic_write_bytes(path, imagenet_classnames_txt().encode())
    report.lines.append(
        f"ready    {spec.split_file}  <- CLIP's ImageNet class names (open_clip), as CoOp's file"
    )


def _read_state(downloads: Path) -> dict:
    path = downloads / STATE_FILE
    try:
        state = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as exc:
        raise BenchError(
            f"unreadable download state ({exc})",
            where=str(path),
            fix="delete it; steps whose files are all in place are skipped, the others redone",
        ) from exc
    if not isinstance(state, dict):
        raise BenchError("download state is not a JSON object", where=str(path), fix="delete it")
    return state


def _write_state(downloads: Path, state: dict) -> None:
    atomic_write_json(downloads / STATE_FILE, state)


def _mark_placing(downloads: Path, step: Download, dests: list[str]) -> None:
    _write_state(downloads, {**_read_state(downloads), step.filename: {"status": "placing", "dests": dests}})


def _remove(path: Path, folder: Path) -> None:
    """Delete ``path`` (a link itself, not what it points to), if it lies inside ``folder``."""
    if not path.parent.resolve().is_relative_to(folder.resolve()):
        raise BenchError(
            f"{path} lies outside the dataset folder (through a symbolic link)",
            where=str(folder),
            fix=f"remove {path} by hand if it is a partial copy, then run the command again",
        )
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
