"""On-disk store of frozen-backbone features, so each image goes through the backbone once.

Layout, one folder per model key (everything that changes a feature but the image itself)::

    <root>/features/<model key>/
        manifest.json            format version, what the key stands for, feature width, the
                                 shards (rows, bytes, sha256) and entries image key -> [shard, row]
        shard-<n>.safetensors    float32 tensor "features" [rows, width]
        .lock                    serialises writers (and readers) across processes

Every file is written to a temporary name and renamed into place; a shard always lands before the
manifest that names it, so a kill at any moment leaves the previous manifest with complete shards
(plus, at worst, an orphan shard that the next write deletes). A shard whose size or sha256 does
not match its manifest, or a manifest that does not parse, is reported with a ``CacheWarning``,
deleted, and its images are recomputed: a damaged store is never read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .._io import atomic_write, atomic_write_text
from .._paths import default_cache_dir
from ..backbones import Backbone
from ..backbones.sources import file_sha256
from ..errors import CacheError, VisiontuneWarning

try:  # POSIX; elsewhere concurrent runs on one cache folder are not serialised
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = [
    "COMPACT_ABOVE",
    "FORMAT_VERSION",
    "CacheWarning",
    "FeatureCache",
    "cache_info",
    "clear_cache",
    "description_key",
    "image_key",
    "model_description",
    "model_key",
    "view_descriptor",
]

FORMAT_VERSION = 1  # bump when the layout or the meaning of a stored feature changes
COMPACT_ABOVE = 16  # shards; above this a store merges all live rows into one shard
MANIFEST = "manifest.json"
IDENTITIES = ("stat", "content")
_KEY_RE = re.compile(r"[0-9a-f]{16}")
_SHARD_RE = re.compile(r"shard-\d+\.safetensors")
_UNWRITABLE: set[str] = set()  # cache roots found read-only or full: bypassed from then on


class CacheWarning(VisiontuneWarning):
    """A damaged part of the feature cache was found and will be rebuilt."""


# ---------------------------------------------------------------------------------------- keys


def _pooling_of(backbone: Backbone) -> str:
    # timm keeps the pool as a module with ``pool_type`` (CNNs) or as a plain string (ViTs).
    pool = getattr(backbone.body, "global_pool", None)
    value = getattr(pool, "pool_type", pool)
    return str(value) if value is not None else "avg"


def _tensor_digest(backbone: Backbone) -> str:
    """sha256 over the weights themselves, for backbones without a hash of their weights file."""
    digest = hashlib.sha256()
    for name, tensor in sorted(backbone.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_description(
    backbone: Backbone,
    *,
    pooling: str | None = None,
    view: str | None = None,
    precision: str = "fp32",
) -> dict:
    """Everything but the image that decides a stored feature (what ``model_key`` hashes).

    Weights are named by ``backbone.weights.identity`` (the weights file's hash); without one
    (random init, hub weights, fine-tuned weights from a run's bundle) the tensors are hashed,
    because a source string such as "random initialisation" would make two different networks
    share a key. ``pooling`` defaults to the body's own pool type. ``precision``: the autocast
    dtype the features were computed in (``engine.precision``); fp32 adds nothing to the
    description, so fp32 caches written before precisions existed keep their keys.
    """
    weights = backbone.weights.identity or f"tensors:{_tensor_digest(backbone)}"
    description = {
        "format_version": FORMAT_VERSION,
        "backbone": backbone.name,
        "weights_sha256": weights,
        "preprocess": backbone.preprocess.to_dict(),
        "pooling": pooling or _pooling_of(backbone),
        "view": view,
    }
    if precision != "fp32":
        description["precision"] = precision
    return description


def description_key(description: dict) -> str:
    """The model key of a ``model_description`` (also one read back from a manifest)."""
    canonical = json.dumps(description, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def model_key(backbone: Backbone, *, pooling: str | None = None, view: str | None = None) -> str:
    """16 hex digits naming the cache folder for this backbone, preprocessing, pooling and view."""
    return description_key(model_description(backbone, pooling=pooling, view=view))


def view_descriptor(augment: str, seed: int) -> str:
    """The ``view`` of an augmented training view: which augmentation, drawn with which seed."""
    return f"train_transform(augment={augment});seed={int(seed)}"


def image_key(path: str | Path, *, identity: str = "stat") -> str:
    """What identifies one image file's content.

    ``stat`` (default): absolute path + size + mtime_ns, costing one ``stat`` call, so a cache hit
    on a large folder never reads the images. A rewrite that keeps size and mtime (rare: tools that
    restore mtimes) goes unnoticed; use ``content`` there: sha256 of the bytes, which reads every
    file but survives copies, moves and touched mtimes.
    """
    if identity == "content":
        return f"sha256:{file_sha256(Path(path))}"
    if identity != "stat":
        raise ValueError(f"identity must be one of {', '.join(IDENTITIES)}, got {identity!r}")
    resolved = Path(path).resolve()
    st = resolved.stat()
    return f"stat:{st.st_size}:{st.st_mtime_ns}:{resolved}"


def _still_current(key: str) -> bool:
    """False for a stat key whose file is gone or changed; content keys cannot tell, so stay."""
    if not key.startswith("stat:"):
        return True
    _, size, mtime, path = key.split(":", 3)
    try:
        st = os.stat(path)
    except OSError:
        return False
    return st.st_size == int(size) and st.st_mtime_ns == int(mtime)


# ---------------------------------------------------------------------------------------- store


class FeatureCache:
    """Features of one model key under ``root/features/<key>/`` (see the module docstring).

    ``description`` (from ``model_description``) is written to the manifest for ``cache info`` and
    lets ``extract_features`` check the cache belongs to the backbone it is given.
    """

    def __init__(
        self,
        root: str | Path | None,
        key: str,
        *,
        description: dict | None = None,
        identity: str = "stat",
    ):
        if not _KEY_RE.fullmatch(key):
            raise ValueError(f"not a feature-cache key: {key!r}")
        if identity not in IDENTITIES:
            raise ValueError(f"identity must be one of {', '.join(IDENTITIES)}, got {identity!r}")
        self.root = Path(root) if root is not None else default_cache_dir()
        self.key = key
        self.description = description
        self.identity = identity

    @classmethod
    def for_backbone(
        cls,
        root: str | Path | None,
        backbone: Backbone,
        *,
        pooling: str | None = None,
        view: str | None = None,
        precision: str = "fp32",
        identity: str = "stat",
    ) -> FeatureCache:
        """The cache of ``model_key(backbone, pooling=..., view=..., precision=...)``, keeping
        the description."""
        description = model_description(backbone, pooling=pooling, view=view, precision=precision)
        return cls(root, description_key(description), description=description, identity=identity)

    @property
    def folder(self) -> Path:
        return self.root / "features" / self.key

    def image_key(self, path: str | Path) -> str:
        return image_key(path, identity=self.identity)

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.folder)!r})"

    # -- public operations ------------------------------------------------------------------

    def lookup(self, image_keys: Iterable[str]) -> tuple[dict[str, torch.Tensor], list[str]]:
        """``(found: image key -> 1-D float32 feature, missing image keys in first-seen order)``."""
        wanted = list(dict.fromkeys(image_keys))
        if str(self.root) in _UNWRITABLE:
            return {}, wanted
        try:
            with self._locked():
                manifest = self._read_manifest()
                entries = manifest["entries"]
                shards = self._load_shards(
                    manifest, {entries[k][0] for k in wanted if k in entries}
                )
        except OSError as exc:  # a read-only or full cache folder: work without the cache
            self._give_up(exc)
            return {}, wanted
        found = {
            k: shards[entries[k][0]][entries[k][1]]
            for k in wanted
            if k in entries and entries[k][0] in shards
        }
        return found, [k for k in wanted if k not in found]

    def store(self, image_keys: Sequence[str], features: torch.Tensor) -> None:
        """Add rows (one per key; a repeated key keeps its last row) as a new shard."""
        keys = list(image_keys)
        if features.ndim != 2 or len(keys) != features.shape[0]:
            raise ValueError(
                f"need one feature row per key: {len(keys)} keys, features {tuple(features.shape)}"
            )
        if not keys:
            return
        last = {k: i for i, k in enumerate(keys)}
        rows = features.detach().float().cpu()[list(last.values())].contiguous()
        if str(self.root) in _UNWRITABLE:
            return
        try:
            self._store_rows(last, rows)
        except OSError as exc:  # ENOSPC, EROFS, EACCES: the cache is optional, go on without it
            self._give_up(exc)

    def _store_rows(self, last: dict[str, int], rows: torch.Tensor) -> None:
        with self._locked():
            manifest = self._read_manifest()
            self._remove_orphans(manifest)
            if manifest["dim"] not in (None, rows.shape[1]):
                raise ValueError(
                    f"{self.folder} holds {manifest['dim']}-wide features, got {rows.shape[1]}"
                )
            name = f"shard-{manifest['next_shard']}.safetensors"
            manifest["shards"][name] = self._write_shard(name, rows)
            manifest["next_shard"] += 1
            manifest["dim"] = rows.shape[1]
            manifest["entries"].update({k: [name, r] for r, k in enumerate(last)})
            self._write_manifest(manifest)
            if len(manifest["shards"]) > COMPACT_ABOVE:
                self._compact(manifest)

    def compact(self) -> int:
        """Merge every live row into one shard, dropping rows of changed or deleted files.

        Returns the number of entries kept. ``store`` does this by itself above ``COMPACT_ABOVE``
        shards.
        """
        with self._locked():
            manifest = self._read_manifest()
            self._remove_orphans(manifest)
            self._compact(manifest)
            return len(manifest["entries"])

    # -- manifest -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self):
        # One lock per key folder: shard numbering, orphan removal and the manifest's
        # read-modify-write are only safe when no other process is halfway through its own.
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "a+b") as handle:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                if fcntl is not None:
                    fcntl.flock(handle, fcntl.LOCK_UN)

    def _empty_manifest(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "key": self.key,
            "description": self.description,
            "dim": None,
            "next_shard": 0,
            "shards": {},
            "entries": {},
        }

    def _read_manifest(self) -> dict:
        path = self.folder / MANIFEST
        if not path.exists():
            return self._empty_manifest()
        try:
            manifest = json.loads(path.read_text())
            _validate_manifest(manifest, self.key)
        except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError included
            self._warn(f"unreadable manifest ({exc}); discarding the store and recomputing")
            stale = [p for p in self.folder.iterdir() if p.is_file() and p.name != ".lock"]
            self._remove_files(stale)
            return self._empty_manifest()
        if manifest.get("description") is None and self.description is not None:
            manifest["description"] = self.description
        return manifest

    def _write_manifest(self, manifest: dict) -> None:
        text = json.dumps(manifest, separators=(",", ":")) + "\n"
        atomic_write_text(self.folder / MANIFEST, text)

    # -- shards -------------------------------------------------------------------------------

    def _write_shard(self, name: str, rows: torch.Tensor) -> dict:
        info = {"rows": int(rows.shape[0])}

        def write(tmp: str) -> None:
            save_file({"features": rows}, tmp)
            info.update(bytes=os.path.getsize(tmp), sha256=file_sha256(Path(tmp)))

        atomic_write(self.folder / name, write)
        return info

    def _read_shard(self, name: str, info: dict, dim: int) -> torch.Tensor | str:
        """The shard's features, or why it cannot be trusted."""
        path = self.folder / name
        try:
            if path.stat().st_size != info["bytes"]:
                return f"{path.stat().st_size} bytes, manifest says {info['bytes']}"
            if file_sha256(path) != info["sha256"]:
                return "sha256 differs from the manifest"
            tensor = load_file(str(path))["features"]
        except Exception as exc:  # noqa: BLE001 - missing, unreadable, unparsable: all "damaged"
            return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if tensor.dtype != torch.float32 or tuple(tensor.shape) != (info["rows"], dim):
            expected = f"float32 ({info['rows']}, {dim})"
            return f"holds {tensor.dtype} {tuple(tensor.shape)}, expected {expected}"
        return tensor

    def _load_shards(self, manifest: dict, names: set[str]) -> dict[str, torch.Tensor]:
        """Verified shards by name; damaged ones are deleted and their entries forgotten."""
        loaded, damaged = {}, []
        for name in sorted(names):
            result = self._read_shard(name, manifest["shards"][name], manifest["dim"])
            if isinstance(result, str):
                self._warn(f"damaged {name} ({result}); its images will be recomputed")
                damaged.append(name)
            else:
                loaded[name] = result
        if damaged:
            self._drop_shards(manifest, damaged)
            self._write_manifest(manifest)
        return loaded

    def _drop_shards(self, manifest: dict, names: Iterable[str]) -> None:
        names = set(names)
        for name in names:
            manifest["shards"].pop(name, None)
        manifest["entries"] = {k: e for k, e in manifest["entries"].items() if e[0] not in names}
        self._remove_files(self.folder / n for n in names)

    def _compact(self, manifest: dict) -> None:
        live = {k: e for k, e in manifest["entries"].items() if _still_current(k)}
        shards = self._load_shards(manifest, {e[0] for e in live.values()})
        live = {k: e for k, e in live.items() if e[0] in shards}
        old = list(manifest["shards"])
        manifest["shards"], manifest["entries"] = {}, {}
        if live:
            rows = torch.stack([shards[shard][row] for shard, row in live.values()])
            name = f"shard-{manifest['next_shard']}.safetensors"
            manifest["shards"][name] = self._write_shard(name, rows)
            manifest["next_shard"] += 1
            manifest["entries"] = {k: [name, r] for r, k in enumerate(live)}
        self._write_manifest(manifest)  # before deleting, so the manifest never names a gone shard
        self._remove_files(self.folder / n for n in old)

    def _remove_orphans(self, manifest: dict) -> None:
        """Shards no manifest names and temporary files: leftovers of a killed write."""
        self._remove_files(
            p
            for p in self.folder.iterdir()
            if (_SHARD_RE.fullmatch(p.name) and p.name not in manifest["shards"])
            or (p.name.startswith(".") and p.name.endswith(".tmp"))
        )

    @staticmethod
    def _remove_files(paths: Iterable[Path]) -> None:
        for path in list(paths):
            path.unlink(missing_ok=True)

    def _give_up(self, exc: OSError) -> None:
        """Warn once (per cache root and process) that the cache cannot be used; then bypass it."""
        if str(self.root) not in _UNWRITABLE:
            _UNWRITABLE.add(str(self.root))
            where = f": {exc.filename}" if exc.filename else ""
            self._warn(f"cannot be written ({exc.strerror or exc}{where}); going on without it")

    def _warn(self, message: str) -> None:
        warnings.warn(f"feature cache {self.folder}: {message}", CacheWarning, stacklevel=4)


def _validate_manifest(manifest, key: str) -> None:
    """Raise ValueError unless ``manifest`` has this format's shape: parsable is not enough."""
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"not a format-{FORMAT_VERSION} manifest")
    if manifest.get("key") != key:
        raise ValueError(f"manifest is for key {manifest.get('key')!r}")
    shards, entries = manifest.get("shards"), manifest.get("entries")
    if not isinstance(shards, dict) or not isinstance(entries, dict):
        raise ValueError("shards or entries missing")  # noqa: TRY004 - one error type
    if not isinstance(manifest.get("next_shard"), int) or not all(
        isinstance(i, dict) and {"rows", "bytes", "sha256"} <= set(i) for i in shards.values()
    ):
        raise ValueError("malformed shard table")
    for entry in entries.values():
        if not (
            isinstance(entry, list)
            and len(entry) == 2
            and entry[0] in shards
            and isinstance(entry[1], int)
            and 0 <= entry[1] < shards[entry[0]]["rows"]
        ):
            raise ValueError(f"entry {entry!r} points outside the shards")
    if shards and not isinstance(manifest.get("dim"), int):
        raise ValueError("feature width missing")


# ---------------------------------------------------------------------------------------- CLI


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _folder_info(folder: Path) -> dict:
    info = {
        "key": folder.name,
        "path": str(folder),
        "bytes": _folder_bytes(folder),
        "description": None,
        "entries": 0,
        "shards": 0,
        "dim": None,
        "status": "ok",
    }
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        _validate_manifest(manifest, folder.name)
    except (OSError, ValueError) as exc:
        return {**info, "status": f"unreadable manifest ({exc}); rebuilt on next use"}
    problems = {
        name: why
        for name, shard in manifest["shards"].items()
        if (why := _shard_problem(folder / name, shard, manifest["dim"])) is not None
    }
    status = "ok"
    if problems:
        listed = ", ".join(f"{name} ({why})" for name, why in sorted(problems.items()))
        status = f"corrupt: {listed}; rebuilt on next use"
    return {
        **info,
        "description": manifest.get("description"),
        "entries": len(manifest["entries"]),
        "shards": len(manifest["shards"]),
        "dim": manifest["dim"],
        "status": status,
    }


def _shard_problem(path: Path, shard: dict, dim: int | None) -> str | None:
    """What is wrong with a shard, judged cheaply from its size and safetensors header (no
    hashing: a flipped byte inside the data shows only at use, where the sha256 is checked)."""
    try:
        size = path.stat().st_size
        if size != shard["bytes"]:
            return f"{size} bytes, manifest says {shard['bytes']}"
        with open(path, "rb") as fh:
            length = int.from_bytes(fh.read(8), "little")
            if not 2 <= length <= size - 8:
                return "not a safetensors file (bad header length)"
            header = json.loads(fh.read(length))
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError included
        return f"unreadable header: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    entry = header.get("features") if isinstance(header, dict) else None
    expected = {
        "dtype": "F32",
        "shape": [shard["rows"], dim],
        "data_offsets": [0, shard["rows"] * (dim or 0) * 4],
    }
    if entry != expected or 8 + length + expected["data_offsets"][1] != size:
        return "header does not describe the manifest's float32 rows"
    return None


def cache_info(root: str | Path | None = None) -> list[dict]:
    """One dict per model key: key, path, description, entries, shards, dim, bytes, status.

    Reads manifests and each shard's size and header (no hashing), so it is quick and never
    changes the cache; a shard that fails is reported ``corrupt`` by name.
    """
    base = _features_base(root)
    if not base.is_dir():
        return []
    folders = [f for f in sorted(base.iterdir()) if f.is_dir() and _KEY_RE.fullmatch(f.name)]
    return [_folder_info(f) for f in folders]


def _features_base(root: str | Path | None) -> Path:
    """``<root>/features``; ``CacheError`` when ``root`` (or that folder) exists as a file."""
    top = Path(root) if root is not None else default_cache_dir()
    for folder in (top, top / "features"):
        if folder.exists() and not folder.is_dir():
            raise CacheError(f"cache folder {folder} is a file, not a folder")
    return top / "features"


def clear_cache(root: str | Path | None = None, key: str | None = None) -> int:
    """Delete one model key's features, or all stored features; returns the bytes freed."""
    base = _features_base(root)
    if key is not None and not _KEY_RE.fullmatch(key):
        raise CacheError(f"not a feature-cache key: {key!r}")
    target = base / key if key is not None else base
    if not target.is_dir():
        return 0
    freed = _folder_bytes(target)
    shutil.rmtree(target)
    return freed
