import dataclasses
import json
import random
import re
import shutil
from collections import defaultdict

import pytest

from bench.datasets.catalog import SYNTHETIC
from bench.datasets.splits import load_or_create_fewshot, read_split_file, sample_fewshot
from bench.errors import BenchError


def dassl_reference(items, num_shots, repeat=False):
    """Dassl.pytorch's generate_fewshot_dataset as it is now (dassl/data/datasets/base_dataset.py, default
    repeat=False since commit e3a15da, 2021-10-09; CoOp's datasets never pass repeat), restated on
    (path, label) tuples; uses the global random."""
    tracker = defaultdict(list)
    for item in items:
        tracker[item[1]].append(item)
    dataset = []
    for _, group in tracker.items():
        if len(group) >= num_shots:
            sampled = random.sample(group, num_shots)
        elif repeat:
            sampled = random.choices(group, k=num_shots)
        else:
            sampled = group
        dataset.extend(sampled)
    return dataset


def test_reads_coop_split_file_with_classname_cleanup(data_root):
    splits = read_split_file(SYNTHETIC, data_root)
    assert splits.classnames[0] == "red stripes"  # "red_stripes" -> CoOp's replace("_", " ")
    assert len(splits.classnames) == 8
    assert len(splits.train) == 8 * 16 and len(splits.val) == 8 * 6 and len(splits.test) == 8 * 12
    assert (splits.image_root / splits.test.paths[0]).is_file()
    assert len(splits.source_sha256) == 64


