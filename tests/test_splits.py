import json
import random
import shutil
from collections import defaultdict

import pytest

from bench.datasets.catalog import SYNTHETIC
from bench.datasets.splits import load_or_create_fewshot, read_split_file, sample_fewshot
from bench.errors import BenchError


def dassl_reference(items, num_shots):
    """Dassl.pytorch's generate_fewshot_dataset, restated on (path, label) tuples; uses the global random."""
    tracker = defaultdict(list)
    for item in items:
        tracker[item[1]].append(item)
    dataset = []
    for _, group in tracker.items():
        dataset.extend(random.sample(group, num_shots) if len(group) >= num_shots else group)
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


def _copy_dataset(data_root, tmp_path):
    shutil.copytree(data_root / "synthetic", tmp_path / "synthetic")
    return tmp_path


def test_missing_split_file_error_names_the_file(tmp_path):
    with pytest.raises(BenchError, match=r"split_zhou_Synthetic\.json.*not found.*Fix:"):
        read_split_file(SYNTHETIC, tmp_path)


def test_split_listing_missing_images_names_the_first(data_root, tmp_path):
    root = _copy_dataset(data_root, tmp_path)
    (root / "synthetic/images/red_dots/test_003.png").unlink()
    with pytest.raises(BenchError, match=r"1 of 96 test images .* do not exist, first: .*red_dots/test_003\.png"):
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
