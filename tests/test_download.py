"""Downloads resume and verify; prepare unpacks all-or-nothing; manual steps come with instructions."""

import hashlib
import io
import json
import tarfile
import zipfile

import pytest

from bench.datasets.download import fetch, unpack
from bench.datasets.prepare import DOWNLOADS, STATE_FILE, prepare
from bench.datasets.spec import DatasetSpec, Download
from bench.errors import BenchError

from .loopback import Behaviour, serve

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, larger than one read chunk boundary


def _md5(data: bytes) -> str:
    return "md5:" + hashlib.md5(data).hexdigest()


def _tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def test_good_checksum_downloads_and_verifies(tmp_path):
    behaviour = Behaviour({"/a.bin": PAYLOAD})
    with serve(behaviour) as url:
        digests = fetch(f"{url}/a.bin", tmp_path / "a.bin", _md5(PAYLOAD))
    assert (tmp_path / "a.bin").read_bytes() == PAYLOAD
    assert digests["sha256"] == hashlib.sha256(PAYLOAD).hexdigest()
    assert not (tmp_path / "a.bin.part").exists()
    assert behaviour.ranges == [None]


def test_bad_checksum_deletes_the_partial_file_and_says_so(tmp_path):
    with serve(Behaviour({"/a.bin": PAYLOAD})) as url, pytest.raises(BenchError) as caught:
        fetch(f"{url}/a.bin", tmp_path / "a.bin", "md5:" + "0" * 32)
    message = str(caught.value)
    assert "a.bin failed verification: md5 is" in message and f"{url}/a.bin" in message and "Fix:" in message
    assert not (tmp_path / "a.bin").exists() and not (tmp_path / "a.bin.part").exists()


def test_interrupted_transfer_resumes_with_a_range_request(tmp_path):
    behaviour = Behaviour({"/a.bin": PAYLOAD}, cut_first={"/a.bin": 300_000})
    with serve(behaviour) as url:
        with pytest.raises(
            BenchError, match=r"download interrupted after 300000 bytes.*Fix: run the same command again"
        ):
            fetch(f"{url}/a.bin", tmp_path / "a.bin", _md5(PAYLOAD))
        assert (tmp_path / "a.bin.part").stat().st_size == 300_000 and not (tmp_path / "a.bin").exists()
        fetch(f"{url}/a.bin", tmp_path / "a.bin", _md5(PAYLOAD))
    assert behaviour.ranges == [None, "bytes=300000-"]
    assert (tmp_path / "a.bin").read_bytes() == PAYLOAD


def test_server_without_range_support_restarts_from_scratch(tmp_path):
    (tmp_path / "a.bin.part").write_bytes(b"stale bytes from an older attempt")
    behaviour = Behaviour({"/a.bin": PAYLOAD}, ignore_range=True)
    with serve(behaviour) as url:
        fetch(f"{url}/a.bin", tmp_path / "a.bin", _md5(PAYLOAD))
    assert behaviour.ranges == ["bytes=33-"]
    assert (tmp_path / "a.bin").read_bytes() == PAYLOAD


def test_a_web_page_instead_of_the_file_is_refused(tmp_path):
    with serve(Behaviour({"/a.json": b"<html>confirm</html>"}, content_type="text/html")) as url:
        with pytest.raises(BenchError, match="web page instead of the file.*Fix: download it in a browser"):
            fetch(f"{url}/a.json", tmp_path / "a.json", None)


