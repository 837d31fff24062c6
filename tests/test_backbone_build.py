"""Real weights built as their authors trained them: activation, preprocessing and weight files from the
tag's config, offline caches, OpenAI's TorchScript archives, and the activation in every identity.

No pretrained weights can be downloaded here, so the real formats are made with random weights: a
pre-filled Hugging Face cache in a temporary ``HF_HOME``, a scripted model saved as OpenAI does, a
loopback server that answers like the hub.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import open_clip
import pandas as pd
import pytest
import torch
from open_clip.pretrained import get_pretrained_cfg

from bench.backbone import (
    OPENAI_MEAN,
    OPENAI_STD,
    BackboneRef,
    built_activation,
    bundled_config,
    load_backbone,
)
from bench.build_plan import plan_build
from bench.cli import main
from bench.errors import BenchError
from bench.features import encode_prompts
from bench.spec import RunSpec
from bench.weights import hf_cache_dir

COMMIT = "0123456789abcdef0123456789abcdef01234567"
PROMPTS = ["a photo of a dog.", "a photo of a cat."]


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    """An empty Hugging Face home and user cache: nothing is found unless a test puts it there."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # open_clip's URL cache, ~/.cache/clip
    return tmp_path / "hf"


def _prefill_hub(repo: str, files: dict[str, bytes]) -> Path:
    """Lay files out as huggingface_hub's cache does (blobs, a snapshot per commit, refs/main)."""
    root = hf_cache_dir() / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (root / "blobs").mkdir()
    for name, payload in files.items():
        blob = root / "blobs" / hashlib.sha256(payload).hexdigest()
        blob.write_bytes(payload)
        (snapshot / name).symlink_to(blob)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(COMMIT)
    return snapshot


def _safetensors_bytes(state: dict) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in state.items()})


def _expected_quick_gelu(arch: str, tag: str) -> bool:
    # what OpenCLIP says each tag was trained with; OpenAI's weights all were with QuickGELU
    return bool(
        get_pretrained_cfg(arch, tag).get("quick_gelu")
        or open_clip.get_model_config(arch).get("quick_gelu")
        or tag == "openai"
    )


def test_every_pretrained_tag_plans_its_trained_activation_and_preprocessing():
    checked = 0
    for arch, tag in open_clip.list_pretrained():
        plan = plan_build(BackboneRef(arch, tag))
        tag_cfg, model_cfg = get_pretrained_cfg(arch, tag), open_clip.get_model_config(arch)
        assert plan.quick_gelu == _expected_quick_gelu(arch, tag), (arch, tag)
        size = model_cfg["vision_cfg"]["image_size"]
        assert plan.preprocessing.image_size == (size[0] if isinstance(size, list) else size), (arch, tag)
        assert plan.preprocessing.mean == tuple(tag_cfg.get("mean", OPENAI_MEAN)), (arch, tag)
        assert plan.preprocessing.std == tuple(tag_cfg.get("std", OPENAI_STD)), (arch, tag)
        assert plan.preprocessing.interpolation == tag_cfg.get("interpolation", "bicubic"), (arch, tag)
        assert plan.preprocessing.resize == tag_cfg.get("resize_mode", "shortest"), (arch, tag)
        assert plan.identity.endswith("|quick_gelu" if plan.quick_gelu else "|gelu")
        checked += 1
    assert checked > 100
    assert plan_build(BackboneRef.parse("RN50/openai")).quick_gelu
    assert plan_build(BackboneRef.parse("ViT-B-16/openai")).quick_gelu
    siglip = plan_build(BackboneRef.parse("ViT-B-16-SigLIP/webli"))
    assert (siglip.preprocessing.mean, siglip.preprocessing.resize) == ((0.5, 0.5, 0.5), "squash")


def test_built_models_follow_the_plan_activation_and_tokenizer():
    # a few models built for real (random init): the activation modules and the context length
    for name in ("RN50-quickgelu/random", "RN50/random"):
        backbone = load_backbone(BackboneRef.parse(name), torch.device("cpu"))
        assert backbone.activation == built_activation(backbone.model)
        assert backbone.activation == ("quick_gelu" if "quickgelu" in name else "gelu")
        assert backbone.tokenize(["x"]).shape[-1] == backbone.context_length == 77
        assert backbone.preprocessing.image_size == 224


