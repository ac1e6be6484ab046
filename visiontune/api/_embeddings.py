"""``extract`` and ``similar``: the backbone as an embedding model."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import _runtime
from .._io import atomic_write
from ..backbones import Backbone, create_backbone
from ..config import TrainConfig
from ..data.folder import Sample, scan_folder
from ..data.loader import SkipLog, default_workers
from ..engine.loop import LoopConfig
from ..errors import VisiontuneError
from ..features.similar import top_k_similar
from ..prediction.predictor import expand_image_paths
from ._features import _features
from ._inference import load


def _backbone_from(run_or_backbone: str | Path, weights: str | None) -> Backbone:
    """A run folder's backbone (its fine-tuned weights) or a backbone by name."""
    if (Path(run_or_backbone) / "config.json").is_file():
        # Its spec says fine-tuned (``load_bundle``): the feature cache hashes the tensors.
        return load(run_or_backbone).model.backbone
    return create_backbone(str(run_or_backbone), weights=weights or "default")


def extract(
    data: str | Path,
    out: str | Path,
    *,
    backbone: str = "efficientnet_lite0",
    weights: str | None = None,
    cache: bool = True,
    cache_dir: str | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    progress: bool = False,
) -> dict:
    """Write every image's pooled features to ``out`` (``.npz``, or ``.parquet`` with pyarrow).

    Columns: ``path``, ``label`` (class index), ``class_name``, ``split``, ``embedding``. Uses and
    fills the feature cache. Returns a summary (rows, dimension, computed vs cached, skipped).
    """
    _runtime.tune_allocator()
    out = Path(out)
    if out.suffix not in (".npz", ".parquet"):
        raise VisiontuneError(f"--out must end in .npz or .parquet, got {out.name}")
    splits = scan_folder(data, val_fraction=0.0)
    model = _backbone_from(backbone, weights)
    config = TrainConfig(data=str(data), cache=cache, cache_dir=cache_dir)
    cfg = LoopConfig(epochs=1, progress=progress)
    skips = SkipLog()
    parts = {"train": splits.train, "val": splits.val, "test": splits.test}
    features = _features(
        model, parts, config, cfg, skips, default_workers() if workers is None else workers
    )
    rows = [(name, fs) for name, fs in features.items()]
    table = {
        "path": np.array([str(s.path) for _, fs in rows for s in fs.samples]),
        "label": np.concatenate([fs.labels.numpy() for _, fs in rows]),
        "split": np.array([name for name, fs in rows for _ in fs.samples]),
        "embedding": np.concatenate([fs.features.numpy() for _, fs in rows]).astype(np.float32),
    }
    table["class_name"] = np.array([splits.labels.names[i] for i in table["label"]])
    _write_table(out, table, splits.labels.names)
    return {
        "out": str(out),
        "rows": len(table["path"]),
        "dim": int(table["embedding"].shape[1]),
        "computed": sum(fs.computed for _, fs in rows),
        "from_cache": sum(fs.from_cache for _, fs in rows),
        "skipped": skips.to_dict()["skipped"],
    }


def _write_table(out: Path, table: dict, class_names) -> None:
    if out.suffix == ".npz":

        def write(tmp):
            with open(tmp, "wb") as fh:
                np.savez(fh, class_names=np.array(class_names), **table)

        atomic_write(out, write)
        return
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise VisiontuneError(
            "writing .parquet needs pyarrow (pip install pyarrow); or use .npz"
        ) from exc
    columns = {k: v for k, v in table.items() if k != "embedding"}
    columns["embedding"] = list(table["embedding"])
    atomic_write(out, lambda tmp: pq.write_table(pa.table(columns), tmp))


def similar(
    run_or_backbone: str | Path,
    query: str | Path,
    folder: str | Path,
    *,
    k: int = 5,
    weights: str | None = None,
    cache: bool = True,
    cache_dir: str | None = None,
    workers: int | None = None,
    progress: bool = False,
) -> list[dict]:
    """The ``k`` images under ``folder`` most similar to ``query`` (cosine on pooled features)."""
    _runtime.tune_allocator()
    if k < 1:
        raise VisiontuneError(f"--k must be at least 1, got {k}")
    query = Path(query)
    if not query.is_file():
        raise VisiontuneError(f"no such query image: {query}")
    gallery = [Sample(p, 0) for p in expand_image_paths([folder])]
    model = _backbone_from(run_or_backbone, weights)
    config = TrainConfig(data=str(folder), cache=cache, cache_dir=cache_dir)
    cfg = LoopConfig(epochs=1, progress=progress)
    skips = SkipLog()
    feats = _features(
        model,
        {"gallery": gallery, "query": [Sample(query, 0)]},
        config,
        cfg,
        skips,
        default_workers() if workers is None else workers,
    )
    if "query" not in feats or not len(feats["query"]):
        raise VisiontuneError(
            f"cannot decode the query image {query}: {skips.skipped.get(str(query), '')}"
        )
    scores, indices = top_k_similar(feats["query"].features[0], feats["gallery"].features, k)
    return [
        {"path": str(feats["gallery"].samples[i].path), "score": float(s)}
        for s, i in zip(scores[0].tolist(), indices[0].tolist(), strict=False)
    ]
