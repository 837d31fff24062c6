"""Base-to-new, distribution-shift transfer, data identity in run ids, and the `bench data` / `bench run` CLI."""

import dataclasses
import json
import shutil

import pytest

from bench.cli import main
from bench.datasets import dataset_registry
from bench.datasets.subsets import n_base_classes
from bench.errors import BenchError
from bench.results import load_results
from bench.runner import Session, plan_cells, run_cells
from bench.spec import expand_grid

from .conftest import TINY


def _options(run_options, root):
    return dataclasses.replace(run_options, data_root=root)


def _cli(tmp_path, root, *extra):
    return [
        "run",
        "--data-root",
        str(root),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--results",
        str(tmp_path / "results"),
        "--device",
        "cpu",
        "--no-progress",
        *extra,
    ]


def test_base_classes_are_the_first_half_rounded_up():
    assert [n_base_classes(n) for n in (2, 4, 37, 47, 101, 1000)] == [1, 2, 19, 24, 51, 500]


def test_base2new_trains_on_base_classes_and_scores_both_halves(run_options, miniature_root):
    options = _options(run_options, miniature_root)
    specs = expand_grid(["zero_shot", "linear_probe"], ["dtd"], [2], [1], [TINY], protocol="base2new")
    assert not run_cells(specs, options).failed
    records = {r.spec["method"]: r for r in load_results(options.results_root)}
    zero_shot, probe = records["zero_shot"], records["linear_probe"]
    assert zero_shot.spec["protocol"] == "base2new" and zero_shot.data["protocol"] == "base2new"
    assert zero_shot.data["n_classes"] == 2 and zero_shot.data["n_new_classes"] == 2
    assert zero_shot.data["n_train"] == 2 * 2 and zero_shot.data["n_test_base"] == 4
    b, n = zero_shot.metrics["base_top1"], zero_shot.metrics["new_top1"]
    assert b == zero_shot.metrics["top1"] and n is not None
    assert zero_shot.metrics["harmonic_mean"] == pytest.approx(2 * b * n / (b + n) if b + n else 0.0)
    # a linear probe is tied to its training labels: no new-class score, no harmonic mean
    assert probe.metrics["new_top1"] is None and probe.metrics["harmonic_mean"] is None
    assert probe.metrics["base_top1"] is not None


def test_imagenet_cells_are_scored_on_the_shift_sets(run_options, miniature_root):
    options = _options(run_options, miniature_root)
    shift = {"imagenet": ("imagenet_v2", "imagenet_a", "imagenet_r")}
    specs = expand_grid(["zero_shot"], ["imagenet"], [1], [1], [TINY], shift=shift)
    assert not run_cells(specs, options).failed
    (record,) = load_results(options.results_root)
    transfer = record.metrics["transfer"]
    assert set(transfer) == {"imagenet_v2", "imagenet_a", "imagenet_r"}
    assert transfer["imagenet_a"]["n_test"] == 6 and transfer["imagenet_r"]["n_test"] == 4
    assert all(0 <= t["top1"] <= 1 for t in transfer.values())
    assert record.data["split_protocol"] == "dassl+val_from_train" and record.data["miniature"] is True
    assert record.data["transfer"]["imagenet_a"]["n_classes"] == 3
    assert record.spec["shift"] == ["imagenet_v2", "imagenet_a", "imagenet_r"]


def test_shift_logits_are_restricted_to_the_sets_classes(run_options, miniature_root):
    """ImageNet-R's images are scored over R's columns only: a huge logit on a class R lacks changes nothing."""
    import torch

    from bench.cell import _score_shift

    session = Session(_options(run_options, miniature_root))
    imagenet, r = session.splits("imagenet"), session.splits("imagenet_r")
    column = {wnid: i for i, wnid in enumerate(imagenet.class_ids)}
    outside = next(column[w] for w in imagenet.class_ids if w not in r.class_ids)

    def one_hot_features(key, backbone, root, paths, options):  # stands in for the encoder: the true column
        features = torch.zeros(1, len(paths), len(column))
        for row, path in enumerate(paths):
            features[0, row, column[path.split("/")[0]]] = 1.0
        return features

    def classifier(x):
        return x + 100.0 * torch.nn.functional.one_hot(torch.tensor(outside), len(column))

    session.cache.image_features = one_hot_features
    spec = expand_grid(["zero_shot"], ["imagenet"], [1], [1], [TINY], shift={"imagenet": ("imagenet_r",)})[0]
    result = _score_shift(classifier, spec, imagenet, session.backbone(TINY), session)
    assert result == {"imagenet_r": {"top1": 1.0, "n_test": 4}}


