"""Backbone: a frozen CLIP from open_clip, identified as ``arch/weights``.

``weights`` is an OpenCLIP pretrained tag (``RN50/openai``, ``ViT-B-16/laion2b_s34b_b88k``),
``random`` for a seeded random initialisation, or a local checkpoint file
(``ViT-B-32//abs/path/model.pt``, ``bench-tiny/./ckpt.pt``). Architectures are
open_clip's model configs plus the small ones bundled in ``bench/model_configs``.

The sha256 of the loaded weights (over the state dict, so it is the same for a tag and
for the file it downloads) goes into every feature-cache key and result record.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from functools import cached_property, lru_cache
from importlib import resources
from pathlib import Path

import torch

from bench._io import sha256_file
from bench.errors import BenchError

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_RANDOM_INIT_SEED = 0
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the encoder's input; part of every feature key and result.

    Attributes:
        image_size: side of the square input, pixels.
        resize: ``"shortest"`` resizes the short side then centre-crops (CLIP; CoOp/Dassl since
            09.10.2021); ``"squash"`` resizes both sides to ``image_size`` (CoOp before that date,
            the CLIP-Adapter v1 figure).
        interpolation: PIL resampling filter name.
        mean, std: per-channel normalisation.
    """

    image_size: int
    resize: str = "shortest"
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD


@dataclass(frozen=True)
class BackboneRef:
    """A backbone name: ``arch`` plus ``weights`` (tag, ``random`` or checkpoint path)."""

    arch: str
    weights: str

    @classmethod
    def parse(cls, text: str) -> BackboneRef:
        arch, sep, weights = text.partition("/")
        if not sep or not arch or not weights:
            raise BenchError(
                f"backbone {text!r} is not ARCH/WEIGHTS",
                where="--backbone",
                fix="write e.g. RN50/openai, ViT-B-16/laion2b_s34b_b88k, bench-tiny/random or ViT-B-32//path/to/ckpt.pt",
            )
        return cls(arch, weights)

    @property
    def id(self) -> str:
        return f"{self.arch}/{self.weights}"

    @property
    def is_file(self) -> bool:
        return "/" in self.weights or self.weights.endswith(CHECKPOINT_SUFFIXES)

    @property
    def slug(self) -> str:
        """A folder name: the arch plus the tag, or the file's stem for a checkpoint file."""
        weights = Path(self.weights).stem if self.is_file else self.weights
        return f"{self.arch}__{weights}".replace("/", "_").replace(":", "_")

    def identity(self) -> str:
        """What the weights are, for run ids: the tag, or ``file:<sha256>`` of a checkpoint file."""
        if not self.is_file:
            return self.id
        path = Path(self.weights).expanduser()
        if not path.is_file():
            raise BenchError(
                "checkpoint file not found", where=str(path), fix="pass an existing file as --backbone ARCH/PATH"
            )
        return f"{self.arch}/file:{_file_digest(path)}"


def _file_digest(path: Path) -> str:
    stat = path.stat()
    return _file_digest_memo(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=64)
def _file_digest_memo(path: str, size: int, mtime_ns: int) -> str:
    # Size and mtime are part of the memo key so an edited file is hashed again.
    return sha256_file(Path(path))


def bundled_configs() -> list[str]:
    """Names of the model configs shipped in ``bench/model_configs``."""
    root = resources.files("bench") / "model_configs"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".json"))


def bundled_config(arch: str) -> dict | None:
    """The open_clip config of a bundled architecture (``bench/model_configs/<arch>.json``), or ``None``."""
    return _bundled_config(arch)


def _bundled_config(arch: str) -> dict | None:
    path = resources.files("bench") / "model_configs" / f"{arch}.json"
    return json.loads(path.read_text()) if path.is_file() else None


