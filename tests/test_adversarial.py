"""Issue 16, untrusted folders and bad input: one test per finding (items 5, 6, 7, 8, 10, 11).

Each test plants what a careless or hostile folder could hold (a pickle, a crafted archive, a state file
pointing elsewhere, a profile with a newline, a damaged file) and checks that the harness refuses it in
one line, or ignores it, without touching anything outside its folder. ``docs/reliability.md`` lists
the promises these tests keep.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pickle
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest

from bench.cli import main
from bench.errors import BenchError

from .conftest import TINY


class _Planted:
    """Unpickling this creates ``path``: proof that a pickle was loaded."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def _plant(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(("error", _Planted(marker))))


# item 5 ---------------------------------------------------------------------------------------------


def _sweep(results: Path, executor: str, log_folder: Path):
    from bench.slurm.manifest import CellEntry, FeatureEntry, Manifest, TaskEntry, write_manifest

    cells = (CellEntry("zero_shot/synthetic/k1/s1", TINY, "r/k1.json", 0),)
    manifest = Manifest(
        "20260101T000000Z-abcdef",
        "2026-01-01T00:00:00+00:00",
        executor,
        False,
        "/elsewhere",
        str(log_folder / "%j"),
        {},
        cells,
        (FeatureEntry(TINY, "synthetic", "7"),),
        (TaskEntry((0,), 0, "8"),),
    )
    # written as if under /elsewhere, then moved here: bench status must use where it finds it
    write_manifest(dataclasses.replace(manifest, results_root=str(results)))
    return manifest


def test_status_never_unpickles_a_planted_result(tmp_path, monkeypatch, capsys):
    """Item 5: submitit result pickles in a results folder (or where its manifest points) are never loaded."""
    from bench.slurm import sweep

    marker = tmp_path / "PWNED"
    results, elsewhere = tmp_path / "results", tmp_path / "attacker"
    for executor in ("processes", "slurm"):
        _sweep(results, executor, elsewhere)
        for folder in (elsewhere, results / ".sweeps" / "20260101T000000Z-abcdef" / "logs"):
            for job in ("7", "8"):
                _plant(folder / job / f"{job}_0_result.pkl", marker)
        if executor == "slurm":  # sacct says both jobs failed: the detail comes from their logs
            monkeypatch.setattr(sweep, "check_slurm_available", lambda: None)
            monkeypatch.setattr(sweep, "SlurmInfoWatcher", _FailedJobs)
        main(["status", "--results", str(results)])
        out = capsys.readouterr().out
        assert not marker.exists(), f"{executor}: a pickle from the results folder was loaded"
        assert "1 cells:" in out
        assert str(elsewhere) not in out  # the manifest's own log folder is ignored


class _FailedJobs:
    def __init__(self, delay_s=0):
        pass

    def register_job(self, job_id):
        pass

    def update(self):
        pass

    def get_state(self, job_id, mode="cache"):
        return "FAILED"


# item 6 ---------------------------------------------------------------------------------------------


def _tar(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for info, data in members:
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data else None)
    return buffer.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


def test_archive_links_and_special_files_are_refused_without_the_data_filter(tmp_path, monkeypatch):
    """Item 6: members, link targets and special files are checked on Pythons without tarfile's data filter."""
    from bench.datasets.download import unpack

    monkeypatch.delattr(tarfile, "data_filter", raising=False)  # as on 3.10.0-3.10.11 and 3.11.0-3.11.3
    outside = tmp_path / "outside"
    outside.mkdir()
    crafted = {
        "symlink": _tar((_member("link", tarfile.SYMTYPE, str(outside)), b""), (_member("link/pwned"), b"x")),
        "relative symlink": _tar(
            (_member("link", tarfile.SYMTYPE, "../outside"), b""), (_member("link/pwned"), b"x")
        ),
        "hardlink": _tar((_member("hard", tarfile.LNKTYPE, str(outside / "victim")), b"")),
        "fifo": _tar((_member("pipe", tarfile.FIFOTYPE), b"")),
        "device": _tar((_member("disk", tarfile.BLKTYPE), b"")),
    }
    (outside / "victim").write_text("keep")
    for name, data in crafted.items():
        (tmp_path / "a.tar.gz").write_bytes(data)
        with pytest.raises(BenchError, match=r"a.tar.gz: archive member .*(outside the archive|not a file)"):
            unpack(tmp_path / "a.tar.gz", tmp_path / "into")
        assert sorted(p.name for p in outside.iterdir()) == ["victim"], name
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("../../escape.txt", "x")
    (tmp_path / "a.zip").write_bytes(buffer.getvalue())
    with pytest.raises(BenchError, match="'../../escape.txt' points outside the archive"):
        unpack(tmp_path / "a.zip", tmp_path / "into")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        link = zipfile.ZipInfo("link")
        link.external_attr = 0o120777 << 16  # a symbolic link entry
        zf.writestr(link, "/etc/passwd")
    (tmp_path / "a.zip").write_bytes(buffer.getvalue())
    with pytest.raises(BenchError, match="'link' is a link or special file"):
        unpack(tmp_path / "a.zip", tmp_path / "into")
    fine = _tar((_member("d/a.txt"), b"a"), (_member("d/b.txt", tarfile.SYMTYPE, "a.txt"), b""))
    (tmp_path / "a.tar.gz").write_bytes(fine)
    assert (unpack(tmp_path / "a.tar.gz", tmp_path / "into") / "d" / "b.txt").read_text() == "a"