@pytest.mark.parametrize("shots", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sampling_matches_dassl_exactly(data_root, shots, seed):
    splits = read_split_file(SYNTHETIC, data_root)
    train_idx, val_idx = sample_fewshot(splits, "synthetic", shots, seed)
    random.seed(seed)  # Dassl: set_random_seed(cfg.SEED) before the dataset is built
    items = list(zip(splits.train.paths, splits.train.labels, strict=True))
    expected_train = dassl_reference(items, shots)
    expected_val = dassl_reference(list(zip(splits.val.paths, splits.val.labels, strict=True)), min(shots, 4))
    assert [items[i] for i in train_idx] == expected_train
    assert [(splits.val.paths[i], splits.val.labels[i]) for i in val_idx] == expected_val
    counts = defaultdict(int)
    for i in train_idx:
        counts[splits.train.labels[i]] += 1
    assert set(counts.values()) == {shots}


def _small_class_splits():
    """Class 1 has 3 train and 1 val images (fewer than K = 8 and min(K, 4) = 4)."""
    from bench.datasets.spec import DatasetSplits, LabeledImages

    def images(counts, prefix):
        labels = [label for label, n in enumerate(counts) for _ in range(n)]
        return LabeledImages(tuple(f"{prefix}{i}.png" for i in range(len(labels))), tuple(labels))

    train, val = images([20, 3, 20], "t"), images([6, 1, 6], "v")
    return DatasetSplits(
        image_root=None,
        classnames=("a", "b", "c"),
        train=train,
        val=val,
        test=val,
        source=None,
        source_sha256="0" * 64,
    )


@pytest.mark.parametrize("seed", [1, 2])
def test_a_class_smaller_than_k_is_taken_whole_as_dassl_does(seed):
    """Dassl's default (repeat=False): the small class is taken once, whole, and draws nothing, so the
    generator is where it would be without that class for every later class."""
    splits = _small_class_splits()
    train_idx, val_idx = sample_fewshot(splits, "toy", 8, seed)
    random.seed(seed)
    items = list(zip(splits.train.paths, splits.train.labels, strict=True))
    assert [items[i] for i in train_idx] == dassl_reference(items, 8)
    val_items = list(zip(splits.val.paths, splits.val.labels, strict=True))
    assert [val_items[i] for i in val_idx] == dassl_reference(val_items, 4)
    assert [i for i in train_idx if splits.train.labels[i] == 1] == [20, 21, 22]  # all three, in file order
    assert len(train_idx) == 8 + 3 + 8 and len(set(train_idx)) == len(train_idx)


@pytest.mark.parametrize("seed", [1, 2])
def test_dassl_repeat_draws_a_small_class_with_replacement(seed):
    """Protocol dassl_repeat is Dassl's repeat=True: random.choices for the small class, which also moves
    the generator for every later class."""
    splits = _small_class_splits()
    train_idx, val_idx = sample_fewshot(splits, "toy", 8, seed, repeat=True)
    random.seed(seed)
    items = list(zip(splits.train.paths, splits.train.labels, strict=True))
    assert [items[i] for i in train_idx] == dassl_reference(items, 8, repeat=True)
    val_items = list(zip(splits.val.paths, splits.val.labels, strict=True))
    assert [val_items[i] for i in val_idx] == dassl_reference(val_items, 4, repeat=True)
    assert len(train_idx) == 3 * 8 and len({i for i in train_idx if splits.train.labels[i] == 1}) <= 3


def test_the_sampling_names_the_protocol_and_the_index_folder(data_root, tmp_path):
    from bench.datasets.splits import split_protocol

    splits = read_split_file(SYNTHETIC, data_root)
    plain = load_or_create_fewshot(splits, SYNTHETIC, 2, 1, tmp_path)
    repeat = load_or_create_fewshot(splits, SYNTHETIC, 2, 1, tmp_path, "dassl_repeat")
    assert (plain.protocol, repeat.protocol) == ("dassl", "dassl_repeat")
    assert plain.path.parts[-3] == "dassl" and repeat.path.parts[-3] == "dassl_repeat"
    assert plain.train == repeat.train  # synthetic has 16 train images per class: the two agree
    assert split_protocol(SYNTHETIC, "dassl_repeat") == "dassl_repeat"
    with pytest.raises(BenchError, match="unknown few-shot sampling"):
        split_protocol(SYNTHETIC, "replace")


def test_dassl_full_val_keeps_the_support_set_and_takes_the_whole_val_split(data_root, tmp_path):
    """Tip-Adapter's selection split outside ImageNet: the same support set as dassl, every val image
    as val; a dataset without a val split refuses it (it would mean selecting on test)."""
    from bench.datasets.splits import SAMPLINGS, split_protocol

    splits = read_split_file(SYNTHETIC, data_root)
    plain = load_or_create_fewshot(splits, SYNTHETIC, 2, 1, tmp_path)
    full = load_or_create_fewshot(splits, SYNTHETIC, 2, 1, tmp_path, "dassl_full_val")
    assert full.train == plain.train and full.protocol == "dassl_full_val"
    assert full.val == tuple(range(len(splits.val))) and len(plain.val) < len(full.val)
    assert full.path.parts[-3] == "dassl_full_val"
    no_val = dataclasses.replace(SYNTHETIC, val_source="train")
    with pytest.raises(BenchError, match="has no val split") as info:
        split_protocol(no_val, "dassl_full_val")
    assert info.value.where == "--sampling"
    for parser_choices in (
        _choices(["run"], "--sampling"),
        _choices(["data", "export-splits"], "--sampling"),
    ):
        assert tuple(parser_choices) == SAMPLINGS


def _choices(command: list[str], flag: str):
    from bench.cli import build_parser

    parser = build_parser()
    for name in command:
        parser = parser._subparsers._group_actions[0].choices[name]
    return next(a for a in parser._actions if flag in a.option_strings).choices


def test_an_index_drawn_with_replacement_under_dassl_is_refused(data_root, tmp_path):
    """An index file an earlier bench drew as Dassl's old repeat=True, still under protocol "dassl"."""
    splits = read_split_file(SYNTHETIC, data_root)
    first = load_or_create_fewshot(splits, SYNTHETIC, 2, 1, tmp_path)
    record = json.loads(first.path.read_text())
    record["train"][1] = record["train"][0]
    first.path.write_text(json.dumps(record))
    with pytest.raises(BenchError, match="repeats images"):
        load_or_create_fewshot(splits, SYNTHETIC, 2, 1, tmp_path)


def test_seeds_differ_and_are_deterministic(data_root):
    splits = read_split_file(SYNTHETIC, data_root)
    assert sample_fewshot(splits, "synthetic", 4, 1) == sample_fewshot(splits, "synthetic", 4, 1)
    assert sample_fewshot(splits, "synthetic", 4, 1) != sample_fewshot(splits, "synthetic", 4, 2)


def test_index_file_is_portable_json_and_reused(data_root, tmp_path):
    splits = read_split_file(SYNTHETIC, data_root)
    first = load_or_create_fewshot(splits, SYNTHETIC, 2, 1, tmp_path)
    record = json.loads(first.path.read_text())
    assert record["train"][0][0] == splits.train.paths[first.train[0]]  # relative path, not absolute
    assert not record["train"][0][0].startswith("/")
    again = load_or_create_fewshot(splits, SYNTHETIC, 2, 1, tmp_path)
    assert again.train == first.train and again.sha256 == first.sha256


def test_index_from_another_split_file_is_refused(data_root, tmp_path):
    splits = read_split_file(SYNTHETIC, data_root)
    first = load_or_create_fewshot(splits, SYNTHETIC, 2, 1, tmp_path)
    record = json.loads(first.path.read_text())
    record["split_file_sha256"] = "0" * 64
    first.path.write_text(json.dumps(record))
    with pytest.raises(BenchError, match="different split file"):
        load_or_create_fewshot(splits, SYNTHETIC, 2, 1, tmp_path)


def test_index_files_of_two_copies_of_a_dataset_live_side_by_side(data_root, tmp_path):
    """A miniature and the real data (here: two split files) share one cache without refusing each other."""
    root = _copy_dataset(data_root, tmp_path / "copy")
    split_file = root / "synthetic" / SYNTHETIC.split_file
    content = json.loads(split_file.read_text())
    content["train"] = content["train"][1:]  # another split file: one train image fewer
    split_file.write_text(json.dumps(content))
    original = read_split_file(SYNTHETIC, data_root)
    other = read_split_file(SYNTHETIC, root, strict=False)
    first = load_or_create_fewshot(original, SYNTHETIC, 2, 1, tmp_path / "cache")
    second = load_or_create_fewshot(other, SYNTHETIC, 2, 1, tmp_path / "cache")
    assert first.path != second.path and first.path.is_file() and second.path.is_file()
    assert load_or_create_fewshot(original, SYNTHETIC, 2, 1, tmp_path / "cache").sha256 == first.sha256


def test_exported_index_files_import_into_another_cache(data_root, tmp_path):
    from bench.datasets.splits import import_index

    splits = read_split_file(SYNTHETIC, data_root)
    exported = load_or_create_fewshot(splits, SYNTHETIC, 4, 2, tmp_path / "theirs")
    placed = import_index(exported.path, splits, SYNTHETIC, tmp_path / "ours")
    assert placed.read_bytes() == exported.path.read_bytes()
    assert load_or_create_fewshot(splits, SYNTHETIC, 4, 2, tmp_path / "ours").train == exported.train
    record = json.loads(exported.path.read_text())
    record["train"][0] = ["red_stripes/not_there.png", 0]
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(record))
    with pytest.raises(BenchError, match="not in the split file"):
        import_index(tampered, splits, SYNTHETIC, tmp_path / "fresh")
    record = json.loads(exported.path.read_text())
    record["train"] = record["train"][::-1]  # other subsets for a cell the cache already has
    tampered.write_text(json.dumps(record))
    with pytest.raises(BenchError, match="already in the cache"):
        import_index(tampered, splits, SYNTHETIC, tmp_path / "ours")


