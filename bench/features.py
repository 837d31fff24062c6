"""FeatureCache: frozen-encoder features computed once, stored atomically, shared by every cell.

Image features live per :class:`ImageFeatureKey` (backbone, weights hash, precision, activation and
open_clip version, dataset,
split file hash, split, preprocessing, view) in a folder of shards::

    <root>/features/<backbone slug>/<dataset>/<split>-<view>-<digest[:16]>/
        key.json                      the full key; checked on every open
        shard-<hash of paths>.pt      {"paths": [...], "features": (V, n, D) float16}
                                      (float32 for a shard beyond float16's ±65504)

Features are checked finite when encoded and when read: a NaN or infinity ends the cell as a
``failed`` record naming the image and the shard file, never as a number.

A request for some images computes only those not in any shard and writes them as a new
shard, so a whole test split is encoded once per backbone, and augmented train views only
for the images some few-shot subset uses. Concurrent writers never touch the same shard
file, and every write is atomic, so the cache can be shared by Slurm tasks and deleted at
any time. Stored features are the raw ``encode_image`` output (not L2-normalised): the
CLIP-Adapter residual and the CoOp linear probe act on it before normalisation.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from bench.backbone import Backbone, Preprocessing
from bench.errors import BenchError, NonFiniteError
from bench.fileio import atomic_torch_save, atomic_write_json, clean_stale_temps, sha256_bytes, sha256_json
from bench.images import ImageViews, ViewSpec
from bench.progress import bars_on

FEATURE_SCHEMA = 1
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageFeatureKey:
    """Every input that changes the bytes of an image-feature tensor."""

    backbone: str
    weights_sha256: str
    precision: str
    build: str  # Backbone.build_key: activation and open_clip version (the same weights built another way)
    dataset: str
    dataset_version: str
    split_sha256: str
    split: str
    preprocessing: Preprocessing
    view: ViewSpec
    feature: str = "encode_image"
    store_dtype: str = "float16"
    schema: int = FEATURE_SCHEMA

    @classmethod
    def of(cls, backbone: Backbone, **data) -> ImageFeatureKey:
        """The key of ``backbone``'s features; ``data``: dataset, dataset_version, split_sha256, split, view."""
        return cls(
            backbone=backbone.ref.id,
            weights_sha256=backbone.weights_sha256,
            precision=backbone.precision,
            build=backbone.build_key,
            preprocessing=backbone.preprocessing,
            **data,
        )

    def to_json(self) -> dict:
        return json.loads(json.dumps(asdict(self)))  # tuples -> lists, as stored in key.json

    def digest(self) -> str:
        return sha256_json(self.to_json())


@dataclass(frozen=True)
class ExtractOptions:
    """How features are computed: batch size (images per forward), DataLoader workers, progress bar,
    and how many batches go into one shard (what a killed extraction keeps)."""

    batch_size: int = 128
    num_workers: int = 0
    progress: bool = True
    shard_batches: int = 50