@pytest.mark.slow
def test_openai_weights_from_the_hf_cache_or_openai_file_build_as_quickgelu(hf_home, tmp_path):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        reference = open_clip.create_model("RN50", force_quick_gelu=True).eval().requires_grad_(False)
    for p in reference.parameters():  # OpenAI ships fp16 weights: keep values both formats hold exactly
        p.data = p.data.half().float()
    state = reference.state_dict()
    _prefill_hub(
        "timm/resnet50_clip.openai",
        {"open_clip_model.safetensors": _safetensors_bytes({k: v.half() for k, v in state.items()})},
    )
    openai_file = tmp_path / "RN50.pt"
    torch.jit.save(
        torch.jit.script(
            open_clip.create_model("RN50", force_quick_gelu=True).half().eval().requires_grad_(False)
        ),
        str(openai_file),
    )
    scripted = torch.jit.load(str(openai_file))
    scripted.load_state_dict({k: v.half() for k, v in state.items()}, strict=False)
    torch.jit.save(scripted, str(openai_file))

    tokens = open_clip.get_tokenizer("RN50")(PROMPTS)
    with torch.inference_mode():
        expected = reference.encode_text(tokens)
        gelu = open_clip.create_model("RN50").eval().requires_grad_(False)
        gelu.load_state_dict(state)
        gelu_features = gelu.encode_text(tokens)
    for name in ("RN50/openai", "RN50-quickgelu/openai", f"RN50/{openai_file}"):
        backbone = load_backbone(BackboneRef.parse(name), torch.device("cpu"))
        assert backbone.activation == "quick_gelu" and built_activation(backbone.model) == "quick_gelu", name
        assert backbone.build["paper_arch"] == "RN50", name  # all three match the published RN50 numbers
        ours = encode_prompts(backbone, ["dog", "cat"], ["a photo of a {}."])[0]
        assert torch.equal(ours, expected), name
        assert (ours - gelu_features).abs().max() > 1e-2, name


def _scripted_tiny(path: Path, seed: int = 3) -> dict:
    """OpenAI's checkpoint format: a TorchScript archive of the model (here the tiny one, QuickGELU)."""
    from open_clip.model import CLIP

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(**{**bundled_config("bench-tiny"), "quick_gelu": True}).eval()
    torch.jit.save(torch.jit.script(model), str(path))
    return model.state_dict()


def test_openai_torchscript_checkpoint_loads_as_quickgelu(tmp_path):
    path = tmp_path / "tiny-openai.pt"
    state = _scripted_tiny(path)
    backbone = load_backbone(BackboneRef.parse(f"bench-tiny/{path}"), torch.device("cpu"))
    assert built_activation(backbone.model) == "quick_gelu"
    assert backbone.build["weights_origin"] == "openai" and backbone.build["paper_arch"] == "bench-tiny"
    assert all(torch.equal(backbone.model.state_dict()[k], v) for k, v in state.items())

    plain = tmp_path / "tiny-state.pt"  # the same weights as a state dict: the activation cannot be known
    torch.save(state, plain)
    assert load_backbone(BackboneRef.parse(f"bench-tiny/{plain}"), torch.device("cpu")).activation == "gelu"


def test_checkpoint_file_activation_from_the_arch_name_or_a_warning(tmp_path, caplog):
    path = tmp_path / "weights.pt"
    torch.save({"x": torch.zeros(1)}, path)  # the plan reads no weights, only the file's format
    plain = plan_build(BackboneRef.parse(f"RN50/{path}"))
    assert not plain.quick_gelu and plain.paper_arch is None
    assert "RN50-quickgelu/" in caplog.text and str(path) in caplog.text
    named = plan_build(BackboneRef.parse(f"RN50-quickgelu/{path}"))
    assert named.quick_gelu and named.paper_arch == "RN50"


def test_activation_is_part_of_run_ids_cache_keys_and_records(tmp_path, run_options):
    spec = RunSpec("zero_shot", "synthetic", 1, 1)
    ids = {
        spec.run_id(
            method_version="1",
            dataset_version="1",
            backbone_identity=plan_build(BackboneRef.parse(b)).identity,
            split_protocol="dassl",
        )
        for b in ("RN50/openai", "RN50-quickgelu/openai", "RN50/random")
    }
    assert len(ids) == 3
    # a record written before the activation was tracked (identity without it) is not this cell's
    old = spec.run_id(
        method_version="1", dataset_version="1", backbone_identity="bench-tiny/random", split_protocol="dassl"
    )
    new = spec.run_id(
        method_version="1",
        dataset_version="1",
        backbone_identity=BackboneRef.parse("bench-tiny/random").identity(),
        split_protocol="dassl",
    )
    assert old != new

    from bench.features import FeatureCache
    from bench.runner import run_cells

    gelu = load_backbone(BackboneRef.parse("bench-tiny/random"), torch.device("cpu"))
    quick = load_backbone(BackboneRef.parse("bench-tiny/random"), torch.device("cpu"))
    quick.build = {**quick.build, "activation": "quick_gelu"}
    cache = FeatureCache(tmp_path / "cache")
    cache.text_features(gelu, ["a"], ["{}"])
    cache.text_features(quick, ["a"], ["{}"])
    assert len(list((tmp_path / "cache" / "text").rglob("*.pt"))) == 2

    from bench.results import load_results

    run_cells([spec], run_options)
    (record,) = load_results(run_options.results_root)
    assert record.backbone.activation == "gelu"
    assert record.backbone.identity == "bench-tiny/random|gelu"
    assert record.backbone.open_clip == open_clip.__version__
    assert record.backbone.paper_arch is None