def test_import_compares_json_content_not_bytes(data_root, tmp_path):
    from bench.datasets.splits import import_index

    splits = read_split_file(SYNTHETIC, data_root)
    exported = load_or_create_fewshot(splits, SYNTHETIC, 4, 2, tmp_path / "theirs")
    placed = import_index(exported.path, splits, SYNTHETIC, tmp_path / "ours")
    reformatted = tmp_path / "reformatted.json"
    record = json.loads(exported.path.read_text())
    reformatted.write_text(json.dumps(dict(reversed(record.items())), indent=4))  # same content, other bytes
    assert import_index(reformatted, splits, SYNTHETIC, tmp_path / "ours") == placed
    repeat = load_or_create_fewshot(splits, SYNTHETIC, 4, 2, tmp_path / "theirs", "dassl_repeat")
    assert import_index(repeat.path, splits, SYNTHETIC, tmp_path / "ours").parts[-3] == "dassl_repeat"


def _copy_dataset(data_root, tmp_path):
    shutil.copytree(data_root / "synthetic", tmp_path / "synthetic")
    return tmp_path


def test_missing_split_file_error_names_the_file(tmp_path):
    with pytest.raises(BenchError, match=r"split_zhou_Synthetic\.json.*not found.*Fix:"):
        read_split_file(SYNTHETIC, tmp_path)