def test_run_id_depends_on_the_data_read(run_options, miniature_root, tmp_path):
    shutil.copytree(miniature_root / "dtd", tmp_path / "data" / "dtd")
    specs = expand_grid(["zero_shot"], ["dtd"], [1], [1], [TINY])
    first = plan_cells(specs, Session(_options(run_options, miniature_root)))[0]
    split = tmp_path / "data/dtd/split_zhou_DescribableTextures.json"
    content = json.loads(split.read_text())
    content["test"][0], content["test"][1] = content["test"][1], content["test"][0]
    split.write_text(json.dumps(content))
    second = plan_cells(specs, Session(_options(run_options, tmp_path / "data")))[0]
    assert first.run_id != second.run_id  # another split file never resumes from this record
    base2new = plan_cells(
        expand_grid(["zero_shot"], ["dtd"], [1], [1], [TINY], protocol="base2new"),
        Session(_options(run_options, miniature_root)),
    )[0]
    assert base2new.run_id != first.run_id


def test_test_only_sets_and_bad_shift_requests_are_refused(run_options, miniature_root):
    session = Session(_options(run_options, miniature_root))
    with pytest.raises(
        BenchError, match="'imagenet_a' is a test-only distribution-shift set.*--shift imagenet_a"
    ):
        plan_cells(expand_grid(["zero_shot"], ["imagenet_a"], [1], [1], [TINY]), session)
    with pytest.raises(BenchError, match="'imagenet_r' cannot be scored for zero_shot/dtd/k1/s1"):
        plan_cells(
            expand_grid(["zero_shot"], ["dtd"], [1], [1], [TINY], shift={"dtd": ("imagenet_r",)}), session
        )


def test_cli_run_all_datasets_on_the_miniatures_with_every_shift_set(tmp_path, miniature_root, capsys):
    args = _cli(
        tmp_path,
        miniature_root,
        "--datasets",
        "all",
        "--methods",
        "zero_shot",
        "--shots",
        "1",
        "--seeds",
        "1",
        "--shift",
        "all",
        "--dry-run",
    )
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "11 cells, 0 done, 11 to run" in out  # the eleven: no generated set, no test-only set
    assert main(args[:-1]) == 0
    assert "11 cells run, 0 already done (resumed), 0 failed" in capsys.readouterr().out
    records = {r.spec["dataset"]: r for r in load_results(tmp_path / "results")}
    assert set(records["imagenet"].metrics["transfer"]) == {
        "imagenet_v2",
        "imagenet_sketch",
        "imagenet_a",
        "imagenet_r",
    }
    assert records["dtd"].metrics.transfer is None and records["dtd"].data.miniature is True


