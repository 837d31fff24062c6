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
from dataclasses import dataclass, replace
from functools import cached_property, lru_cache
from importlib import resources
from pathlib import Path

import torch

from bench.errors import BenchError
from bench.fileio import sha256_file

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
HUB_WEIGHTS = "hub"
ACTIVATIONS = ("quick_gelu", "gelu")
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
    """A backbone name: ``arch`` plus ``weights`` (tag, ``random`` or checkpoint path).

    ``hf-hub:ORG/NAME`` names a hub repo holding an open_clip config and weights; its ``arch`` is
    the whole id and its ``weights`` ``"hub"``.
    """

    arch: str
    weights: str

    @classmethod
    def parse(cls, text: str) -> BackboneRef:
        if text.startswith("hf-hub:"):
            repo = text.removeprefix("hf-hub:").strip("/")
            if repo.count("/") != 1:
                raise BenchError(
                    f"backbone {text!r} is not hf-hub:ORG/NAME",
                    where="--backbone",
                    fix="write e.g. hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
                )
            return cls(f"hf-hub:{repo}", HUB_WEIGHTS)
        arch, sep, weights = text.partition("/")
        if not sep or not arch or not weights:
            raise BenchError(
                f"backbone {text!r} is not ARCH/WEIGHTS",
                where="--backbone",
                fix="write e.g. RN50/openai, ViT-B-16/laion2b_s34b_b88k, bench-tiny/random, ViT-B-32//path/to/ckpt.pt "
                "or hf-hub:ORG/NAME",
            )
        return cls(arch, weights)

    @property
    def id(self) -> str:
        return self.arch if self.is_hub else f"{self.arch}/{self.weights}"

    @property
    def is_hub(self) -> bool:
        return self.arch.startswith("hf-hub:")

    @property
    def is_file(self) -> bool:
        return not self.is_hub and ("/" in self.weights or self.weights.endswith(CHECKPOINT_SUFFIXES))

    @property
    def slug(self) -> str:
        """A folder name: the arch plus the tag, or the file's stem for a checkpoint file."""
        weights = Path(self.weights).stem if self.is_file else self.weights
        return f"{self.arch}__{weights}".replace("/", "_").replace(":", "_")

    def weights_identity(self) -> str:
        """What the weights are: the tag, or ``file:<sha256>`` of a checkpoint file."""
        if not self.is_file:
            return self.id
        path = Path(self.weights).expanduser()
        if not path.is_file():
            raise BenchError(
                "checkpoint file not found",
                where=str(path),
                fix="pass an existing file as --backbone ARCH/PATH",
            )
        return f"{self.arch}/file:{_file_digest(path)}"

    def identity(self) -> str:
        """What defines the model, for run ids: the weights and the activation it is built with."""
        from bench.build_plan import plan_build

        return plan_build(self).identity


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
        build: how it was built (:meth:`bench.build_plan.BuildPlan.record`: activation and why,
            weights origin, the architecture published numbers match).
    """

    def __init__(
        self,
        ref: BackboneRef,
        model: torch.nn.Module,
        tokenizer,
        preprocessing: Preprocessing,
        device: torch.device,
        precision: str,
        checkpoint_meta: dict | None = None,
        build: dict | None = None,
    ):
        self.ref, self.model, self.tokenizer = ref, model, tokenizer
        self.preprocessing, self.device, self.precision = preprocessing, device, precision
        self.checkpoint_meta = checkpoint_meta or {}
        self.build = build or {"activation": built_activation(model)}

    @property
    def activation(self) -> str:
        """``quick_gelu`` or ``gelu``: the transformers' MLP activation (part of every cache key and run id)."""
        return self.build["activation"]

    @property
    def build_key(self) -> str:
        """The activation and open_clip's version, for cache keys: the same weights built another way
        (an open_clip that builds a tag differently) never share features."""
        import open_clip

        return f"{self.activation}|open_clip={open_clip.__version__}"

    @cached_property
    def weights_sha256(self) -> str:
        return state_dict_sha256(self.model)

    @property
    def embed_dim(self) -> int:
        return (
            int(self.model.text_projection.shape[-1])
            if self.model.text_projection is not None
            else int(self.model.token_embedding.weight.shape[-1])
        )

    @property
    def logit_scale(self) -> float:
        """CLIP's learned temperature, ``exp(logit_scale)`` (100 for the OpenAI weights)."""
        return float(self.model.logit_scale.detach().exp().item())

    @property
    def context_length(self) -> int:
        return int(self.model.context_length)

    def autocast(self):
        return torch.autocast(
            device_type=self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"
        )

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
        raise BenchError(
            f"unknown device {requested!r}", where="--device", fix="use auto, cpu, cuda or cuda:N"
        ) from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchError("CUDA is not available on this machine", where="--device", fix="use --device cpu")
    if device.type not in ("cpu", "cuda") and not (
        device.type == "mps" and torch.backends.mps.is_available()
    ):
        raise BenchError(
            f"device {requested!r} is not available on this machine",
            where="--device",
            fix="use --device auto, cpu or cuda (mps only on Apple silicon)",
        )
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` -> bf16 autocast on CUDA, fp32 elsewhere; ``"fp32"``/``"bf16"`` as given."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in ("fp32", "bf16"):
        raise BenchError(
            f"unknown precision {precision!r}", where="--precision", fix="use auto, fp32 or bf16"
        )
    return precision


def load_backbone(ref: BackboneRef, device: torch.device, precision: str = "auto") -> Backbone:
    """Build the model as :func:`bench.build_plan.plan_build` decides, load its weights and freeze it.

    Raises:
        BenchError: unknown architecture or tag, missing or incompatible checkpoint file, weights
            neither cached nor downloadable (with the cache paths searched and the ways out).
    """
    from bench.build_plan import plan_build

    precision = resolve_precision(precision, device)
    plan = plan_build(ref)
    weights = plan.weights_file()
    meta: dict = {}
    if plan.kind == "bundled":
        model, tokenizer, meta = _build_bundled(plan.model_cfg, weights)
    else:
        model, tokenizer = _build_open_clip(plan, weights)
    _check_activation(model, plan)
    model = model.to(device).eval().requires_grad_(False)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return Backbone(
        ref,
        model,
        tokenizer,
        _model_preprocessing(model, plan.preprocessing),
        device,
        precision,
        checkpoint_meta=meta,
        build=plan.record(),
    )


def built_activation(model: torch.nn.Module) -> str:
    """The transformer MLP activation a built model has: ``quick_gelu``, ``gelu`` or ``other``."""
    names = {type(m).__name__ for m in model.modules()}
    return "quick_gelu" if "QuickGELU" in names else "gelu" if "GELU" in names else "other"


def _check_activation(model: torch.nn.Module, plan) -> None:
    built = built_activation(model)
    if plan.quick_gelu and built != "quick_gelu":
        import open_clip

        raise BenchError(
            f"open_clip {open_clip.__version__} built {plan.ref.id} with {built}, not the QuickGELU "
            "its weights were trained with",
            where="--backbone",
            fix="install open_clip_torch>=3.0 (the versions bench is tested with)",
        )


def _build_bundled(config: dict, weights: Path | None):
    import open_clip
    from open_clip.model import CLIP

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_RANDOM_INIT_SEED)
        model = CLIP(**config)
    meta = _load_checkpoint_into(model, weights) if weights is not None else {}
    tokenizer = open_clip.SimpleTokenizer(context_length=config["text_cfg"].get("context_length", 77))
    return model, tokenizer, meta


def _load_checkpoint_into(model: torch.nn.Module, path: Path) -> dict:
    """Load a state-dict file (or OpenAI's TorchScript archive) into ``model``; returns its ``"meta"`` dict."""
    from bench.weights import read_state_dict

    state, meta = read_state_dict(path)
    # a TorchScript archive stores every buffer, also those the module keeps out of its state dict
    transient = {name for name, _ in model.named_buffers()} - set(model.state_dict())
    try:
        model.load_state_dict({k: v for k, v in state.items() if k not in transient})
    except RuntimeError as exc:
        raise BenchError(
            f"checkpoint does not match the architecture ({' '.join(str(exc).split())})",
            where=str(path),
            fix="pass the architecture the checkpoint was trained with",
        ) from exc
    return meta


def _build_open_clip(plan, weights: Path | None):
    import open_clip

    from bench.weights import is_openai_torchscript

    source = f"local-dir:{plan.hub_config.parent}" if plan.kind == "hf-hub" else plan.ref.arch
    # open_clip reads files with torch.load(weights_only=True), which refuses OpenAI's TorchScript archives
    scripted = weights is not None and is_openai_torchscript(weights)
    pretrained = None if plan.kind == "hf-hub" or weights is None or scripted else str(weights)
    prep = plan.preprocessing
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_RANDOM_INIT_SEED)
            model = open_clip.create_model(
                source,
                pretrained=pretrained,
                force_quick_gelu=plan.quick_gelu,
                force_preprocess_cfg={
                    "mean": prep.mean,
                    "std": prep.std,
                    "interpolation": prep.interpolation,
                    "resize_mode": prep.resize,
                },
            )
    except Exception as exc:  # open_clip's loaders raise many types for a corrupt or foreign file
        first = (str(exc).splitlines() or [""])[0] or type(exc).__name__
        raise BenchError(
            f"cannot load {weights} into {plan.ref.arch} ({type(exc).__name__}: {first})",
            where=str(weights),
            fix=f"pass an open_clip or OpenAI checkpoint of {plan.ref.arch}",
        ) from exc
    if scripted:
        _load_checkpoint_into(model, weights)
    tokenizer = open_clip.get_tokenizer(source)
    return model, tokenizer


def _model_preprocessing(model: torch.nn.Module, planned: Preprocessing) -> Preprocessing:
    """The planned preprocessing with the image size the built model expects."""
    cfg = getattr(getattr(model, "visual", None), "preprocess_cfg", None) or {}
    size = cfg.get("size", getattr(model.visual, "image_size", planned.image_size))
    size = size[0] if isinstance(size, (tuple, list)) else size
    return replace(planned, image_size=int(size))
