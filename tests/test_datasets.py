"""The eleven datasets and four shift sets: specs as data, miniatures through check, sampling and features."""

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from bench.datasets import dataset_registry, read_dataset
from bench.datasets.check import check_dataset
from bench.datasets.miniature import miniature_wnids
from bench.datasets.readers import official_class_ids
from bench.datasets.spec import MINIATURE_MARKER
from bench.datasets.splits import load_or_create_fewshot, sample_fewshot, split_protocol
from bench.errors import BenchError
from bench.features import ExtractOptions, FeatureCache, ImageFeatureKey
from bench.images import CENTER

FEWSHOT = (
    "imagenet",
    "caltech101",
    "oxford_pets",
    "stanford_cars",
    "oxford_flowers",
    "food101",
    "fgvc_aircraft",
    "sun397",
    "dtd",
    "eurosat",
    "ucf101",
)
SHIFT = ("imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r")
# CoOp trainers/zsclip.py CUSTOM_TEMPLATES, restated
COOP_TEMPLATES = {
    "oxford_pets": "a photo of a {}, a type of pet.",
    "oxford_flowers": "a photo of a {}, a type of flower.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
    "dtd": "{} texture.",
    "eurosat": "a centered satellite photo of {}.",
    "stanford_cars": "a photo of a {}.",
    "food101": "a photo of {}, a type of food.",
    "sun397": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "ucf101": "a photo of a person doing {}.",
    "imagenet": "a photo of a {}.",
    "imagenet_v2": "a photo of a {}.",
    "imagenet_sketch": "a photo of a {}.",
    "imagenet_a": "a photo of a {}.",
    "imagenet_r": "a photo of a {}.",
}
CLASSES = {
    "imagenet": 1000,
    "caltech101": 100,
    "oxford_pets": 37,
    "stanford_cars": 196,
    "oxford_flowers": 102,
    "food101": 101,
    "fgvc_aircraft": 100,
    "sun397": 397,
    "dtd": 47,
    "eurosat": 10,
    "ucf101": 101,
    "imagenet_v2": 1000,
    "imagenet_sketch": 1000,
    "imagenet_a": 200,
    "imagenet_r": 200,
}


def spec(name):
    return dataset_registry().get(name)


def test_all_eleven_and_the_four_shift_sets_are_registered_with_coop_details():
    names = set(dataset_registry().names())
    assert set(FEWSHOT) | set(SHIFT) <= names
    for name in (*FEWSHOT, *SHIFT):
        s = spec(name)
        assert s.n_classes == CLASSES[name]
        assert s.templates("coop") == (COOP_TEMPLATES[name],)
        assert s.test_only == (name in SHIFT) and (s.shift_of == "imagenet") == (name in SHIFT)
    assert (
        spec("imagenet").val_source == "train" and split_protocol(spec("imagenet")) == "dassl+val_from_train"
    )
    assert split_protocol(spec("dtd")) == "dassl"
    assert spec("caltech101").image_dir == "101_ObjectCategories" and spec("stanford_cars").image_dir == ""
    assert spec("ucf101").image_dir == "UCF-101-midframes" and spec("eurosat").image_dir == "2750"
    assert spec("fgvc_aircraft").split_file == "variants.txt"


def test_ensembles_reuse_open_clip_and_the_published_lists():
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

    assert spec("imagenet").templates("ensemble") == tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)
    select = tuple(t("{}") for t in SIMPLE_IMAGENET_TEMPLATES)
    assert select[0] == "itap of a {}." and len(select) == 7
    assert spec("imagenet").templates("coop_ensemble") == select  # CoOp's IMAGENET_TEMPLATES_SELECT
    assert spec("dtd").templates("coop_ensemble") == (
        *select,
        "{} texture.",
    )  # ZeroshotCLIP2 adds the custom one
    sizes = {name: len(spec(name).templates("ensemble")) for name in FEWSHOT}
    assert sizes == {
        "imagenet": 80,
        "caltech101": 34,
        "oxford_pets": 1,
        "stanford_cars": 8,
        "oxford_flowers": 1,
        "food101": 1,
        "fgvc_aircraft": 2,
        "sun397": 2,
        "dtd": 8,
        "eurosat": 3,
        "ucf101": 48,
    }
    for name in FEWSHOT:
        assert all(t.count("{}") == 1 for s in spec(name).prompts for t in spec(name).templates(s))