# item 7 ---------------------------------------------------------------------------------------------


def _edited_synthetic(data_root: Path, tmp_path: Path, edit) -> Path:
    from bench.datasets.catalog import SYNTHETIC

    root = tmp_path / "data"
    shutil.copytree(data_root / "synthetic", root / "synthetic")
    path = root / "synthetic" / SYNTHETIC.split_file
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    return root


def test_paths_from_split_files_state_files_and_manifests_are_confined(data_root, tmp_path):
    """Item 7: split-file image paths, .downloads/state.json and manifest record paths stay in their folder."""
    from bench.datasets import read_dataset
    from bench.datasets.catalog import SYNTHETIC
    from bench.datasets.prepare import prepare
    from bench.datasets.spec import DatasetSpec, Download
    from bench.slurm.manifest import find_manifest

    secret = tmp_path / "secret.png"
    shutil.copy(data_root / "synthetic" / "images" / "red_dots" / "test_003.png", secret)
    for bad in ("../../../secret.png", str(secret)):  # both name tmp_path/secret.png, which exists
        root = _edited_synthetic(
            data_root, tmp_path, lambda c, bad=bad: {**c, "test": [[bad, *c["test"][0][1:]], *c["test"][1:]]}
        )
        with pytest.raises(
            BenchError,
            match=r"split_zhou_Synthetic\.json: test\[0\]: image path .* leaves the image "
            r"folder",
        ):
            read_dataset(SYNTHETIC, root)
        shutil.rmtree(root)

    dataset, outside = tmp_path / "ds" / "toy", tmp_path / "OUTSIDE"
    (dataset / ".downloads").mkdir(parents=True)
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    (dataset / ".downloads" / "toy.bin").write_bytes(b"data")  # a manual download, already in place
    (dataset / ".downloads" / "state.json").write_text(
        json.dumps({"toy.bin": {"status": "placing", "dests": ["../../OUTSIDE"]}})
    )
    spec = DatasetSpec(
        name="toy",
        version="1",
        folder="toy",
        image_dir="images",
        split_file="split.json",
        prompts={"coop": ("a photo of a {}.",)},
        downloads=(Download("toy.bin", None, place="toy.bin"),),
    )
    prepare(spec, tmp_path / "ds", progress=False)
    assert (outside / "keep.txt").read_text() == "keep" and (dataset / "toy.bin").read_bytes() == b"data"
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"]

    results = tmp_path / "results"
    manifest = _sweep(results, "processes", tmp_path / "logs")
    path = results / ".sweeps" / manifest.sweep_id / "manifest.json"
    data = json.loads(path.read_text())
    data["cells"][0]["record"] = "../secret.png"
    path.write_text(json.dumps(data))
    with pytest.raises(BenchError, match=r"manifest.json: cell .* has its record outside the results folder"):
        find_manifest(results)


# item 8 ---------------------------------------------------------------------------------------------