def test_unpack_refuses_members_outside_the_archive(tmp_path):
    (tmp_path / "evil.tar.gz").write_bytes(_tar({"../escape.txt": b"x"}))
    with pytest.raises(BenchError, match="points outside the archive"):
        unpack(tmp_path / "evil.tar.gz", tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def _toy_data() -> tuple[bytes, bytes]:
    from PIL import Image

    image = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(image, format="PNG")
    archive = _tar(
        {f"toy/images/{c}/{i}.png": image.getvalue() for c in ("a", "b") for i in range(3)}
        | {"toy/README": b"toy"}
    )
    split = {
        name: [[f"{c}/{i}.png", label, c] for label, c in enumerate(("a", "b")) for i in rows]
        for name, rows in (("train", (0,)), ("val", (1,)), ("test", (2,)))
    }
    return archive, json.dumps(split).encode()


def _toy_spec(url: str, archive: bytes, **kw) -> DatasetSpec:
    downloads = (
        Download("toy.tar.gz", f"{url}/toy.tar.gz", _md5(archive), members=(("toy/images", "images"),)),
        Download("split_zhou_Toy.json", f"{url}/split.json", place="split_zhou_Toy.json"),
    )
    return DatasetSpec(
        name="toy",
        version="1",
        folder="toy",
        image_dir="images",
        split_file="split_zhou_Toy.json",
        prompts={"coop": ("a photo of a {}.",)},
        n_classes=2,
        split_sizes=(2, 2, 2),
        downloads=kw.pop("downloads", downloads),
        **kw,
    )


def test_prepare_downloads_verifies_unpacks_then_skips_what_is_present(tmp_path):
    archive, split = _toy_data()
    behaviour = Behaviour({"/toy.tar.gz": archive, "/split.json": split})
    with serve(behaviour) as url:
        spec = _toy_spec(url, archive)
        report = prepare(spec, tmp_path, progress=False)
        assert report.complete, report
        assert (tmp_path / "toy/images/b/2.png").is_file() and (
            tmp_path / "toy/split_zhou_Toy.json"
        ).is_file()
        assert not (tmp_path / "toy/README").exists()  # only the declared members are placed
        state = json.loads((tmp_path / "toy" / DOWNLOADS / STATE_FILE).read_text())
        assert state["toy.tar.gz"]["status"] == "done" and state["toy.tar.gz"]["checksum"] == _md5(archive)
        assert not (tmp_path / "toy" / DOWNLOADS / "toy.tar.gz").exists()  # archive removed after unpacking
        assert any("checked  2 classes, 2/2/2" in line for line in report.lines)
        again = prepare(spec, tmp_path, progress=False)
    assert again.complete and len(behaviour.ranges) == 2  # nothing downloaded twice
    assert again.lines[:2] == ["present  images", "present  split_zhou_Toy.json"]


def test_prepare_with_a_corrupt_archive_leaves_nothing_in_place(tmp_path):
    archive, split = _toy_data()
    with serve(Behaviour({"/toy.tar.gz": archive[:-100] + b"x" * 100, "/split.json": split})) as url:
        report = prepare(_toy_spec(url, archive), tmp_path, progress=False)
    assert not report.complete and "1 download step(s) failed (toy.tar.gz" in report.problem
    assert any(
        line.startswith("failed   toy.tar.gz: ") and "failed verification" in line for line in report.lines
    )
    assert not (tmp_path / "toy/images").exists()
    assert (tmp_path / "toy/split_zhou_Toy.json").is_file()  # the other step still ran


def test_prepare_rolls_back_a_step_interrupted_while_placing(tmp_path):
    archive, split = _toy_data()
    downloads = tmp_path / "toy" / DOWNLOADS
    downloads.mkdir(parents=True)
    (downloads / STATE_FILE).write_text(
        json.dumps({"toy.tar.gz": {"status": "placing", "dests": ["images"]}})
    )
    (tmp_path / "toy/images/a").mkdir(parents=True)  # a half-placed destination from the killed run
    (tmp_path / "toy/images/a/0.png").write_bytes(b"partial")
    with serve(Behaviour({"/toy.tar.gz": archive, "/split.json": split})) as url:
        report = prepare(_toy_spec(url, archive), tmp_path, progress=False)
    assert report.complete
    assert (tmp_path / "toy/images/a/0.png").read_bytes().startswith(b"\x89PNG")


def test_manual_download_prints_instructions_then_uses_the_file_the_user_placed(tmp_path):
    archive, split = _toy_data()
    inner = _zip({"outer/toy.tar.gz": archive})  # an archive inside an archive, as Caltech101's zip
    with serve(Behaviour({"/split.json": split})) as url:
        spec = _toy_spec(
            url,
            archive,
            manual="Get toy.zip by hand and put it in {downloads}.",
            downloads=(
                Download(
                    "toy.zip",
                    None,
                    _md5(inner),
                    inner="outer/toy.tar.gz",
                    members=(("toy/images", "images"),),
                ),
                Download("split_zhou_Toy.json", f"{url}/split.json", place="split_zhou_Toy.json"),
            ),
        )
        first = prepare(spec, tmp_path, progress=False)
        assert not first.complete
        assert f"missing  {tmp_path / 'toy' / DOWNLOADS / 'toy.zip'} (manual download)" in first.manual
        assert f"Get toy.zip by hand and put it in {tmp_path / 'toy' / DOWNLOADS}." in first.manual
        (tmp_path / "toy" / DOWNLOADS / "toy.zip").write_bytes(inner)
        second = prepare(spec, tmp_path, progress=False)
    assert second.complete, second
    assert (tmp_path / "toy/images/a/0.png").is_file()
    assert (tmp_path / "toy" / DOWNLOADS / "toy.zip").is_file()  # the user's own file is kept


def test_a_partly_present_destination_is_not_overwritten(tmp_path):
    archive, split = _toy_data()
    downloads = (
        Download(
            "toy.tar.gz",
            "http://127.0.0.1:9/unused",
            _md5(archive),
            members=(("toy/images", "images"), ("toy/README", "README")),
        ),
    )
    (tmp_path / "toy/images").mkdir(parents=True)
    report = prepare(_toy_spec("http://127.0.0.1:9", archive, downloads=downloads), tmp_path, progress=False)
    assert any("images exist(s) but toy.tar.gz also provides README" in line for line in report.lines)
    assert not (tmp_path / "toy/README").exists() and not report.complete


def test_no_connection_is_not_an_interrupted_transfer_and_manual_steps_still_print(tmp_path):
    """Offline, every step fails on its own, and the dataset's manual instructions are still given."""
    archive, _ = _toy_data()
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    with pytest.raises(BenchError, match=r"cannot connect .*Fix: check the network") as caught:
        fetch(f"{dead}/x.bin", tmp_path / "x.bin", None)
    assert "interrupted" not in str(caught.value) and not (tmp_path / "x.bin.part").exists()
    report = prepare(
        _toy_spec(dead, archive, manual="Fetch it from the mirror into {downloads}."),
        tmp_path,
        progress=False,
    )
    assert [line.split(":")[0] for line in report.lines] == [
        "failed   toy.tar.gz",
        "failed   split_zhou_Toy.json",
    ]
    assert report.manual == [f"Fetch it from the mirror into {tmp_path / 'toy' / DOWNLOADS}."]