def test_class_id_lists_are_timms_and_the_shift_subsets_lie_in_imagenet():
    imagenet = official_class_ids("imagenet_synsets.txt")
    assert len(imagenet) == 1000 and list(imagenet) == sorted(imagenet)
    for subset in ("imagenet_a_synsets.txt", "imagenet_r_synsets.txt"):
        ids = official_class_ids(subset)
        assert len(ids) == 200 and set(ids) <= set(imagenet)
    timm_info = pytest.importorskip("timm").__file__.rsplit("/", 1)[0] + "/data/_info"
    for name in ("imagenet_synsets.txt", "imagenet_a_synsets.txt", "imagenet_r_synsets.txt"):
        if not Path(timm_info, name).is_file():
            pytest.skip("this timm has no data/_info")
        assert official_class_ids(name) == tuple(Path(timm_info, name).read_text().split())


def test_published_checksums_are_those_torchvision_ships():
    torchvision = pytest.importorskip("torchvision")
    source = "".join(
        p.read_text() for p in Path(torchvision.__file__).parent.joinpath("datasets").glob("*.py")
    )
    checksums = [d.checksum for n in FEWSHOT for d in spec(n).downloads if d.checksum]
    assert len(checksums) >= 8
    for checksum in checksums:
        assert checksum.split(":")[1] in source, checksum


def test_miniature_is_not_written_over_real_data(tmp_path):
    from bench.datasets.miniature import generate_miniature

    (tmp_path / "dtd").mkdir()
    (tmp_path / "dtd" / "my_real_file").write_text("x")
    with pytest.raises(BenchError, match="will not write a miniature"):
        generate_miniature(spec("dtd"), tmp_path)


@pytest.mark.parametrize("name", FEWSHOT + SHIFT)
def test_miniature_goes_through_check_sampling_and_features(name, miniature_root, tiny_backbone, tmp_path):
    s = spec(name)
    assert (miniature_root / s.folder / MINIATURE_MARKER).is_file()
    report = check_dataset(s, miniature_root)
    assert report.ok, report.problems
    assert any("MINIATURE" in line for line in report.lines) and any(
        "decodable" in line for line in report.lines
    )
    splits = read_dataset(s, miniature_root)
    assert splits.miniature and len(splits.test) > 0
    if not s.test_only:
        index = load_or_create_fewshot(splits, s, 2, 1, tmp_path / "cache")
        assert Counter(splits.train.labels[i] for i in index.train) == {
            c: 2 for c in range(len(splits.classnames))
        }
        assert all(splits.val.labels[i] < len(splits.classnames) for i in index.val) and index.val
        paths = [splits.train.paths[i] for i in index.train]
    else:
        paths = list(splits.test.paths)
    key = ImageFeatureKey.of(
        tiny_backbone,
        dataset=name,
        dataset_version=s.version,
        split_sha256=splits.source_sha256,
        split="train",
        view=CENTER,
    )
    features = FeatureCache(tmp_path / "cache").image_features(
        key, tiny_backbone, splits.image_root, paths, ExtractOptions(batch_size=16, progress=False)
    )
    assert features.shape == (1, len(paths), tiny_backbone.embed_dim) and features.isfinite().all()


def test_coop_class_name_cleanups_are_applied(miniature_root):
    assert read_dataset(spec("caltech101"), miniature_root).classnames[:2] == ("face", "leopard")
    assert read_dataset(spec("eurosat"), miniature_root).classnames[0] == "Annual Crop Land"
    assert read_dataset(spec("ucf101"), miniature_root).classnames[0] == "Apply Eye Makeup"  # "_" -> " "
    assert (
        read_dataset(spec("imagenet"), miniature_root).classnames[0] == "tench"
    )  # CLIP's names, classnames.txt


def test_imagenet_val_is_drawn_from_train_disjoint_from_the_support(miniature_root):
    splits = read_dataset(spec("imagenet"), miniature_root)
    assert splits.val is splits.train and len(splits.test) == 8  # the val folder is the test split, as CoOp
    for shots in (1, 2, 4):
        for seed in (1, 2, 3):
            train, val = sample_fewshot(splits, "imagenet", shots, seed, val_from_train=True)
            assert not set(train) & set(val)
            assert Counter(splits.train.labels[i] for i in val) == {c: min(shots, 4) for c in range(4)}
            plain_train, _ = sample_fewshot(splits, "imagenet", shots, seed)
            assert train == plain_train  # the support set is still Dassl's draw
    assert all(splits.train.paths[i].startswith("train/") for i in range(len(splits.train)))