class Backbone:
    """A loaded, frozen CLIP.

    Attributes:
        ref: what was asked for.
        model: the open_clip ``CLIP`` module, in eval mode, gradients off.
        preprocessing: how images are prepared for it.
        weights_sha256: sha256 over the state dict (names, dtypes, shapes, bytes).
        device: where it runs. precision: ``"fp32"`` or ``"bf16"`` (autocast; the default on CUDA, and
            possible on the CPU, where tests exercise the mixed-precision path).
        checkpoint_meta: the ``"meta"`` dict of a checkpoint saved as ``{"state_dict", "meta"}`` (how
            the weights were made, e.g. ``bench demo``'s pretraining recipe); goes into every record.
    """

    def __init__(self, ref: BackboneRef, model: torch.nn.Module, tokenizer, preprocessing: Preprocessing,
                 device: torch.device, precision: str, checkpoint_meta: dict | None = None):
        self.ref, self.model, self.tokenizer = ref, model, tokenizer
        self.preprocessing, self.device, self.precision = preprocessing, device, precision
        self.checkpoint_meta = checkpoint_meta or {}

    @cached_property
    def weights_sha256(self) -> str:
        return state_dict_sha256(self.model)

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[-1]) if self.model.text_projection is not None else int(
            self.model.token_embedding.weight.shape[-1]
        )

    @property
    def logit_scale(self) -> float:
        """CLIP's learned temperature, ``exp(logit_scale)`` (100 for the OpenAI weights)."""
        return float(self.model.logit_scale.detach().exp().item())

    @property
    def context_length(self) -> int:
        return int(self.model.context_length)

    def autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    @torch.inference_mode()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised pixels -> (B, D) float32 image embeddings, not L2-normalised."""
        images = images.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            return self.model.encode_image(images).float()

    @torch.inference_mode()
    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids -> (B, D) float32 text embeddings, not L2-normalised."""
        with self.autocast():
            return self.model.encode_text(tokens.to(self.device)).float()

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Texts -> (B, context_length) int64 token ids (SOT ... EOT, zero padded)."""
        return self.tokenizer(texts)


def state_dict_sha256(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def resolve_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as exc:
        raise BenchError(f"unknown device {requested!r}", where="--device", fix="use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchError("CUDA is not available on this machine", where="--device", fix="use --device cpu")
    if device.type not in ("cpu", "cuda") and not (device.type == "mps" and torch.backends.mps.is_available()):
        raise BenchError(f"device {requested!r} is not available on this machine", where="--device",
                         fix="use --device auto, cpu or cuda (mps only on Apple silicon)")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` -> bf16 autocast on CUDA, fp32 elsewhere; ``"fp32"``/``"bf16"`` as given."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in ("fp32", "bf16"):
        raise BenchError(f"unknown precision {precision!r}", where="--precision", fix="use auto, fp32 or bf16")
    return precision


def load_backbone(ref: BackboneRef, device: torch.device, precision: str = "auto") -> Backbone:
    """Build the model, load its weights and freeze it.

    Raises:
        BenchError: unknown architecture, unknown tag, missing or incompatible checkpoint file,
            or a download that failed (with the offline hint).
    """
    precision = resolve_precision(precision, device)
    config = _bundled_config(ref.arch)
    meta: dict = {}
    if config is not None:
        model, tokenizer, prep, meta = _build_bundled(ref, config)
    else:
        model, tokenizer, prep = _build_open_clip(ref)
    model = model.to(device).eval().requires_grad_(False)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return Backbone(ref, model, tokenizer, prep, device, precision, checkpoint_meta=meta)


def _build_bundled(ref: BackboneRef, config: dict):
    import open_clip
    from open_clip.model import CLIP

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_RANDOM_INIT_SEED)
        model = CLIP(**config)
    meta: dict = {}
    if ref.weights != "random":
        if not ref.is_file:
            raise BenchError(
                f"bundled architecture {ref.arch!r} has no pretrained tag {ref.weights!r}",
                where="--backbone",
                fix=f"use {ref.arch}/random or {ref.arch}/PATH_TO_CHECKPOINT",
            )
        meta = _load_checkpoint_into(model, Path(ref.weights).expanduser())
    tokenizer = open_clip.SimpleTokenizer(context_length=config["text_cfg"].get("context_length", 77))
    prep = Preprocessing(image_size=int(config["vision_cfg"]["image_size"]))
    return model, tokenizer, prep, meta


def _load_checkpoint_into(model: torch.nn.Module, path: Path) -> dict:
    """Load a state-dict file into ``model``; returns the file's ``"meta"`` dict, if it has one."""
    if not path.is_file():
        raise BenchError("checkpoint file not found", where=str(path), fix="pass an existing file as ARCH/PATH")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]  # one line, never empty
        raise BenchError(f"cannot read checkpoint ({type(exc).__name__}: {first})", where=str(path),
                         fix="pass a torch state-dict file") from exc
    meta = state.get("meta") if isinstance(state, dict) and "state_dict" in state else None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not state or not all(isinstance(k, str) for k in state):
        raise BenchError(f"checkpoint holds a {type(state).__name__}, not a state dict", where=str(path),
                         fix="save model.state_dict() (or {'state_dict': ..., 'meta': ...})")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise BenchError(
            f"checkpoint does not match the architecture ({' '.join(str(exc).split()) or type(exc).__name__})",
            where=str(path),
            fix="pass the architecture the checkpoint was trained with",
        ) from exc
    return meta if isinstance(meta, dict) else {}


