import torch

from bench.backbone import BackboneRef, load_backbone
from bench.datasets.catalog import SYNTHETIC
from bench.datasets.splits import read_split_file
from bench.features import ExtractOptions, FeatureCache, ImageFeatureKey
from bench.images import CENTER, ViewSpec

OPTIONS = ExtractOptions(batch_size=32, num_workers=0, progress=False)


def _key(backbone, splits, split="test", view=CENTER):
    return ImageFeatureKey.of(
        backbone,
        dataset="synthetic",
        dataset_version="1",
        split_sha256=splits.source_sha256,
        split=split,
        view=view,
    )


def test_miss_then_hit_in_memory_and_on_disk(tmp_path, data_root, tiny_backbone):
    splits = read_split_file(SYNTHETIC, data_root)
    paths = splits.test.paths
    cache = FeatureCache(tmp_path)
    first = cache.image_features(
        _key(tiny_backbone, splits), tiny_backbone, splits.image_root, paths, OPTIONS
    )
    assert first.shape == (1, len(paths), tiny_backbone.embed_dim)
    assert cache.images_encoded == len(paths)
    again = cache.image_features(
        _key(tiny_backbone, splits), tiny_backbone, splits.image_root, paths, OPTIONS
    )
    assert cache.images_encoded == len(paths)  # hit: nothing encoded
    fresh = FeatureCache(tmp_path)  # a new process: reads the shard from disk
    from_disk = fresh.image_features(
        _key(tiny_backbone, splits), tiny_backbone, splits.image_root, paths, OPTIONS
    )
    assert fresh.images_encoded == 0
    torch.testing.assert_close(again, first)
    torch.testing.assert_close(from_disk, first)
    # stored as float16: equal to a direct encode up to fp16 rounding
    direct = tiny_backbone.encode_images(torch.stack([_center(splits, p, tiny_backbone) for p in paths[:4]]))
    torch.testing.assert_close(first[0, :4], direct, rtol=2e-3, atol=2e-3)


def _center(splits, relpath, backbone):
    from bench.images import center_view, load_rgb

    return center_view(load_rgb(splits.image_root / relpath), backbone.preprocessing)


def test_only_missing_images_are_encoded_and_order_is_kept(tmp_path, data_root, tiny_backbone):
    splits = read_split_file(SYNTHETIC, data_root)
    cache = FeatureCache(tmp_path)
    key = _key(tiny_backbone, splits, "train")
    part = cache.image_features(key, tiny_backbone, splits.image_root, splits.train.paths[:10], OPTIONS)
    assert cache.images_encoded == 10
    whole = cache.image_features(
        key, tiny_backbone, splits.image_root, list(reversed(splits.train.paths[:30])), OPTIONS
    )
    assert cache.images_encoded == 30
    torch.testing.assert_close(whole[:, -10:].flip(1), part)
    assert len(list(cache.image_folder(key, tiny_backbone.ref.slug).glob("shard-*.pt"))) == 2
    assert not list(tmp_path.rglob("*.tmp"))


def test_key_changes_when_weights_change(tmp_path, tiny_backbone, data_root):
    splits = read_split_file(SYNTHETIC, data_root)
    state = {k: v.clone() for k, v in tiny_backbone.model.state_dict().items()}
    same_file, changed_file = tmp_path / "same.pt", tmp_path / "changed.pt"
    torch.save(state, same_file)
    state["visual.proj"] += 0.01
    torch.save(state, changed_file)
    same = load_backbone(BackboneRef.parse(f"bench-tiny/{same_file}"), torch.device("cpu"))
    changed = load_backbone(BackboneRef.parse(f"bench-tiny/{changed_file}"), torch.device("cpu"))
    assert same.weights_sha256 == tiny_backbone.weights_sha256  # hash of the weights, not of the name
    assert changed.weights_sha256 != same.weights_sha256
    assert _key(changed, splits).digest() != _key(same, splits).digest()
    assert (
        BackboneRef.parse(f"bench-tiny/{changed_file}").identity()
        != BackboneRef.parse(f"bench-tiny/{same_file}").identity()
    )