def test_cli_errors_are_one_line_naming_the_file_and_fix(tmp_path, miniature_root, capsys):
    assert main(_cli(tmp_path, miniature_root, "--datasets", "imagenet_v2")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--datasets imagenet --shift imagenet_v2" in err
    assert (
        main(_cli(tmp_path, tmp_path / "empty", "--datasets", "oxford_pets", "--methods", "zero_shot")) == 2
    )
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and "split_zhou_OxfordPets.json: split file of dataset 'oxford_pets' not found" in err
    )
    assert "bench data prepare oxford_pets" in err
    assert main(_cli(tmp_path, tmp_path / "empty", "--datasets", "imagenet", "--shift", "imagenet_a")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "imagenet-adversarial: data of 'imagenet_a' not found" in err
    shutil.copytree(miniature_root / "eurosat", tmp_path / "data" / "eurosat")
    next((tmp_path / "data/eurosat/2750/Forest").iterdir()).write_bytes(b"truncated")
    assert (
        main(
            _cli(
                tmp_path,
                tmp_path / "data",
                "--datasets",
                "eurosat",
                "--methods",
                "zero_shot",
                "--shots",
                "16",
                "--seeds",
                "1",
            )
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "eurosat/2750/Forest/" in err and "cannot decode image" in err


def test_cli_data_list_check_export_and_miniature(tmp_path, miniature_root, capsys):
    assert main(["data", "list", "--data-root", str(miniature_root)]) == 0
    out = capsys.readouterr().out
    for name in dataset_registry().names():
        assert f"\n{name} " in out
    assert "shift of imagenet" in out and "miniature" in out and "1,281,167/0/50,000" in out
    assert main(["data", "check", "dtd,imagenet_a", "--data-root", str(miniature_root), "--no-progress"]) == 0
    assert "all checks passed" in capsys.readouterr().out
    out_dir = tmp_path / "shared"
    assert (
        main(
            [
                "data",
                "export-splits",
                "imagenet,dtd",
                "--shots",
                "1,2",
                "--seeds",
                "1,2",
                "--out",
                str(out_dir),
                "--data-root",
                str(miniature_root),
                "--cache-dir",
                str(tmp_path / "cache"),
            ]
        )
        == 0
    )
    exported = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*.json"))
    assert len(exported) == 8 and "imagenet/dassl+val_from_train/shot_2-seed_1.json" in exported
    index = json.loads((out_dir / "dtd/dassl/shot_1-seed_2.json").read_text())
    assert not index["train"][0][0].startswith("/") and index["protocol"] == "dassl"
    # someone else's cache takes them in, checked against its own split files
    assert (
        main(
            [
                "data",
                "import-splits",
                str(out_dir),
                "--data-root",
                str(miniature_root),
                "--cache-dir",
                str(tmp_path / "their-cache"),
            ]
        )
        == 0
    )
    assert "dtd: 4 index files checked" in capsys.readouterr().out
    imported = sorted(p.name for p in (tmp_path / "their-cache/splits").rglob("*.json"))
    assert imported == sorted(p.rsplit("/", 1)[1] for p in exported)
    # 'all' exports every dataset with few-shot subsets and passes over the test-only shift sets
    assert (
        main(
            [
                "data",
                "export-splits",
                "all",
                "--shots",
                "1",
                "--seeds",
                "1",
                "--out",
                str(tmp_path / "all"),
                "--data-root",
                str(miniature_root),
                "--cache-dir",
                str(tmp_path / "cache"),
            ]
        )
        == 0
    )
    assert {p.name for p in (tmp_path / "all").iterdir()} >= {"imagenet", "dtd", "eurosat"}
    assert not {"imagenet_a", "imagenet_r", "imagenet_v2", "imagenet_sketch"} & {
        p.name for p in (tmp_path / "all").iterdir()
    }
    # 'all' with the whole-val sampling passes over the datasets without a val split (ImageNet), said so;
    # naming one is refused before anything is written
    capsys.readouterr()
    full = [
        "--shots",
        "1",
        "--seeds",
        "1",
        "--sampling",
        "dassl_full_val",
        "--data-root",
        str(miniature_root),
    ]
    full += ["--cache-dir", str(tmp_path / "cache")]
    assert main(["data", "export-splits", "all", "--out", str(tmp_path / "full"), *full]) == 0
    assert "skipped (no val split for --sampling dassl_full_val): imagenet" in capsys.readouterr().out
    assert (tmp_path / "full/dtd/dassl_full_val/shot_1-seed_1.json").is_file()
    assert not (tmp_path / "full/imagenet").exists()
    assert main(["data", "export-splits", "dtd,imagenet", "--out", str(tmp_path / "named"), *full]) == 2
    assert "has no val split" in capsys.readouterr().err and not (tmp_path / "named").exists()
    assert main(["data", "miniature", "dtd", "--data-root", str(tmp_path / "mini")]) == 0
    assert (tmp_path / "mini/dtd/bench-miniature.json").is_file()
    assert main(["data", "check", "oxford_pets", "--data-root", str(tmp_path / "nothing")]) == 2
    assert "split file of dataset 'oxford_pets' not found" in capsys.readouterr().err


def test_cli_check_reports_problems_and_exits_1(tmp_path, miniature_root, capsys):
    shutil.copytree(miniature_root / "fgvc_aircraft", tmp_path / "fgvc_aircraft")
    (tmp_path / "fgvc_aircraft/images/1000003.jpg").unlink()
    assert main(["data", "check", "fgvc_aircraft", "--data-root", str(tmp_path), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "FAIL " in out and "1000003.jpg" in out and "problems in: fgvc_aircraft" in out
    assert "variants.txt and the lists read with it, together" in out  # the digest is not variants.txt's own


def test_cli_prepare_imagenet_writes_the_class_list_and_prints_the_manual_steps(tmp_path, capsys):
    root = tmp_path / "data"
    assert main(["data", "prepare", "imagenet", "--data-root", str(root), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert (
        "ready    classnames.txt" in out and "TODO ImageNet needs an account at https://image-net.org" in out
    )
    assert (
        f"{root / 'imagenet'}/images/train/<wnid>/*.JPEG" in out
        and "manual steps needed for: imagenet" in out
    )
    lines = (root / "imagenet/classnames.txt").read_text().splitlines()
    assert len(lines) == 1000 and lines[0] == "n01440764 tench"


def test_protocols_live_in_one_module_and_are_looked_up_by_name(data_root):
    from bench.datasets.catalog import SYNTHETIC
    from bench.datasets.spec import DatasetSplits
    from bench.datasets.splits import load_or_create_fewshot, read_split_file
    from bench.protocols import PROTOCOLS, get_protocol
    from bench.spec import PROTOCOLS as CLI_PROTOCOLS

    assert tuple(PROTOCOLS) == CLI_PROTOCOLS == ("fewshot", "base2new")
    with pytest.raises(BenchError, match="unknown protocol 'cross_dataset'.*fewshot, base2new"):
        get_protocol("cross_dataset")
    splits: DatasetSplits = read_split_file(SYNTHETIC, data_root)
    fewshot = load_or_create_fewshot(splits, SYNTHETIC, 2, 1, data_root / "cache")
    names, train, _ = get_protocol("base2new").classes(splits, fewshot)
    assert names == splits.classnames[:4] and {splits.train.labels[i] for i in train} == {0, 1, 2, 3}
    assert get_protocol("fewshot").classes(splits, fewshot)[1] == fewshot.train
    assert get_protocol("base2new").record(splits)["n_new_classes"] == 4
