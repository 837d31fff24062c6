"""``bench data check``: is a dataset exactly what the papers used, and can every image be read?

It reads the dataset leniently and reports every difference from the official data, one
line each: the split file's sha256 (against the pinned value, or printed when none is
pinned), the class count, the (train, val, test) sizes, listed images that are missing,
and images that cannot be decoded. A dataset that cannot be read at all is one error.
"""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from bench.datasets import read_dataset
from bench.datasets.readers import count_problems, split_sizes
from bench.datasets.spec import DatasetSpec, DatasetSplits, expectations
from bench.errors import BenchError
from bench.fileio import sha256_file

EXAMPLES = 5


@dataclass
class CheckReport:
    """``lines``: what was checked; ``problems``: one line each, naming the file and the fix."""

    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def decode_error(path: str) -> str | None:
    """``None`` if ``path`` decodes fully as an image, else why not."""
    try:
        with Image.open(path) as img:
            img.load()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def check_dataset(
    spec: DatasetSpec, data_root: Path, *, decode: bool = True, workers: int = 0, progress: bool = False
) -> CheckReport:
    """Every check of ``spec``'s data under ``data_root``.

    Raises:
        BenchError: the dataset cannot be read at all (missing folder or split file, malformed file).
    """
    folder = Path(data_root) / spec.folder
    splits = read_dataset(spec, data_root, strict=False)
    expected = expectations(spec, folder)
    report = CheckReport()
    report.lines.append(
        f"data     {folder}" + (" (MINIATURE: generated, not the real dataset)" if expected.miniature else "")
    )
    _check_sha256(spec, splits, report)
    problems = count_problems(spec, expected, splits)
    report.problems += [str(p) for p in problems]
    if not problems:
        report.lines.append(
            f"counts   {len(splits.classnames)} classes, "
            f"{'/'.join(map(str, split_sizes(spec, splits)))} train/val/test images, as expected"
        )
    _check_files(splits, report, decode=decode, workers=workers, progress=progress)
    return report


def _check_sha256(spec: DatasetSpec, splits: DatasetSplits, report: CheckReport) -> None:
    digest = splits.source_sha256
    if Path(splits.source).is_dir():
        report.lines.append(
            f"sha256   {digest}  of the file listing of {splits.source} (recorded in every result)"
        )
    elif digest != sha256_file(splits.source):  # one digest over several list files (FGVCAircraft's txt)
        report.lines.append(
            f"sha256   {digest}  over {splits.source} and the lists read with it, together "
            "(recorded in every result)"
        )
    elif spec.split_sha256 is None:
        report.lines.append(
            f"sha256   {digest}  {splits.source} (no pinned value for {spec.name!r}: compare it with "
            "a trusted copy)"
        )
    elif digest == spec.split_sha256:
        report.lines.append(f"sha256   {digest}  {splits.source}, matches the pinned value")
    else:
        report.problems.append(
            str(
                BenchError(
                    f"split file has sha256 {digest}, expected {spec.split_sha256}",
                    where=str(splits.source),
                    fix="download the official split file again (`bench data prepare`)",
                )
            )
        )


def _listed_files(splits: DatasetSplits) -> list[Path]:
    paths = dict.fromkeys(p for name in ("train", "val", "test") for p in splits.split(name).paths)
    return [splits.image_root / p for p in paths]


def _check_files(
    splits: DatasetSplits, report: CheckReport, *, decode: bool, workers: int, progress: bool
) -> None:
    files = _listed_files(splits)
    missing = [f for f in files if not f.is_file()]
    if missing:
        report.problems.append(
            str(
                BenchError(
                    f"{len(missing)} of {len(files)} listed images do not exist, first: {missing[0]}",
                    where=str(splits.source),
                    fix=f"extract the images under {splits.image_root} as the split file expects",
                )
            )
        )
        report.lines += [f"missing  {f}" for f in missing[:EXAMPLES]]
    absent = set(missing)
    present = [str(f) for f in files if f not in absent]
    if not decode:
        report.lines.append(f"files    {len(present)} present (not decoded: --no-decode)")
        return
    errors = _decode_all(present, workers, progress)
    if errors:
        path, why = errors[0]
        report.problems.append(
            str(
                BenchError(
                    f"{len(errors)} of {len(present)} images cannot be decoded, first: {why}",
                    where=path,
                    fix="re-extract or re-download these files",
                )
            )
        )
        report.lines += [f"corrupt  {p} ({why})" for p, why in errors[:EXAMPLES]]
    else:
        report.lines.append(f"files    {len(present)} present and decodable")


def _decode_all(paths: list[str], workers: int, progress: bool) -> list[tuple[str, str]]:
    bar = tqdm(total=len(paths), desc="decoding", unit="img", disable=not progress, leave=False)
    errors = []
    with bar:
        if workers > 0:
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                results = pool.imap(decode_error, paths, chunksize=64)
                for path, error in zip(paths, results, strict=True):
                    bar.update(1)
                    if error:
                        errors.append((path, error))
        else:
            for path in paths:
                bar.update(1)
                error = decode_error(path)
                if error:
                    errors.append((path, error))
    return errors
