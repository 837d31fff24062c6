"""Weight files: where open_clip's pretrained tags are cached, fetching them, reading checkpoint files.

A tag's weights come from the Hugging Face hub (``hf_hub`` in open_clip's pretrained config;
cached under ``$HF_HUB_CACHE`` or ``$HF_HOME/hub``) or, for tags without one, from a URL
(cached in ``~/.cache/clip``, open_clip's default). bench looks in those caches itself, so
a cached file is used without any network call, and a missing file on an offline machine is
one error within seconds naming the paths searched and the three ways to provide the weights
(``bench weights fetch`` on a login node, a checkpoint file, or network access).

``bench weights fetch RN50/openai,ViT-B-16/openai`` fills the caches; ``bench weights where``
prints what a backbone would load and from where.
"""

from __future__ import annotations

import os
import socket
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from bench.errors import BenchError

HF_WEIGHTS_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
HF_CONFIG_NAME = "open_clip_config.json"
_TRUTHY = ("1", "on", "yes", "true")


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (``HF_HUB_CACHE``, else ``HF_HOME/hub``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or str(
        Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "huggingface"
    )
    return Path(home).expanduser() / "hub"


def url_cache_dir() -> Path:
    """Where open_clip keeps weights downloaded from a plain URL (its ``cache_dir=None`` default)."""
    return Path("~/.cache/clip").expanduser()


def offline() -> bool:
    """True when the user said this machine has no network (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    return any(
        os.environ.get(var, "").strip().lower() in _TRUTHY
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


@dataclass(frozen=True)
class WeightSource:
    """Where a pretrained tag's file comes from: a hub repo + file name candidates, or a URL."""

    hf_repo: str | None
    hf_files: tuple[str, ...]
    url: str | None

    @classmethod
    def from_pretrained_cfg(cls, cfg: dict) -> WeightSource:
        """From open_clip's pretrained config of a tag (``hf_hub`` is ``org/repo/`` or ``org/repo/file``)."""
        repo, filename = os.path.split(cfg.get("hf_hub") or "")
        files = (_with_safetensors(filename) if filename else HF_WEIGHTS_NAMES) if repo else ()
        return cls(repo or None, files, cfg.get("url") or None)

    def searched(self) -> list[Path]:
        """Every path a cached copy could be at (for error messages)."""
        paths = []
        if self.hf_repo:
            folder = hf_cache_dir() / f"models--{self.hf_repo.replace('/', '--')}" / "snapshots" / "*"
            paths += [folder / name for name in self.hf_files]
        if self.url:
            paths.append(url_cache_dir() / Path(urlparse(self.url).path).name)
        return paths

    def cached(self) -> Path | None:
        """The cached file, or None; never touches the network."""
        if self.hf_repo:
            from huggingface_hub import try_to_load_from_cache

            for name in self.hf_files:
                hit = try_to_load_from_cache(self.hf_repo, name, cache_dir=str(hf_cache_dir()))
                if isinstance(hit, str) and Path(hit).is_file():
                    return Path(hit)
        if self.url:
            path = url_cache_dir() / Path(urlparse(self.url).path).name
            if path.is_file():
                return path
        return None

    def download(self) -> Path:
        """Download into the cache (hub first, as open_clip does; else the URL); returns the file."""
        if self.hf_repo:
            from huggingface_hub import hf_hub_download

            last: Exception | None = None
            for name in self.hf_files:
                try:
                    return Path(
                        hf_hub_download(
                            self.hf_repo, name, cache_dir=str(hf_cache_dir()), endpoint=self.endpoint()
                        )
                    )
                except Exception as exc:  # the hub raises several types for a missing file name
                    last = exc
            if not self.url:
                raise RuntimeError(f"no weights file in hub repo {self.hf_repo} ({last})")
        from open_clip.pretrained import download_pretrained_from_url

        return Path(download_pretrained_from_url(self.url, cache_dir=str(url_cache_dir())))

    def endpoint(self) -> str:
        if self.hf_repo:
            from huggingface_hub import constants

            return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
        return self.url or ""


def _with_safetensors(filename: str) -> tuple[str, ...]:
    # open_clip tries a .safetensors twin of a .bin/.pth name first (open_clip.pretrained._get_safe_alternatives)
    if filename == HF_WEIGHTS_NAMES[1]:
        return HF_WEIGHTS_NAMES
    return (f"{filename[:-4]}.safetensors", filename) if filename.endswith((".bin", ".pth")) else (filename,)


def ensure_weights(name: str, source: WeightSource, *, download: bool = True) -> Path:
    """The local file of a tag's weights: the cached copy, else (``download``) a fresh download.

    Raises:
        BenchError: not cached and offline, unreachable within seconds, or ``download`` is False;
            the message lists the paths searched and the ways to provide the file.
    """
    hit = source.cached()
    if hit is not None:
        return hit
    searched = ", ".join(str(p) for p in source.searched()) or "(open_clip lists no download for it)"
    ways = (
        f"on a machine with internet run `bench weights fetch {name}` (same HF_HOME) and copy the cache here; "
        f"or pass the file as --backbone {'ARCH' if name.startswith('hf-hub:') else name.split('/')[0]}"
        "//path/to/file.pt; "
        "or run where the network is reachable without HF_HUB_OFFLINE"
    )
    if not download:
        raise BenchError(
            f"weights of {name} are not cached on this machine (searched {searched})",
            where="--backbone",
            fix=ways,
        )
    if offline():
        raise BenchError(
            f"weights of {name} are not cached and HF_HUB_OFFLINE is set (searched {searched})",
            where="--backbone",
            fix=ways,
        )
    if not reachable(source.endpoint()):
        raise BenchError(
            f"weights of {name} are not cached and {source.endpoint()} cannot be reached "
            f"(searched {searched})",
            where="--backbone",
            fix=ways,
        )
    try:
        return source.download()
    except Exception as exc:  # hub and urllib errors of every kind: one line with the same ways out
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise BenchError(f"download of {name} failed ({first})", where="--backbone", fix=ways) from exc


def reachable(url: str, timeout_s: float = 5.0) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout_s`` (no request is sent)."""
    parsed = urlparse(url)
    if not parsed.hostname:
        return False
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    deadline = time.monotonic() + timeout_s
    try:
        with socket.create_connection((parsed.hostname, port), timeout=max(0.1, deadline - time.monotonic())):
            return True
    except OSError:
        return False


def is_openai_torchscript(path: Path) -> bool:
    """True for the TorchScript archives OpenAI distributes (RN50.pt, ViT-B-16.pt, ...).

    They are zip files holding ``<name>/code/`` and ``<name>/constants.pkl``; a ``torch.save``
    state dict is a zip without them, a safetensors file no zip at all.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def read_state_dict(path: Path) -> tuple[dict, dict]:
    """A checkpoint file's state dict (``module.`` prefixes removed) and its ``"meta"`` dict (or ``{}``).

    Reads ``torch.save`` files with ``weights_only=True``, ``{"state_dict": ..., "meta": ...}`` files,
    safetensors, and OpenAI's TorchScript archives (through ``torch.jit.load``: TorchScript holds code,
    so only an archive the user named as ``--backbone`` is ever loaded this way).

    Raises:
        BenchError: a missing, corrupt or foreign file, or one that holds no state dict.
    """
    import torch

    if not path.is_file():
        raise BenchError(
            "checkpoint file not found", where=str(path), fix="pass an existing file as ARCH/PATH"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            content = load_file(str(path))
        elif is_openai_torchscript(path):
            content = torch.jit.load(str(path), map_location="cpu").state_dict()
            for key in ("input_resolution", "context_length", "vocab_size"):  # OpenAI's archives carry these
                content.pop(key, None)
        else:
            content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BenchError(
            f"cannot read checkpoint ({type(exc).__name__}: {first})",
            where=str(path),
            fix="pass a torch state-dict file, a safetensors file or OpenAI's .pt archive",
        ) from exc
    meta = content.get("meta") if isinstance(content, dict) and "state_dict" in content else None
    state = content.get("state_dict", content) if isinstance(content, dict) else content
    if not isinstance(state, dict) or not state or not all(isinstance(k, str) for k in state):
        raise BenchError(
            f"checkpoint holds a {type(state).__name__}, not a state dict",
            where=str(path),
            fix="save model.state_dict() (or {'state_dict': ..., 'meta': ...})",
        )
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return state, meta if isinstance(meta, dict) else {}


def hub_file(repo: str, filename: str, *, download: bool = True) -> Path:
    """A file of an ``hf-hub:`` backbone's repo (its config or weights), from the cache or downloaded."""
    return ensure_weights(f"hf-hub:{repo}", WeightSource(repo, (filename,), None), download=download)


def hub_weights(repo: str, *, download: bool = True) -> Path:
    return ensure_weights(f"hf-hub:{repo}", WeightSource(repo, HF_WEIGHTS_NAMES, None), download=download)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "weights",
        help="pre-download backbone weights (for offline nodes) or show where they are",
        description="fetch: download the weights of OpenCLIP tags or hf-hub: ids into the caches the nodes read "
        "(HF_HOME, ~/.cache/clip); where: show each backbone's activation, preprocessing and file.",
    )
    p.add_argument("action", choices=("fetch", "where"))
    p.add_argument(
        "backbones", help="comma list of ARCH/TAG or hf-hub:ORG/NAME, e.g. RN50/openai,ViT-B-16/openai"
    )
    p.set_defaults(func=_cmd_weights)


def _cmd_weights(args) -> int:
    from bench.build_plan import locate_backbones

    names = [b.strip() for b in args.backbones.split(",") if b.strip()]
    if not names:
        raise BenchError(
            "no backbone named", where="bench weights", fix="e.g. bench weights fetch RN50/openai"
        )
    for line in locate_backbones(names, download=args.action == "fetch"):
        print(line)  # noqa: T201
    return 0