def test_split_listing_missing_images_names_the_first(data_root, tmp_path):
    root = _copy_dataset(data_root, tmp_path)
    (root / "synthetic/images/red_dots/test_003.png").unlink()
    with pytest.raises(
        BenchError, match=r"1 of 96 test images .* do not exist, first: .*red_dots/test_003\.png"
    ):
        read_split_file(SYNTHETIC, root)


def test_wrong_split_sha256_is_refused(data_root):
    import dataclasses

    pinned = dataclasses.replace(SYNTHETIC, split_sha256="f" * 64)
    with pytest.raises(BenchError, match="sha256"):
        read_split_file(pinned, data_root)


def test_malformed_split_file(data_root, tmp_path):
    root = _copy_dataset(data_root, tmp_path)
    (root / "synthetic" / SYNTHETIC.split_file).write_text('{"train": []}')
    with pytest.raises(BenchError, match="not a CoOp split file"):
        read_split_file(SYNTHETIC, root)


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda c: {**c, "test": []}, "the test split is empty"),
        (
            lambda c: {**c, "train": [e for e in c["train"] if e[1] != 3]},
            "1 class(es) have no training image, first: 'yellow stripes'",
        ),
        (
            lambda c: {**c, "val": [[c["val"][0][0], c["val"][0][1], "renamed"], *c["val"][1:]]},
            "is named both",
        ),
        (
            lambda c: {**c, "test": [[p, y, "other" if y == 2 else n] for p, y, n in c["test"]]},
            "label 2 is named",
        ),
    ],
)
def test_split_files_that_cannot_make_a_few_shot_task_are_refused(data_root, tmp_path, edit, message):
    root = _copy_dataset(data_root, tmp_path)
    path = root / "synthetic" / SYNTHETIC.split_file
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    with pytest.raises(BenchError, match=re.escape(message)):
        read_split_file(SYNTHETIC, root)


def test_a_full_val_record_says_so(run_options):
    """A cell run with --sampling dassl_full_val records its protocol, no per-class val count, and the whole
    val split's size."""
    from bench.results import load_results
    from bench.runner import Session, run_cells
    from bench.spec import expand_grid

    from .conftest import TINY

    options = dataclasses.replace(run_options, sampling="dassl_full_val")
    summary = run_cells(
        expand_grid(["zero_shot"], ["synthetic"], [2], [1], [TINY]), options, Session(options)
    )
    assert summary.ran and not summary.failed
    (record,) = [r for r in load_results(options.results_root) if r.spec["method"] == "zero_shot"]
    splits = read_split_file(SYNTHETIC, options.data_root)
    assert record.data.split_protocol == "dassl_full_val" and record.data.val_shots is None
    assert record.data.n_val == len(splits.val)
