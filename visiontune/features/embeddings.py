"""The backbone as an embedding model: every image's features to a file, and similar images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import _runtime
from .._io import atomic_write
from ..backbones import Backbone, create_backbone
from ..data.dataset import scan_data
from ..data.folder import Sample, expand_image_paths
from ..data.loader import SkipLog, default_workers
from ..data.manifest import ManifestColumns
from ..engine.loop import Runtime
from ..engine.precision import resolve_precision
from ..errors import DataError, VisiontuneError, WeightsNotFoundError
from ..formats.bundle import load_bundle
from .cache import FeatureCache
from .embedding_file import SUFFIXES, embedding_writer
from .similar import top_k_similar
from .splits import extract_parts, iter_parts

__all__ = [
    "EmbeddingModel",
    "backbone_from",
    "embedding_model",
    "similar_images",
    "write_embeddings",
]


def backbone_from(run_or_backbone: str | Path, weights: str | None) -> Backbone:
    """A run folder's backbone (its fine-tuned weights) or a backbone by name."""
    if (Path(run_or_backbone) / "config.json").is_file():
        model, _, _ = load_bundle(run_or_backbone)
        # Its spec says fine-tuned (``load_bundle``): the feature cache hashes the tensors.
        return model.backbone
    try:
        return create_backbone(str(run_or_backbone), weights=weights or "default")
    except WeightsNotFoundError:
        if Path(run_or_backbone).is_dir():  # e.g. the data folder given where the run goes
            raise VisiontuneError(
                f"{run_or_backbone} is a folder but not a run folder (it has no config.json): "
                "give a run folder written by `visiontune train`, or a backbone name"
            ) from None
        raise


@dataclass(frozen=True)
class EmbeddingModel:
    """A frozen backbone ready to extract outside training: where it runs (``runtime``, with
    its precision), the feature cache it reads and fills, and the loader processes."""

    backbone: Backbone
    cache: FeatureCache | None
    workers: int
    runtime: Runtime

    def options(self) -> dict:
        """The keywords the extraction helpers (``iter_parts``, ``audit_folder``, ...) take."""
        return {"runtime": self.runtime, "cache": self.cache, "workers": self.workers}


def embedding_model(
    run_or_backbone: str | Path,
    weights: str | None,
    cache: bool,
    cache_dir: str | None,
    workers: int | None,
    *,
    precision: str = "auto",
    progress: bool = False,
    device: str = "auto",
) -> EmbeddingModel:
    """The backbone, where and in which precision it runs, its feature cache (unless ``cache``
    is false) and the loader processes. ``precision`` is resolved as ``train --precision``
    resolves it, and the cache is keyed by the result: ``extract``, ``similar`` and ``audit``
    with the defaults fill the very cache a default ``train`` then reads (they used to extract
    in fp32 where ``train`` extracts in bf16, so a warmed cache was never read)."""
    _runtime.tune_allocator()
    backbone = backbone_from(run_or_backbone, weights)
    where = _runtime.resolve_device(device)
    chosen = resolve_precision(precision, where, cache_dir=cache_dir, keep=cache)
    store = (
        FeatureCache.for_backbone(cache_dir, backbone, precision=chosen.inference)
        if cache
        else None
    )
    runtime = Runtime.on(where, progress=progress, precision=chosen)
    return EmbeddingModel(
        backbone, store, default_workers() if workers is None else workers, runtime
    )


def write_embeddings(
    data: str | Path,
    out: str | Path,
    model: EmbeddingModel,
    *,
    batch_size: int,
    columns: ManifestColumns | None = None,
) -> dict:
    """Every image's pooled features under ``data`` (a folder, or a manifest read by
    ``columns``) to ``out`` (``.npz`` or ``.parquet``), read from and stored in ``model``'s
    cache. Returns a summary (rows, dimension, computed vs cached, skipped files)."""
    out = Path(out)
    if out.suffix not in SUFFIXES:
        raise VisiontuneError(f"--out must end in .npz or .parquet, got {out.name}")
    # No classifier: one class is fine.
    splits = scan_data(data, columns, val_fraction=0.0, min_classes=1)
    skips = SkipLog()
    parts = {"train": splits.train, "val": splits.val, "test": splits.test}
    counts = {"rows": 0, "dim": 0, "computed": 0, "from_cache": 0}

    def write(tmp: str) -> None:
        # Each chunk goes to the file as it comes: memory stays one chunk, not every image.
        with embedding_writer(tmp, splits.labels.names, suffix=out.suffix) as writer:
            for name, chunk in iter_parts(
                model.backbone, parts, skips=skips, batch_size=batch_size, **model.options()
            ):
                writer.add(name, chunk)
                counts["computed"] += chunk.computed
                counts["from_cache"] += chunk.from_cache
            if not writer.rows:
                skipped = len(skips.skipped)
                raise DataError(f"{data}: no decodable images to extract ({skipped} skipped)")
        counts.update(rows=writer.rows, dim=int(writer.dim))

    atomic_write(out, write)  # the callback fills ``counts``: atomic_write returns nothing
    return {"out": str(out), **counts, "skipped": skips.to_dict()["skipped"]}


def similar_images(
    model: EmbeddingModel, query: str | Path, folder: str | Path, *, k: int
) -> list[dict]:
    """The ``k`` images under ``folder`` most similar to ``query`` (cosine on pooled features)."""
    if k < 1:
        raise VisiontuneError(f"--k must be at least 1, got {k}")
    query = Path(query)
    if not query.is_file():
        raise VisiontuneError(f"no such query image: {query}")
    gallery = [Sample(p, 0) for p in expand_image_paths([folder])]
    skips = SkipLog()
    parts = {"gallery": gallery, "query": [Sample(query, 0)]}
    feats = extract_parts(model.backbone, parts, skips=skips, **model.options())
    if "query" not in feats or not len(feats["query"]):
        reason = skips.skipped.get(str(query), "")
        raise VisiontuneError(f"cannot decode the query image {query}: {reason}")
    if "gallery" not in feats or not len(feats["gallery"]):
        raise DataError(f"{folder}: no decodable images to search ({len(gallery)} skipped)")
    scores, indices = top_k_similar(feats["query"].features[0], feats["gallery"].features, k)
    return [
        {"path": str(feats["gallery"].samples[i].path), "score": float(s)}
        for s, i in zip(scores[0].tolist(), indices[0].tolist(), strict=False)
    ]