def test_shift_sets_keep_imagenet_wnids(miniature_root):
    wnids = miniature_wnids()
    imagenet = read_dataset(spec("imagenet"), miniature_root)
    assert imagenet.class_ids == wnids
    a = read_dataset(spec("imagenet_a"), miniature_root)
    r = read_dataset(spec("imagenet_r"), miniature_root)
    assert set(a.class_ids) <= set(official_class_ids("imagenet_a_synsets.txt")) and len(a.class_ids) == 3
    assert len(r.class_ids) == 2 and set(r.class_ids) < set(a.class_ids)
    v2 = read_dataset(spec("imagenet_v2"), miniature_root)
    folders = sorted(p.name for p in (v2.image_root).iterdir())
    assert v2.class_ids == wnids and all(f.isdigit() for f in folders)  # V2 names folders by ImageNet label


def _copy(miniature_root, tmp_path, name):
    s = spec(name)
    shutil.copytree(miniature_root / s.folder, tmp_path / s.folder)
    return s


def test_a_wrong_split_file_is_refused_naming_it(miniature_root, tmp_path):
    s = _copy(miniature_root, tmp_path, "dtd")
    path = tmp_path / s.folder / s.split_file
    split = json.loads(path.read_text())
    split["test"] = [e for e in split["test"] if e[1] != 3]
    path.write_text(json.dumps(split))
    with pytest.raises(
        BenchError,
        match=r"split_zhou_DescribableTextures\.json: 16/8/6 train/val/test images, expected 16/8/8",
    ):
        read_dataset(s, tmp_path)
    report = check_dataset(s, tmp_path)
    assert not report.ok and "16/8/6" in report.problems[0] and "Fix:" in report.problems[0]


def test_the_real_spec_expects_the_official_counts(miniature_root, tmp_path):
    s = _copy(miniature_root, tmp_path, "oxford_pets")
    (tmp_path / s.folder / MINIATURE_MARKER).unlink()  # no longer a miniature: the spec's numbers apply
    with pytest.raises(BenchError, match=r"4 classes, expected 37 for 'oxford_pets'.*Fix: use the official"):
        read_dataset(s, tmp_path)


def test_missing_and_corrupt_images_are_each_reported(miniature_root, tmp_path):
    s = _copy(miniature_root, tmp_path, "food101")
    splits = read_dataset(s, tmp_path)
    (splits.image_root / splits.test.paths[0]).unlink()
    (splits.image_root / splits.train.paths[1]).write_bytes(b"\xff\xd8 not really a jpeg")
    report = check_dataset(s, tmp_path)
    assert len(report.problems) == 2
    assert re.search(
        r"1 of 32 listed images do not exist, first: .*" + re.escape(splits.test.paths[0]), report.problems[0]
    )
    assert splits.train.paths[1] in report.problems[1] and "cannot be decoded" in report.problems[1]
    with pytest.raises(BenchError, match=r"1 of 8 test images listed in the split file do not exist"):
        read_dataset(s, tmp_path)


def test_imagenet_layout_errors_name_the_file_and_the_fix(miniature_root, tmp_path):
    s = _copy(miniature_root, tmp_path, "imagenet")
    (tmp_path / s.folder / "classnames.txt").unlink()
    with pytest.raises(
        BenchError, match=r"classnames\.txt: class list of dataset 'imagenet' not found.*bench data prepare"
    ):
        read_dataset(s, tmp_path)
    a = _copy(miniature_root, tmp_path, "imagenet_a")
    (tmp_path / a.folder / "imagenet-a" / "n99999999").mkdir()
    with pytest.raises(BenchError, match=r"imagenet-a: unknown class folders \['n99999999'\]"):
        read_dataset(a, tmp_path)


def test_check_of_a_dataset_that_is_not_there_is_one_error(tmp_path):
    with pytest.raises(
        BenchError, match=r"split_zhou_UCF101\.json: split file of dataset 'ucf101' not found"
    ):
        check_dataset(spec("ucf101"), tmp_path)