class _Store:
    """The shards of one key, loaded into memory: path -> (shard, row)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.rows: dict[str, tuple[int, int]] = {}
        self.shards: list[torch.Tensor] = []
        self.names: list[str] = []  # shard file of each entry of ``shards``
        self.loaded: set[str] = set()

    def refresh(self) -> None:
        for shard_file in sorted(self.folder.glob("shard-*.pt")):
            if shard_file.name not in self.loaded:
                shard = _load_cached(shard_file, _is_shard)
                if shard is not None:
                    self.add(shard_file.name, shard)

    def add(self, name: str, shard: dict) -> None:
        index = len(self.shards)
        self.shards.append(shard["features"])
        self.names.append(name)
        for row, path in enumerate(shard["paths"]):
            self.rows.setdefault(path, (index, row))
        self.loaded.add(name)

    def gather(self, paths: Sequence[str]) -> torch.Tensor:
        """(V, N, D) float32 for ``paths``, in order."""
        by_shard: dict[int, list[tuple[int, int]]] = {}
        for position, path in enumerate(paths):
            shard, row = self.rows[path]
            by_shard.setdefault(shard, []).append((position, row))
        first = self.shards[0]
        out = torch.empty(first.shape[0], len(paths), first.shape[2], dtype=torch.float32)
        for shard, pairs in by_shard.items():
            positions = torch.tensor([p for p, _ in pairs])
            rows = torch.tensor([r for _, r in pairs])
            out[:, positions] = self.shards[shard][:, rows].float()
            _check_finite(
                out[:, positions], [paths[p] for p, _ in pairs], str(self.folder / self.names[shard])
            )
        return out


class FeatureCache:
    """Computes and stores frozen-encoder features under ``root``.

    Args:
        root: cache folder (``<cache>/features`` and ``<cache>/text`` are created in it).
        memory_stores: how many keys' shards to keep loaded in this process.

    Attributes:
        images_encoded: images this instance has pushed through the image encoder (for tests and logs).
    """

    def __init__(self, root: Path, memory_stores: int = 16):
        self.root = Path(root)
        self._stores: OrderedDict[str, _Store] = OrderedDict()
        self._memory_stores = memory_stores
        self._text: dict[str, torch.Tensor] = {}
        self.images_encoded = 0

    def image_folder(self, key: ImageFeatureKey, backbone_slug: str) -> Path:
        return (
            self.root
            / "features"
            / backbone_slug
            / key.dataset
            / f"{key.split}-{key.view.name}-{key.digest()[:16]}"
        )

    def image_features(
        self,
        key: ImageFeatureKey,
        backbone: Backbone,
        image_root: Path,
        paths: Sequence[str],
        options: ExtractOptions = ExtractOptions(),
    ) -> torch.Tensor:
        """Features of ``paths`` (relative to ``image_root``) -> (V, N, D) float32, computing only what is missing."""
        self.ensure_image_features(key, backbone, image_root, paths, options)
        return self._open(key, backbone.ref.slug).gather(paths)

    def ensure_image_features(
        self,
        key: ImageFeatureKey,
        backbone: Backbone,
        image_root: Path,
        paths: Sequence[str],
        options: ExtractOptions = ExtractOptions(),
    ) -> int:
        """Encode and store the features of those ``paths`` not cached yet; returns how many.

        They are written as a shard every ``options.shard_batches`` batches, so a killed extraction
        resumes from what it wrote; a shard holds whole batches, so the rerun encodes the rest in the
        same batches as one uninterrupted pass would (bit-identical features). Nothing is returned to
        the caller: this fills the cache ahead of the cells that read it.
        """
        store = self._open(key, backbone.ref.slug)
        missing = list(dict.fromkeys(p for p in paths if p not in store.rows))
        if missing:
            store.refresh()  # another process may have written them meanwhile
            missing = [p for p in missing if p not in store.rows]
        if missing:
            self._encode(key, backbone, image_root, missing, options, store)
        return len(missing)

    def _open(self, key: ImageFeatureKey, slug: str) -> _Store:
        digest = key.digest()
        if digest in self._stores:
            self._stores.move_to_end(digest)
            return self._stores[digest]
        folder = self.image_folder(key, slug)
        key_file = folder / "key.json"
        if key_file.is_file():
            try:
                stored = json.loads(key_file.read_text())
            except (OSError, ValueError) as exc:
                raise BenchError(
                    f"unreadable feature cache key file ({exc})",
                    where=str(key_file),
                    fix=f"delete {folder}; it will be recomputed",
                ) from exc
            if stored != key.to_json():
                raise BenchError(
                    "feature cache key file does not match its folder",
                    where=str(key_file),
                    fix=f"delete {folder}; it will be recomputed",
                )
        else:
            atomic_write_json(key_file, key.to_json())
        clean_stale_temps(folder)  # shards whose writer was killed before its rename
        store = _Store(folder)
        store.refresh()
        self._stores[digest] = store
        while len(self._stores) > self._memory_stores:
            self._stores.popitem(last=False)
        return store

    def _encode(
        self,
        key: ImageFeatureKey,
        backbone: Backbone,
        image_root: Path,
        paths: list[str],
        options: ExtractOptions,
        store: _Store,
    ) -> None:
        """Encode ``paths`` in batches and write a shard every ``options.shard_batches`` batches and at the end."""
        dataset = ImageViews(image_root, paths, backbone.preprocessing, key.view)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=max(1, options.batch_size // key.view.n_views),
            num_workers=options.num_workers,
            pin_memory=backbone.device.type == "cuda",
            persistent_workers=False,
        )
        chunks, written = [], 0
        bar = tqdm(
            total=len(paths),
            desc=f"features {key.dataset}/{key.split} {key.view.name}",
            unit="img",
            disable=not bars_on(options.progress),
            leave=False,
        )
        with bar:
            for views, errors in loader:
                bad = [e for e in errors if e]
                if bad:
                    raise (
                        BenchError(bad[0])
                        if len(bad) == 1
                        else BenchError(f"{bad[0]} (and {len(bad) - 1} more in this batch)")
                    )
                batch, n_views = views.shape[0], views.shape[1]
                encoded = backbone.encode_images(views.flatten(0, 1)).cpu()
                chunks.append(encoded.view(batch, n_views, -1).transpose(0, 1))
                bar.update(batch)
                if len(chunks) >= options.shard_batches:
                    written += self._write_shard(
                        store, key, image_root, paths[written:], torch.cat(chunks, dim=1)
                    )
                    chunks = []
        if chunks:
            self._write_shard(store, key, image_root, paths[written:], torch.cat(chunks, dim=1))

    def _write_shard(
        self, store: _Store, key: ImageFeatureKey, image_root: Path, paths: list[str], features: torch.Tensor
    ) -> int:
        """Store features (V, n, D) of the first n of ``paths`` as one shard; returns n.

        Non-finite features are refused, naming the image. A shard whose values float16 cannot hold
        (beyond ±65504) is stored as float32 instead of turning them into infinities.
        """
        paths = paths[: features.shape[1]]
        _check_finite(features, [str(Path(image_root) / p) for p in paths], "the image encoder's output")
        stored = features.to(getattr(torch, key.store_dtype))
        if not torch.isfinite(stored).all():
            log.warning(
                "features beyond the range of %s in %s: this shard is stored as float32",
                key.store_dtype,
                store.folder,
            )
            stored = features.float()
        name = f"shard-{sha256_bytes(chr(10).join(paths).encode())[:16]}.pt"
        shard = {"paths": paths, "features": stored}
        atomic_torch_save(store.folder / name, shard)
        store.add(name, shard)
        self.images_encoded += len(paths)
        return len(paths)

    def text_features(
        self, backbone: Backbone, classnames: Sequence[str], templates: Sequence[str]
    ) -> torch.Tensor:
        """Frozen text features of every (template, class) prompt -> (T, C, D) float32, not normalised."""
        key = {
            "backbone": backbone.ref.id,
            "weights_sha256": backbone.weights_sha256,
            "precision": backbone.precision,
            "build": backbone.build_key,
            "classnames": list(classnames),
            "templates": list(templates),
            "schema": FEATURE_SCHEMA,
        }
        digest = sha256_json(key)
        if digest in self._text:
            return self._text[digest]
        path = self.root / "text" / backbone.ref.slug / f"{digest[:32]}.pt"
        expected = (len(templates), len(classnames))
        features = _load_cached(
            path, lambda t: isinstance(t, torch.Tensor) and tuple(t.shape[:2]) == expected
        )
        if features is None:
            features = encode_prompts(backbone, classnames, templates)
            atomic_torch_save(path, features)
        self._text[digest] = features
        return features


def _check_finite(features: torch.Tensor, paths: Sequence[str], source: str) -> None:
    """Raise :class:`NonFiniteError` naming the first image whose features (V, N, D) hold NaN or ±inf."""
    bad = (~torch.isfinite(features)).flatten(2).any(2).any(0).nonzero().flatten()
    if len(bad):
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise NonFiniteError(
            f"{source}: non-finite features for image {paths[int(bad[0])]}{more}; "
            "a cached shard with them can be deleted to recompute it"
        )


def _is_shard(shard) -> bool:
    return (
        isinstance(shard, dict)
        and isinstance(shard.get("paths"), list)
        and isinstance(shard.get("features"), torch.Tensor)
        and shard["features"].dim() == 3
        and shard["features"].shape[1] == len(shard["paths"])
    )


def _load_cached(path: Path, valid) -> object | None:
    """A cache file's content, or None when it is absent or damaged (a damaged file is removed with a
    warning, so it is recomputed: everything in the cache can be derived again)."""
    if not path.is_file():
        return None
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
        if valid(content):
            return content
        problem = "unexpected content"
    except Exception as exc:  # torch.load raises many types on a truncated or foreign file
        problem = f"{type(exc).__name__}: {exc}"
    log.warning("removing damaged cache file %s (%s); it will be recomputed", path, problem)
    path.unlink(missing_ok=True)
    return None


def encode_prompts(
    backbone: Backbone, classnames: Sequence[str], templates: Sequence[str], batch_size: int = 1024
) -> torch.Tensor:
    """Encode ``template.format(classname)`` for every pair -> (T, C, D) float32 on CPU."""
    prompts = [t.format(c) for t in templates for c in classnames]
    out = []
    for start in range(0, len(prompts), batch_size):
        tokens = backbone.tokenize(prompts[start : start + batch_size])
        out.append(backbone.encode_text(tokens).cpu())
    return torch.cat(out).view(len(templates), len(classnames), -1)
