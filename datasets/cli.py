"""``bench data``: list, check, prepare datasets; export few-shot index files; write miniatures.

bench data list [--du]                     what is known, what is present, sizes
bench data check NAME[,NAME|all]           every listed file present and decodable, counts, sha256
bench data prepare NAME[,NAME|all]         download, verify, unpack; instructions for manual steps
bench data export-splits NAME --shots all --seeds 1,2,3 --out DIR
bench data import-splits DIR               use exported index files (checked against your split files)
bench data miniature [NAME,...|all]        generated miniatures of the real layouts (tests, smoke runs)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.errors import BenchError


def add_parser(subparsers) -> None:
    from bench.run_config import add_folder_argument

    p = subparsers.add_parser(
        "data",
        help="list, check and prepare datasets; export few-shot index files",
        description="Datasets: what is known and present, checks, downloads, index files.",
    )
    sub = p.add_subparsers(dest="data_command", required=True)
    _add(sub, "list", _cmd_list, "known datasets, whether their data is present, sizes").add_argument(
        "--du", action="store_true", help="also measure the disk usage of present datasets"
    )
    sub.choices["list"].add_argument(
        "--json", action="store_true", help="print the list as one JSON document"
    )
    check = _add(
        sub, "check", _cmd_check, "every listed image present and decodable, class count, sizes, sha256"
    )
    check.add_argument("names", help="dataset name(s), comma-separated, or 'all' (those present)")
    check.add_argument("--no-decode", action="store_true", help="only check that the listed files exist")
    check.add_argument(
        "--workers", type=int, default=0, help="decoding processes (default: 0 = this process)"
    )
    prepare = _add(sub, "prepare", _cmd_prepare, "download, verify and unpack a dataset into CoOp's layout")
    prepare.add_argument("names", help="dataset name(s), comma-separated, or 'all'")
    prepare.add_argument(
        "--keep-archives", action="store_true", help="keep downloaded archives after unpacking"
    )
    export = _add(sub, "export-splits", _cmd_export, "write the few-shot index files (JSON, relative paths)")
    export.add_argument("names", help="dataset name(s), comma-separated, or 'all' (those present)")
    export.add_argument("--shots", default="all", help="comma list or 'all' = 1,2,4,8,16")
    export.add_argument("--seeds", default="1,2,3", help="comma list (default: 1,2,3)")
    export.add_argument(
        "--out", type=Path, required=True, help="folder to write <dataset>/<protocol>/shot_K-seed_S.json"
    )
    export.add_argument(
        "--sampling",
        default="dassl",
        choices=("dassl", "dassl_repeat", "dassl_full_val"),  # bench.datasets.splits.SAMPLINGS (tested)
        help="few-shot sampling, as bench run --sampling (default: dassl)",
    )
    add_folder_argument(
        export, "cache_dir", "the cache whose index files are exported (drawn there first if absent)"
    )
    imported = _add(
        sub,
        "import-splits",
        _cmd_import,
        "use exported few-shot index files, checked against the split files here",
    )
    imported.add_argument("folder", type=Path, help="a folder written by export-splits")
    add_folder_argument(imported, "cache_dir", "the cache bench run reads index files from")
    mini = _add(
        sub, "miniature", _cmd_miniature, "write miniatures of the real layouts (few classes, tiny images)"
    )
    mini.add_argument("names", nargs="?", default="all", help="dataset name(s), comma-separated, or 'all'")


def _add(sub, name: str, func, help_text: str) -> argparse.ArgumentParser:
    from bench.run_config import add_folder_argument

    p = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
    add_folder_argument(p, "data_root")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=func)
    return p


def _registry():
    from bench.datasets import dataset_registry

    return dataset_registry()


def _status(spec, data_root: Path) -> str:
    from bench.datasets.selection import is_present
    from bench.datasets.spec import MINIATURE_MARKER

    folder = data_root / spec.folder
    if (folder / MINIATURE_MARKER).is_file():
        return "miniature"
    if is_present(spec, data_root):
        return "present"
    if spec.generator:
        return "generated on first use"
    return "incomplete" if folder.exists() else "missing"


def _kind(spec) -> str:
    if spec.generator:
        return "generated"
    return f"shift of {spec.shift_of}" if spec.test_only else "few-shot"


def _download_kind(spec) -> str:
    if spec.generator:
        return "-"
    automatic = any(d.url for d in spec.downloads)
    if spec.manual:
        return "auto+manual" if automatic else "manual"
    return "auto"


def _disk_usage(folder: Path) -> str:
    total = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.exists() else 0
    return f"{total / 1e9:.2f} GB"


def _cmd_list(args) -> int:
    registry = _registry()
    rows = [("name", "kind", "classes", "train/val/test", "download", "status", "folder")]
    for name in registry.names():
        spec = registry.get(name)
        sizes = "/".join(f"{n:,}" for n in spec.split_sizes) if spec.split_sizes else "-"
        status = _status(spec, args.data_root)
        if args.du and (args.data_root / spec.folder).exists():
            status += f" ({_disk_usage(args.data_root / spec.folder)})"
        rows.append(
            (
                name,
                _kind(spec),
                str(spec.n_classes or "-"),
                sizes,
                _download_kind(spec),
                status,
                str(args.data_root / spec.folder),
            )
        )
    if args.json:
        keys = ("name", "kind", "classes", "sizes", "download", "status", "folder")
        print(json.dumps([dict(zip(keys, row, strict=True)) for row in rows[1:]], indent=2))
        return 0
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def _names(text: str, data_root: Path, *, present_only: bool) -> list[str]:
    """Names from a comma list; ``all`` means every dataset (every present one with ``present_only``)."""
    from bench.datasets.selection import is_present

    registry = _registry()
    names = registry.expand(text)
    if text.strip() == "all" and present_only:
        names = [n for n in names if is_present(registry.get(n), data_root)]
        if not names:
            raise BenchError("no dataset is present", where=str(data_root), fix="see `bench data list`")
    return names


def _cmd_check(args) -> int:
    from bench.datasets.check import check_dataset

    failed = []
    for name in _names(args.names, args.data_root, present_only=True):
        report = check_dataset(
            _registry().get(name),
            args.data_root,
            decode=not args.no_decode,
            workers=args.workers,
            progress=not args.no_progress,
        )
        print(f"== {name}")
        for line in report.lines:
            print(f"   {line}")
        for problem in report.problems:
            print(f"FAIL {problem}")
        if not report.ok:
            failed.append(name)
    print(f"{'all checks passed' if not failed else 'problems in: ' + ', '.join(failed)}")
    return 1 if failed else 0


def _cmd_prepare(args) -> int:
    from bench.datasets.prepare import prepare

    incomplete = []
    for name in _names(args.names, args.data_root, present_only=False):
        spec = _registry().get(name)
        if spec.generator:
            continue
        print(f"== {name} -> {args.data_root / spec.folder}")
        report = prepare(
            spec, args.data_root, keep_archives=args.keep_archives, progress=not args.no_progress
        )
        for line in report.lines:
            print(f"   {line}")
        for instructions in report.manual:
            print(f"TODO {instructions}")
        if report.problem:
            print(f"     not complete yet: {report.problem}")
        if not report.complete:
            incomplete.append(name)
    print("all prepared" if not incomplete else f"manual steps needed for: {', '.join(incomplete)}")
    return 1 if incomplete else 0


def _cmd_export(args) -> int:
    from bench.datasets import read_dataset
    from bench.datasets.splits import load_or_create_fewshot, samplings_for, split_protocol
    from bench.fileio import atomic_write_bytes
    from bench.spec import ALL_SHOTS, parse_int_list

    shots = parse_int_list(args.shots, flag="--shots", all_value=ALL_SHOTS)
    seeds = parse_int_list(args.seeds, flag="--seeds")
    names = _names(args.names, args.data_root, present_only=True)
    if args.names.strip() == "all":  # only datasets that have few-shot subsets of their own, in this sampling
        names = [n for n in names if not _registry().get(n).test_only]
        skipped = [n for n in names if args.sampling not in samplings_for(_registry().get(n))]
        names = [n for n in names if n not in skipped]
        if skipped:
            print(f"skipped (no val split for --sampling {args.sampling}): {', '.join(skipped)}")
    for name in names:  # a named dataset the sampling cannot serve is refused before anything is written
        split_protocol(_registry().get(name), args.sampling)
    for name in names:
        spec = _registry().get(name)
        if spec.test_only:
            raise BenchError(
                f"{name!r} is test-only: it has no few-shot subsets",
                where="bench data export-splits",
                fix="export the splits of the dataset it shifts from",
            )
        splits = read_dataset(spec, args.data_root)
        for k in shots:
            for seed in seeds:
                index = load_or_create_fewshot(splits, spec, k, seed, args.cache_dir, args.sampling)
                atomic_write_bytes(
                    args.out / name / index.protocol / index.path.name, index.path.read_bytes()
                )
        print(f"{name}: {len(shots) * len(seeds)} index files in {args.out / name}")
    return 0


def _cmd_import(args) -> int:
    from bench.datasets import read_dataset
    from bench.datasets.splits import import_index

    registry = _registry()
    folders = (
        sorted(p for p in Path(args.folder).iterdir() if p.is_dir()) if Path(args.folder).is_dir() else []
    )
    if not folders:
        raise BenchError(
            "no <dataset>/ folders here",
            where=str(args.folder),
            fix="pass the --out folder of `bench data export-splits`",
        )
    for folder in folders:
        spec = registry.get(folder.name)
        files = sorted(folder.glob("*/shot_*-seed_*.json"))
        splits = read_dataset(spec, args.data_root)
        for file in files:
            import_index(file, splits, spec, args.cache_dir)
        print(
            f"{spec.name}: {len(files)} index files checked against {splits.source} and placed under "
            f"{args.cache_dir / 'splits' / spec.name}"
        )
    return 0


def _cmd_miniature(args) -> int:
    from bench.datasets.miniature import generate_miniature

    registry = _registry()
    names = [n for n in registry.expand(args.names) if not registry.get(n).generator]
    for name in names:
        generate_miniature(registry.get(name), args.data_root)
    print(f"{len(names)} miniatures under {args.data_root}: {', '.join(names)}")
    return 0