def test_key_covers_view_split_and_preprocessing(tiny_backbone, data_root):
    import dataclasses

    splits = read_split_file(SYNTHETIC, data_root)
    base = _key(tiny_backbone, splits)
    variants = [
        dataclasses.replace(base, split="val"),
        dataclasses.replace(base, view=ViewSpec.augment(4)),
        dataclasses.replace(base, preprocessing=dataclasses.replace(base.preprocessing, resize="squash")),
        dataclasses.replace(base, precision="bf16"),
    ]
    assert len({base.digest(), *(v.digest() for v in variants)}) == 5


def test_augmented_views_are_seeded_per_image(tmp_path, data_root, tiny_backbone):
    splits = read_split_file(SYNTHETIC, data_root)
    key = _key(tiny_backbone, splits, "train", ViewSpec.augment(3))
    a = FeatureCache(tmp_path / "a").image_features(
        key, tiny_backbone, splits.image_root, splits.train.paths[:6], OPTIONS
    )
    b = FeatureCache(tmp_path / "b").image_features(
        key, tiny_backbone, splits.image_root, list(reversed(splits.train.paths[:6])), OPTIONS
    )
    assert a.shape[0] == 3
    torch.testing.assert_close(a, b.flip(1))  # same views whatever the order or batch
    assert not torch.allclose(a[0], a[1])  # the views differ from each other


def test_text_features_are_cached(tmp_path, tiny_backbone):
    cache = FeatureCache(tmp_path)
    first = cache.text_features(tiny_backbone, ["cat", "dog"], ["a photo of a {}.", "a {}."])
    assert first.shape == (2, 2, tiny_backbone.embed_dim)
    stored = list((tmp_path / "text").rglob("*.pt"))
    assert len(stored) == 1
    again = FeatureCache(tmp_path).text_features(tiny_backbone, ["cat", "dog"], ["a photo of a {}.", "a {}."])
    torch.testing.assert_close(again, first)
    direct = tiny_backbone.encode_text(tiny_backbone.tokenize(["a {}.".format("dog")]))
    torch.testing.assert_close(first[1, 1], direct[0])


def test_damaged_cache_files_are_recomputed_not_fatal(tmp_path, data_root, tiny_backbone, caplog):
    """A truncated shard or text file (a full disk, a killed copy) is removed and encoded again."""
    import pytest

    from bench.errors import BenchError

    splits = read_split_file(SYNTHETIC, data_root)
    paths = splits.test.paths[:8]
    key = _key(tiny_backbone, splits)
    first = FeatureCache(tmp_path).image_features(key, tiny_backbone, splits.image_root, paths, OPTIONS)
    text = FeatureCache(tmp_path).text_features(tiny_backbone, ["cat", "dog"], ["a {}."])
    (shard,) = FeatureCache(tmp_path).image_folder(key, tiny_backbone.ref.slug).glob("shard-*.pt")
    shard.write_bytes(shard.read_bytes()[:100])
    (text_file,) = (tmp_path / "text").rglob("*.pt")
    text_file.write_bytes(b"junk")
    cache = FeatureCache(tmp_path)
    torch.testing.assert_close(
        cache.image_features(key, tiny_backbone, splits.image_root, paths, OPTIONS), first
    )
    torch.testing.assert_close(cache.text_features(tiny_backbone, ["cat", "dog"], ["a {}."]), text)
    assert cache.images_encoded == len(paths)  # re-encoded once, and stored again
    assert "removing damaged cache file" in caplog.text
    assert (
        FeatureCache(tmp_path).image_features(key, tiny_backbone, splits.image_root, paths, OPTIONS).shape[1]
        == 8
    )
    # an unreadable key file cannot vouch for its shards: a one-line error naming it
    key_file = shard.parent / "key.json"
    key_file.write_text("{not json")
    with pytest.raises(BenchError, match=r"key\.json: unreadable feature cache key file .*Fix: delete"):
        FeatureCache(tmp_path).image_features(key, tiny_backbone, splits.image_root, paths, OPTIONS)