def test_slurm_fields_with_control_characters_are_refused(tmp_path, data_root, capsys):
    """Item 8: a newline in a profile field or flag never reaches the sbatch script."""
    from bench.slurm.resources import load_profile

    profile = tmp_path / "evil.json"
    for field in ("partition", "account", "constraint"):
        profile.write_text(json.dumps({field: "gpu\n#SBATCH --wrap=touch /tmp/pwned"}))
        with pytest.raises(BenchError, match=rf"evil.json: {field}: {field} .* holds a control character"):
            load_profile(str(profile))
    args = [
        "run",
        "--data-root",
        str(data_root),
        "--cache-dir",
        str(tmp_path / "c"),
        "--results",
        str(tmp_path / "r"),
        "--device",
        "cpu",
        "--methods",
        "zero_shot",
        "--shots",
        "1",
        "--seeds",
        "1",
        "--executor",
        "slurm",
        "--dry-run",
        "--account",
        "lab\rx",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert (
        "account: account 'lab\\rx' holds a control character" in err and len(err.strip().splitlines()) == 1
    )


# item 11 --------------------------------------------------------------------------------------------


def test_split_and_flag_checks(data_root, tmp_path, capsys):
    """Item 11: overlap and repeats in a split file, the wrong-label message, --seeds '', --batch-size < 1,
    --dry-run on a read-only results folder."""
    from bench.datasets import read_dataset
    from bench.datasets.catalog import SYNTHETIC

    edits = {
        r"'red_stripes/test_000.png' is in both train and test": lambda c: {
            **c,
            "train": [*c["train"], c["test"][0]],
        },
        r"is listed more than once in val": lambda c: {**c, "val": [*c["val"], c["val"][0]]},
        r"labels are not 0..7: label 9 out of range, label 7 missing": lambda c: {
            k: [[p, 9 if y == 7 else y, n] for p, y, n in v] for k, v in c.items()
        },
    }
    for message, edit in edits.items():
        root = _edited_synthetic(data_root, tmp_path, edit)
        with pytest.raises(BenchError, match=message):
            read_dataset(SYNTHETIC, root)
        shutil.rmtree(root)

    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    if os.access(readonly, os.W_OK):  # root writes anywhere: take a folder nobody can create files in
        readonly = Path("/proc/self/fdinfo")
    run = [
        "run",
        "--data-root",
        str(data_root),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--device",
        "cpu",
        "--methods",
        "zero_shot",
        "--shots",
        "1",
        "--no-progress",
    ]
    assert main([*run, "--results", str(readonly), "--seeds", "1", "--dry-run"]) == 0
    assert "1 cells, 0 done, 1 to run" in capsys.readouterr().out
    assert main([*run, "--results", str(tmp_path / "r"), "--seeds", "", "--dry-run"]) == 2
    assert "--seeds: '' must list positive integers" in capsys.readouterr().err
    for size in ("0", "-5"):
        with pytest.raises(SystemExit):
            main([*run, "--results", str(tmp_path / "r"), "--batch-size", size, "--dry-run"])
        assert f"--batch-size: {size} is below 1; pass 1 or more" in capsys.readouterr().err


# item 10 --------------------------------------------------------------------------------------------


def _one_line_error(capsys, argv: list[str], *expected: str) -> str:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("bench: error: ") and "Fix:" in err, err
    for text in expected:
        assert text in err, (text, err)
    return err


def test_bad_input_is_one_line_naming_the_file(data_root, tmp_path, monkeypatch, capsys, caplog):
    """Item 10: damaged files, bad records, unwritable outputs, a full disk and a missing device are one line."""
    import errno

    import torch
    from PIL import Image

    from bench import fileio
    from bench.backbone import BackboneRef, load_backbone
    from bench.datasets import read_dataset
    from bench.datasets.catalog import SYNTHETIC
    from bench.datasets.spec import MINIATURE_MARKER
    from bench.datasets.splits import load_or_create_fewshot
    from bench.images import load_rgb

    from .report_fixtures import record, save

    # a damaged few-shot index file is drawn again (a warning naming it); a malformed one to import is refused
    splits = read_dataset(SYNTHETIC, data_root)
    first = load_or_create_fewshot(splits, SYNTHETIC, 2, 1, tmp_path / "cache")
    first.path.write_text('{"train": [["red_dots/tr')
    again = load_or_create_fewshot(splits, SYNTHETIC, 2, 1, tmp_path / "cache")
    assert (again.train, again.val, again.sha256) == (first.train, first.val, first.sha256)
    assert f"{first.path}: damaged few-shot index file" in caplog.text
    exported = tmp_path / "export" / "synthetic" / "dassl" / "shot_2-seed_1.json"
    exported.parent.mkdir(parents=True)
    exported.write_text(
        json.dumps({**json.loads(first.path.read_text()), "train": [["red_dots/train_000.png"]]})
    )
    _one_line_error(
        capsys,
        [
            "data",
            "import-splits",
            str(tmp_path / "export"),
            "--data-root",
            str(data_root),
            "--cache-dir",
            str(tmp_path / "cache2"),
        ],
        str(exported),
        "damaged few-shot index file",
    )

    # a decompression bomb names the image
    bomb = tmp_path / "bomb.png"
    Image.new("RGB", (64, 64)).save(bomb)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(BenchError, match=r"bomb.png: cannot decode image \(DecompressionBombError"):
        load_rgb(bomb)
    monkeypatch.undo()

    # a checkpoint that is a tensor or a list; a checkpoint torch cannot read
    for name, content in (("tensor.pt", torch.zeros(3)), ("list.pt", [torch.zeros(3)])):
        torch.save(content, tmp_path / name)
        with pytest.raises(BenchError, match=rf"{name}: .*not a state dict") as caught:
            load_backbone(BackboneRef.parse(f"{TINY.split('/')[0]}/{tmp_path / name}"), torch.device("cpu"))
        assert len(str(caught.value).splitlines()) == 1
    (tmp_path / "empty.pt").write_bytes(
        b""
    )  # torch's message for it: empty or several lines, never shown raw
    torch.save({"visual.nothing": torch.zeros(1)}, tmp_path / "foreign.pt")  # load_state_dict: many lines
    for name in ("empty.pt", "foreign.pt"):
        with pytest.raises(BenchError) as caught:
            load_backbone(BackboneRef.parse(f"{TINY.split('/')[0]}/{tmp_path / name}"), torch.device("cpu"))
        assert len(str(caught.value).splitlines()) == 1 and "()" not in str(caught.value), caught.value

    # bench report: a wrongly typed field, a folder, a dangling link
    results = tmp_path / "results"
    save(results, record("zero_shot", "dtd", 1, 1, 0.5))
    (path,) = results.rglob("k*.json")
    good = path.read_text()
    path.write_text(good.replace('"shots": 1', '"shots": "four"'))
    _one_line_error(capsys, ["report", "--results", str(results)], str(path), "spec.shots is 'four'")
    path.unlink()
    path.mkdir()
    _one_line_error(capsys, ["report", "--results", str(results)], str(path), "cannot read this record")
    path.rmdir()
    path.symlink_to(tmp_path / "gone.json")
    _one_line_error(capsys, ["report", "--results", str(results)], str(path), "cannot read this record")
    path.unlink()
    path.write_text(good)
    if os.geteuid() != 0:  # root reads anything: the permission case only holds for other users
        path.chmod(0)
        _one_line_error(capsys, ["report", "--results", str(results)], str(path), "cannot read this record")
        path.chmod(0o644)

    # a corrupt miniature marker
    root = _edited_synthetic(data_root, tmp_path, lambda c: c)
    (root / "synthetic" / MINIATURE_MARKER).write_text('{"n_classes": "eight"')
    with pytest.raises(
        BenchError, match=rf"{MINIATURE_MARKER}: damaged miniature marker.*bench data miniature"
    ):
        read_dataset(SYNTHETIC, root)

    # unwritable --out, --plot and export-splits --out (a file where a folder should be); a full disk
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    _one_line_error(
        capsys, ["report", "--results", str(results), "--out", str(blocker / "t.md")], str(blocker)
    )
    _one_line_error(capsys, ["report", "--results", str(results), "--plot", str(blocker)], str(blocker))
    _one_line_error(
        capsys,
        [
            "data",
            "export-splits",
            "synthetic",
            "--shots",
            "1",
            "--seeds",
            "1",
            "--data-root",
            str(data_root),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--out",
            str(blocker / "x"),
        ],
        str(blocker),
    )

    def full_disk(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(fileio, "atomic_write_bytes", full_disk)
    _one_line_error(
        capsys,
        ["report", "--results", str(results), "--out", str(tmp_path / "t.md")],
        f"{tmp_path / 't.md'}: No space left on device",
        "free space",
    )
    monkeypatch.undo()

    # a device this machine does not have
    if not torch.backends.mps.is_available():
        _one_line_error(
            capsys,
            [
                "run",
                "--data-root",
                str(data_root),
                "--results",
                str(tmp_path / "r"),
                "--device",
                "mps",
                "--methods",
                "zero_shot",
                "--shots",
                "1",
                "--seeds",
                "1",
            ],
            "--device: device 'mps' is not available",
        )
