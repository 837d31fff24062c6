"""How a backbone is built, decided from configs before any weights are read.

The activation is the one the weights were trained with, never open_clip's silent default:

- an OpenCLIP tag: ``quick_gelu`` of open_clip's pretrained config for (arch, tag) — every
  ``openai`` tag says QuickGELU, which open_clip >= 3 no longer forces by itself (it only warns);
- a ``-quickgelu`` architecture (``RN50-quickgelu//path/RN50.pt``): QuickGELU;
- a local file in OpenAI's own format (the TorchScript archives OpenAI distributes): QuickGELU;
- any other local file: the architecture's config (GELU for the plain names), said in one log
  line with the way to choose the other;
- ``hf-hub:ORG/NAME``: the ``model_cfg`` of the repo's ``open_clip_config.json``.

Preprocessing comes from the same place (the tag's pretrained config or the hub repo's
``preprocess_cfg`` over open_clip's defaults; the image size from the model config).
The activation is part of the backbone's identity (run ids, feature-cache keys, records).
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from bench.backbone import OPENAI_MEAN, OPENAI_STD, BackboneRef, Preprocessing, bundled_config
from bench.errors import BenchError
from bench.weights import WeightSource, ensure_weights, hub_file, hub_weights, is_openai_torchscript, offline

log = logging.getLogger(__name__)
QUICKGELU_SUFFIX = "-quickgelu"


@dataclass(frozen=True)
class BuildPlan:
    """What ``load_backbone`` will build for a :class:`BackboneRef`.

    Attributes:
        ref: the backbone asked for.
        kind: ``"bundled"`` (bench/model_configs), ``"open_clip"`` (an open_clip model name) or ``"hf-hub"``.
        model_cfg: the open_clip model config (``quick_gelu`` set as planned).
        quick_gelu: build the transformers with QuickGELU (else GELU).
        activation_source: why that activation (for records and ``bench weights where``).
        preprocessing: image size, resize mode, interpolation, normalisation.
        weights_origin: ``"openai"`` (an ``openai`` tag or OpenAI's TorchScript file), ``"other"`` (another
            tag or hub repo), ``"unknown"`` (a state-dict file) or ``"none"`` (random init).
        tag_source: where an OpenCLIP tag's file is cached or downloaded from.
        hub_config: the cached ``open_clip_config.json`` of an ``hf-hub:`` backbone.
    """

    ref: BackboneRef
    kind: str
    model_cfg: dict = field(compare=False)
    quick_gelu: bool
    activation_source: str
    preprocessing: Preprocessing
    weights_origin: str
    tag_source: WeightSource | None = None
    hub_config: Path | None = None

    @property
    def activation(self) -> str:
        return "quick_gelu" if self.quick_gelu else "gelu"

    @property
    def identity(self) -> str:
        """The weights (tag, file hash or hub id) and the activation, for run ids."""
        return f"{self.ref.weights_identity()}|{self.activation}"

    @property
    def paper_arch(self) -> str | None:
        """The architecture name published numbers are matched by, or None when none applies.

        Published CLIP few-shot numbers are all OpenAI weights run with QuickGELU: ``RN50/openai``,
        ``RN50-quickgelu/openai`` and OpenAI's ``RN50.pt`` all match ``RN50``; a GELU build, other
        tags and random weights match nothing. A state-dict file of unknown origin matches by its
        architecture when built with QuickGELU.
        """
        if self.kind == "hf-hub" or not self.quick_gelu or self.weights_origin not in ("openai", "unknown"):
            return None
        return self.ref.arch.removesuffix(QUICKGELU_SUFFIX)

    def weights_file(self, *, download: bool = True) -> Path | None:
        """The local file the weights load from (cached or downloaded tag, checkpoint, hub), None for random."""
        if self.ref.weights == "random":
            return None
        if self.ref.is_file:
            return Path(self.ref.weights).expanduser()
        if self.kind == "hf-hub":
            return hub_weights(self.ref.arch.removeprefix("hf-hub:"), download=download)
        return ensure_weights(self.ref.id, self.tag_source, download=download)

    def record(self) -> dict:
        return {
            "activation": self.activation,
            "activation_source": self.activation_source,
            "weights_origin": self.weights_origin,
            "paper_arch": self.paper_arch,
        }


def plan_build(ref: BackboneRef, *, download: bool = True) -> BuildPlan:
    """Decide how ``ref`` is built, reading configs only (and, for ``hf-hub:``, the repo's config file).

    Raises:
        BenchError: unknown architecture or tag, missing checkpoint file, an ``hf-hub:`` config that is
            not cached and cannot be downloaded.
    """
    if ref.is_hub:
        return _plan_hub(ref, download=download)
    config = bundled_config(ref.arch)
    if config is not None:
        return _plan_file_or_random(ref, "bundled", config)
    import open_clip

    if ref.arch not in open_clip.list_models():
        import difflib

        from bench.backbone import bundled_configs

        close = difflib.get_close_matches(ref.arch, open_clip.list_models() + bundled_configs(), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise BenchError(
            f"unknown architecture {ref.arch!r}.{hint}",
            where="--backbone",
            fix="see open_clip.list_models() or bench/model_configs",
        )
    config = copy.deepcopy(open_clip.get_model_config(ref.arch))
    if ref.is_file or ref.weights == "random":
        return _plan_file_or_random(ref, "open_clip", config)
    return _plan_tag(ref, config)


def _plan_tag(ref: BackboneRef, config: dict) -> BuildPlan:
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    tags = list_pretrained_tags_by_model(ref.arch)
    if ref.weights not in tags:
        raise BenchError(
            f"open_clip has no weights {ref.weights!r} for {ref.arch}",
            where="--backbone",
            fix=f"use one of: {', '.join(tags) or '(none: use a checkpoint file)'}",
        )
    tag_cfg = get_pretrained_cfg(ref.arch, ref.weights)
    quick_gelu = bool(config.get("quick_gelu") or tag_cfg.get("quick_gelu"))
    source = "architecture config" if config.get("quick_gelu") else "pretrained tag config"
    return BuildPlan(
        ref,
        "open_clip",
        {**config, "quick_gelu": quick_gelu},
        quick_gelu,
        source,
        _preprocessing(config, tag_cfg),
        "openai" if ref.weights == "openai" else "other",
        tag_source=WeightSource.from_pretrained_cfg(tag_cfg),
    )


def _plan_file_or_random(ref: BackboneRef, kind: str, config: dict) -> BuildPlan:
    named = bool(config.get("quick_gelu"))
    if ref.weights == "random":
        return BuildPlan(ref, kind, config, named, "architecture config", _preprocessing(config, {}), "none")
    path = Path(ref.weights).expanduser()
    if not path.is_file():
        raise BenchError(
            "checkpoint file not found", where=str(path), fix="pass an existing file as ARCH/PATH"
        )
    if is_openai_torchscript(path):
        quick_gelu, source, origin = True, "OpenAI TorchScript checkpoint (trained with QuickGELU)", "openai"
    elif named or kind == "bundled":  # bench's own configs say what their checkpoints were trained with
        quick_gelu, source, origin = named, "architecture config", "unknown"
    else:
        quick_gelu, source, origin = False, "architecture config (the file does not say)", "unknown"
        log.warning(
            "%s: the activation the weights were trained with cannot be read from the file; building "
            "%s with GELU (its config). If they come from OpenAI's CLIP (QuickGELU), use %s",
            path,
            ref.arch,
            _quickgelu_hint(ref),
        )
    return BuildPlan(
        ref,
        kind,
        {**config, "quick_gelu": quick_gelu},
        quick_gelu,
        source,
        _preprocessing(config, {}),
        origin,
    )


def _quickgelu_hint(ref: BackboneRef) -> str:
    import open_clip

    variant = ref.arch + QUICKGELU_SUFFIX
    if variant in open_clip.list_models():
        return f"--backbone {variant}/{ref.weights}"
    return 'a copy of the model config with "quick_gelu": true as a bundled architecture'


def _plan_hub(ref: BackboneRef, *, download: bool) -> BuildPlan:
    repo = ref.arch.removeprefix("hf-hub:")
    path = hub_file(repo, "open_clip_config.json", download=download)
    try:
        doc = json.loads(path.read_text())
        config = doc["model_cfg"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BenchError(
            f"not an open_clip hub config ({type(exc).__name__}: {exc})",
            where=str(path),
            fix=f"hf-hub:{repo} must hold an open_clip_config.json with a model_cfg",
        ) from exc
    quick_gelu = bool(config.get("quick_gelu"))
    return BuildPlan(
        ref,
        "hf-hub",
        config,
        quick_gelu,
        "hub repo config",
        _preprocessing(config, doc.get("preprocess_cfg") or {}),
        "other",
        hub_config=path,
    )


def _preprocessing(model_cfg: dict, overrides: dict) -> Preprocessing:
    """open_clip's preprocessing defaults (OpenAI's) updated by a tag's or hub repo's values."""
    size = model_cfg.get("vision_cfg", {}).get("image_size", 224)
    size = size[0] if isinstance(size, (tuple, list)) else size
    return Preprocessing(
        image_size=int(size),
        resize=str(overrides.get("resize_mode", "shortest")),
        interpolation=str(overrides.get("interpolation", "bicubic")),
        mean=tuple(overrides.get("mean", OPENAI_MEAN)),
        std=tuple(overrides.get("std", OPENAI_STD)),
    )


def locate_backbones(names: list[str], *, download: bool) -> list[str]:
    """One line per backbone: activation, preprocessing and the weights file (located, or fetched with
    ``download``), so a sweep is never submitted for weights the nodes will not find.

    Raises:
        BenchError: a backbone whose weights are not cached when they must be (``download``, or an
            offline machine), naming the paths searched and the ways to provide them.
    """
    lines = []
    for name in dict.fromkeys(names):
        plan = plan_build(BackboneRef.parse(name), download=download)
        try:
            file = plan.weights_file(download=download)
        except BenchError:
            if download or offline():
                raise
            file = f"not cached yet: bench run downloads it (or run: bench weights fetch {name})"
        prep = plan.preprocessing
        lines.append(
            f"{name}: {plan.activation} ({plan.activation_source}), {prep.image_size}px {prep.resize}/"
            f"{prep.interpolation}, weights: {file or 'random init'}"
        )
    return lines