def _build_open_clip(ref: BackboneRef):
    import open_clip

    if ref.arch not in open_clip.list_models() and not ref.arch.startswith("hf-hub:"):
        import difflib

        close = difflib.get_close_matches(ref.arch, open_clip.list_models() + bundled_configs(), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise BenchError(f"unknown architecture {ref.arch!r}.{hint}", where="--backbone",
                         fix="see open_clip.list_models() or bench/model_configs")
    pretrained = None if ref.weights == "random" else str(Path(ref.weights).expanduser()) if ref.is_file else ref.weights
    if ref.is_file and not Path(pretrained).is_file():
        raise BenchError("checkpoint file not found", where=pretrained, fix="pass an existing file as ARCH/PATH")
    if not ref.is_file and pretrained and pretrained not in open_clip.list_pretrained_tags_by_model(ref.arch):
        tags = open_clip.list_pretrained_tags_by_model(ref.arch)
        raise BenchError(f"open_clip has no weights {pretrained!r} for {ref.arch}", where="--backbone",
                         fix=f"use one of: {', '.join(tags) or '(none: use a checkpoint file)'}")
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_RANDOM_INIT_SEED)
            model = open_clip.create_model(ref.arch, pretrained=pretrained)
    except Exception as exc:  # open_clip's loaders raise many types for a corrupt or foreign file
        first = (str(exc).splitlines() or [""])[0]
        if ref.is_file:
            raise BenchError(f"cannot load this checkpoint into {ref.arch} ({type(exc).__name__}: {first})",
                             where=pretrained, fix=f"pass an open_clip or OpenAI checkpoint of {ref.arch}") from exc
        if not isinstance(exc, RuntimeError):
            raise
        raise BenchError(
            f"cannot load weights {ref.id} ({first})",
            where="--backbone",
            fix="check the network or HF_HUB_OFFLINE, or download the checkpoint and pass ARCH/PATH",
        ) from exc
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = cfg.get("size", model.visual.image_size)
    size = size[0] if isinstance(size, (tuple, list)) else size
    prep = Preprocessing(
        image_size=int(size),
        resize=str(cfg.get("resize_mode", "shortest")),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        mean=tuple(cfg.get("mean", OPENAI_MEAN)),
        std=tuple(cfg.get("std", OPENAI_STD)),
    )
    return model, open_clip.get_tokenizer(ref.arch), prep