def test_offline_missing_weights_fail_fast_with_the_paths_and_the_ways_out(hf_home, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(BenchError) as err:
        load_backbone(BackboneRef.parse("RN50/openai"), torch.device("cpu"))
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert str(hf_home / "hub" / "models--timm--resnet50_clip.openai") in message
    assert "bench weights fetch RN50/openai" in message and "RN50//path/to/file.pt" in message


def test_unreachable_hub_fails_within_seconds(hf_home, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    start = time.monotonic()
    with pytest.raises(BenchError, match="cannot be reached"):
        plan_build(BackboneRef.parse("RN50/openai")).weights_file()
    assert time.monotonic() - start < 10


class _Hub(BaseHTTPRequestHandler):
    """Answers ``/{repo}/resolve/{revision}/{file}`` as the hub does (commit, etag and size headers)."""

    files: dict[str, bytes] = {}

    def _answer(self, body: bool) -> None:
        name = self.path.split("?")[0]
        payload = next((v for k, v in self.files.items() if name.endswith(f"/resolve/main/{k}")), None)
        if payload is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(payload).hexdigest()}"')
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def do_HEAD(self):  # noqa: N802 (http.server's name)
        self._answer(False)

    def do_GET(self):  # noqa: N802
        self._answer(True)

    def log_message(self, *args):
        pass


def test_weights_fetch_fills_the_cache_then_offline_runs_find_it(
    hf_home, monkeypatch, tmp_path, data_root, capsys
):
    repo = "me/tiny-clip"
    config = {
        "model_cfg": {**bundled_config("bench-tiny"), "quick_gelu": True},
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bilinear"},
    }
    from open_clip.model import CLIP

    state = CLIP(**config["model_cfg"]).state_dict()
    _Hub.files = {
        "open_clip_config.json": json.dumps(config).encode(),
        "open_clip_model.safetensors": _safetensors_bytes(state),
    }
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setattr(
            "huggingface_hub.constants.HF_HUB_OFFLINE", False
        )  # read at import, set by conftest
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        assert main(["weights", "fetch", f"hf-hub:{repo}"]) == 0
    finally:
        server.shutdown()
    out = capsys.readouterr().out
    assert "quick_gelu (hub repo config)" in out and "open_clip_model.safetensors" in out

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backbone = load_backbone(BackboneRef.parse(f"hf-hub:{repo}"), torch.device("cpu"))
    assert backbone.activation == "quick_gelu"
    assert (
        backbone.preprocessing.mean == (0.5, 0.5, 0.5) and backbone.preprocessing.interpolation == "bilinear"
    )
    assert all(torch.equal(backbone.model.state_dict()[k], v) for k, v in state.items())
    assert (
        main(
            [
                "run",
                "--backbone",
                f"hf-hub:{repo}",
                "--dry-run",
                "--methods",
                "zero_shot",
                "--shots",
                "1",
                "--seeds",
                "1",
                "--data-root",
                str(data_root),
                "--results",
                str(tmp_path / "r"),
                "--cache-dir",
                str(tmp_path / "c"),
            ]
        )
        == 0
    )
    assert f"backbone hf-hub:{repo}: quick_gelu" in capsys.readouterr().out


def test_dry_run_refuses_weights_an_offline_node_will_not_find(
    hf_home, monkeypatch, tmp_path, data_root, capsys
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(
        [
            "run",
            "--backbone",
            "RN50/openai",
            "--dry-run",
            "--methods",
            "zero_shot",
            "--shots",
            "1",
            "--seeds",
            "1",
            "--data-root",
            str(data_root),
            "--results",
            str(tmp_path / "r"),
            "--cache-dir",
            str(tmp_path / "c"),
        ]
    )
    assert code == 2
    assert "not cached" in capsys.readouterr().err


def test_random_backbone_on_a_real_dataset_warns(tmp_path, miniature_root, caplog):
    import dataclasses

    from bench.runner import RunOptions, Session, plan_cells
    from bench.spec import RunSpec

    options = RunOptions(
        data_root=miniature_root, cache_root=tmp_path / "c", results_root=tmp_path / "r", device="cpu"
    )
    session = Session(options)
    plan_cells([RunSpec("zero_shot", "dtd", 1, 1)], session)
    assert "meaningless" not in caplog.text  # a miniature: the tiny model is what it is for
    splits = session.splits("dtd")
    session._splits["dtd"] = dataclasses.replace(splits, miniature=False)
    plan_cells([RunSpec("zero_shot", "dtd", 1, 1)], session)
    assert "bench-tiny/random has random weights: its numbers on dtd are meaningless" in caplog.text


def test_hf_hub_ids_parse_and_report_architectures():
    ref = BackboneRef.parse("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")
    assert ref.id == "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K" and not ref.is_file
    assert "/" not in ref.slug
    with pytest.raises(BenchError, match="hf-hub:ORG/NAME"):
        BackboneRef.parse("hf-hub:laion")

    from bench.reports.aggregate import paper_arch
    from bench.results import BackboneInfo

    quick = BackboneInfo(
        id="RN50-quickgelu/openai",
        arch="RN50-quickgelu",
        paper_arch="RN50",
        activation="quick_gelu",
        weights_origin="openai",
    )
    gelu = BackboneInfo(
        id="RN50/openai", arch="RN50", paper_arch=None, activation="gelu", weights_origin="openai"
    )
    assert paper_arch(quick) == "RN50"
    assert paper_arch(gelu) == "RN50 (gelu)"
    assert (
        paper_arch(BackboneInfo(id="RN50/openai", arch="RN50")) == "RN50"
    )  # a record from before activations


def test_url_only_weights_download_into_open_clips_cache_and_are_found_offline(hf_home, monkeypatch):
    from bench.weights import WeightSource, ensure_weights
    from tests.loopback import Behaviour, serve

    payload = b"weights" * 1000
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with serve(Behaviour({"/models/RN50.pt": payload})) as base:
        source = WeightSource(None, (), f"{base}/models/RN50.pt")
        assert source.cached() is None
        path = ensure_weights("RN50/openai", source)
    assert path == Path(hf_home).parent / "home" / ".cache" / "clip" / "RN50.pt"
    assert path.read_bytes() == payload
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert ensure_weights("RN50/openai", source) == path  # the server is gone: found in the cache


def test_the_oldest_open_clip_tested_is_the_lower_bound_of_the_package_range():
    import re

    root = Path(__file__).resolve().parents[1]
    bound = re.search(r'"open_clip_torch>=([\d.]+)"', (root / "pyproject.toml").read_text()).group(1)
    tested = re.search(
        r"^OLDEST_OPEN_CLIP=([\d.]+)$", (root / "scripts" / "test.sh").read_text(), re.M
    ).group(1)
    assert tested.split(".")[:2] == bound.split(".")[:2]


def test_paper_comparison_matches_every_quickgelu_build_of_openai_rn50_and_no_gelu_build(tmp_path):
    import dataclasses

    from bench.reports.aggregate import results_frame
    from bench.reports.paper import compare, load_paper_numbers
    from tests.report_fixtures import record

    builds = {
        "RN50/openai": {"paper_arch": "RN50", "activation": "quick_gelu", "weights_origin": "openai"},
        "RN50-quickgelu/openai": {
            "paper_arch": "RN50",
            "activation": "quick_gelu",
            "weights_origin": "openai",
        },
        "RN50//w/RN50.pt": {"paper_arch": "RN50", "activation": "quick_gelu", "weights_origin": "openai"},
        "RN50/openai-gelu-on-purpose": {"paper_arch": None, "activation": "gelu", "weights_origin": "openai"},
    }
    results = []
    for backbone, build in builds.items():
        r = record("clip_adapter", "dtd", 16, 1, 0.66, backbone=backbone)
        results.append(dataclasses.replace(r, backbone=dataclasses.replace(r.backbone, **build)))
    frame = results_frame(results)
    cells = frame.assign(eval_set=frame["dataset"], mean=frame["top1"])
    out = compare(cells, load_paper_numbers(), tolerance=1.0).set_index("backbone")
    assert (
        out.loc[["RN50/openai", "RN50-quickgelu/openai", "RN50//w/RN50.pt"], "paper"].tolist() == [65.96] * 3
    )
    assert pd.isna(out.loc["RN50/openai-gelu-on-purpose", "paper"])
