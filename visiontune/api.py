"""Workflows composed from the layers: ``fit``, ``load``, ``evaluate``, ``predict``.

>>> import visiontune
>>> result = visiontune.fit("photos/", strategy="head", epochs=20)    # doctest: +SKIP
>>> model = visiontune.load(result.run_dir)                            # doctest: +SKIP
>>> model.predict(["new.jpg"], top_k=2)                                # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import json
import random
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from . import _runtime
from ._console import console, stage_table
from ._io import atomic_write, atomic_write_text
from .backbones import Backbone, Classifier, Head, create_backbone
from .config import TrainConfig
from .data.augment import (
    PCAStats,
    build_batch_transform,
    compute_pca_stats,
    describe_view,
    parse_augment,
)
from .data.folder import DatasetSplits, Sample, scan_folder
from .data.images import header_problem
from .data.loader import ImageDataset, SkipLog, default_workers, make_loader
from .data.preview import render_preview
from .data.transforms import decode_size, eval_transform, train_transform
from .engine.loop import LoopConfig, evaluate_epoch
from .engine.loop import fit as fit_loop
from .engine.optim import build_optimizer
from .errors import VisiontuneError
from .evaluation.metrics import classification_metrics
from .export.bundle import save_bundle
from .features.cache import FeatureCache, view_descriptor
from .features.extract import FeatureDataset, FeatureSet, extract_features
from .features.probe import fit_linear_probe
from .features.similar import top_k_similar
from .features.similarity import measure
from .prediction.predictor import TrainedModel, expand_image_paths
from .specs import PreprocessSpec
from .strategies import Advice, decide, make_strategy

__all__ = ["FitResult", "advise", "augment_preview", "evaluate", "extract", "fit", "load", "predict",
           "similar"]


@dataclass
class FitResult:
    run_dir: Path
    model: TrainedModel
    history: list[dict]
    metrics: dict  # "val", "test" (if DATA has a test split), "skipped", "timing"


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _new_run_dir(config: TrainConfig) -> Path:
    if config.out:
        return Path(config.out).expanduser()
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{stamp}-{config.backbone}-{config.strategy}"
    run_dir, n = base, 1
    while run_dir.exists():
        n += 1
        run_dir = base.with_name(f"{base.name}-{n}")
    return run_dir


def _history_csv(history: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue()


def _metrics_from_logits(logits: torch.Tensor, labels: torch.Tensor, names) -> dict:
    probs = torch.softmax(logits, 1).numpy() if len(labels) else None
    preds = logits.argmax(1).numpy() if len(labels) else []
    return classification_metrics(labels.numpy(), preds, names, probs)


def _features(backbone, parts: dict, config, cfg, skips, workers) -> dict:
    """Eval-view features of each named split, read from the on-disk cache where present."""
    cache = FeatureCache.for_backbone(config.cache_dir, backbone) if config.cache else None
    return {name: extract_features(backbone, samples, cfg=cfg, batch_size=64, workers=workers,
                                   skips=skips, desc=f"features ({name})", cache=cache)
            for name, samples in parts.items() if samples}


def _augmented_views(backbone, samples, config, cfg, skips, workers, pca=None) -> list[FeatureSet]:
    """``--cache-views K``: K augmented views per training image, each cached under its seed."""
    views = []
    view = describe_view(config.augment, pca)
    for seed in range(config.cache_views):
        cache = (FeatureCache.for_backbone(config.cache_dir, backbone, view=view_descriptor(view, seed))
                 if config.cache else None)
        views.append(extract_features(backbone, samples, cfg=cfg, batch_size=64, workers=workers, skips=skips,
                                      desc=f"augmented view {seed + 1}/{config.cache_views}", cache=cache,
                                      view_seed=seed, augment=config.augment, pca=pca))
    return views


def _concat(sets: list[FeatureSet]) -> FeatureSet:
    return FeatureSet(torch.cat([s.features for s in sets]), torch.cat([s.labels for s in sets]),
                      [x for s in sets for x in s.samples])


def _train_head_on_features(model, splits, config, cfg, skips, workers, groups,
                            pca=None) -> tuple[list, dict, dict]:
    """Extract features once (the backbone is frozen), then train the head on them."""
    features = _features(model.backbone, {"train": splits.train, "val": splits.val, "test": splits.test},
                         config, cfg, skips, workers)
    extraction = {name: {"computed": fs.computed, "from_cache": fs.from_cache} for name, fs in features.items()}
    if config.cache_views:
        views = _augmented_views(model.backbone, splits.train, config, cfg, skips, workers, pca)
        extraction["train_views"] = {"computed": sum(v.computed for v in views),
                                     "from_cache": sum(v.from_cache for v in views)}
        features["train"] = _concat([features["train"], *views])
    if config.head_solver == "lbfgs":
        history = fit_linear_probe(model.head, features["train"], features.get("val", _empty(features))).history
    else:
        history = _fit_head_minibatch(model.head, features, config, cfg, groups)
    test = None
    if "test" in features:
        logits = _head_logits(model.head, features["test"])
        test = _metrics_from_logits(logits, features["test"].labels, splits.labels.names)
    return history, test, extraction


def _head_logits(head, features: FeatureSet) -> torch.Tensor:
    head.eval()
    with torch.no_grad():
        return head(features.features)


def _empty(features: dict) -> FeatureSet:
    dim = features["train"].features.shape[1]
    return FeatureSet(torch.empty(0, dim), torch.empty(0, dtype=torch.long), [])


def _fit_head_minibatch(head, features, config, cfg, groups) -> list[dict]:
    """AdamW on mini-batches of cached features, with the same loop and early stopping as images."""
    head_groups = [g for g in groups if g["name"].startswith("head")]
    optimizer = build_optimizer(head_groups, weight_decay=config.weight_decay)
    train = make_loader(FeatureDataset(features["train"]), batch_size=config.batch_size, shuffle=True,
                        workers=0, seed=config.seed)
    val = make_loader(FeatureDataset(features.get("val", _empty(features))), batch_size=256,
                      shuffle=False, workers=0)
    head_cfg = LoopConfig(**{**cfg.__dict__, "channels_last": False, "desc": "train head"})
    return fit_loop(head, train, val, optimizer, cfg=head_cfg, set_train_mode=lambda m: m.train())


def _train_end_to_end(model, strategy, splits, config, cfg, skips, workers, groups,
                      pca=None) -> tuple[list, dict]:
    spec = model.backbone.preprocess
    size = decode_size(spec)
    train_ds = ImageDataset(splits.train, train_transform(spec, augment=config.augment, pca=pca),
                            decode_size=size)
    cfg = replace(cfg, batch_transform=build_batch_transform(config.augment, num_classes=len(splits.labels)))
    val_ds = ImageDataset(splits.val, eval_transform(spec), decode_size=size)
    pin = cfg.device.type == "cuda"
    train_loader = make_loader(train_ds, batch_size=config.batch_size, shuffle=True, workers=workers,
                               seed=config.seed, drop_last=len(train_ds) > config.batch_size, pin_memory=pin)
    val_loader = make_loader(val_ds, batch_size=config.batch_size * 2, shuffle=False, workers=workers,
                             pin_memory=pin)
    warm_start = (_warm_start_head(model, splits, config, cfg, skips, workers)
                  if config.warm_start_head or strategy.warm_starts_head else None)
    optimizer = build_optimizer(groups, weight_decay=config.weight_decay)
    model.to(cfg.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    history = fit_loop(model, _Recorded(train_loader, train_ds, skips), _Recorded(val_loader, val_ds, skips),
                       optimizer, cfg=cfg, set_train_mode=strategy.set_train_mode,
                       on_epoch_start=strategy.on_epoch_start)
    test = None
    if splits.test:
        test_ds = ImageDataset(splits.test, eval_transform(spec), decode_size=size)
        test_loader = make_loader(test_ds, batch_size=config.batch_size * 2, shuffle=False, workers=workers)
        out = evaluate_epoch(model, _Recorded(test_loader, test_ds, skips), cfg=cfg, desc="test")
        test = _metrics_from_logits(out.logits, out.labels, splits.labels.names)
    return history, test, warm_start


def _warm_start_head(model, splits, config, cfg, skips, workers) -> dict:
    """Fit the new head as a linear probe on the pretrained features before fine-tuning.

    Linear-probe-then-fine-tune (Kumar et al., ICLR 2022): starting from a random head, the first
    steps send large, meaningless gradients into the pretrained layers; starting from a fitted one
    they refine features instead of distorting them. Costs one pass over train and val.
    """
    features = _features(model.backbone, {"train": splits.train, "val": splits.val}, config, cfg, skips, workers)
    probe = fit_linear_probe(model.head, features["train"], features.get("val", _empty(features)))
    best = next(r for r in probe.history if r["best"])
    return {"C": probe.C, "val_acc": best["val_acc"], "val_loss": best["val_loss"]}


class _Recorded:
    """A loader whose batches report their skipped files to a ``SkipLog`` as they pass."""

    def __init__(self, loader, dataset: ImageDataset, skips: SkipLog):
        self.loader, self.dataset, self.skips = loader, dataset, skips

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            self.skips.record(batch, self.dataset.samples)
            yield batch


def _exclude_non_images(splits: DatasetSplits, skips: SkipLog) -> None:
    """Drop files whose header is not an image's (zero bytes, random bytes...) before training,
    so every one is reported, not only those a shuffled epoch happens to reach."""
    for part in ("train", "val", "test"):
        kept = []
        for sample in getattr(splits, part):
            problem = header_problem(sample.path)
            if problem:
                skips.skipped[str(sample.path)] = problem
            else:
                kept.append(sample)
        setattr(splits, part, kept)


def _print_plan(splits: DatasetSplits, model: Classifier, strategy, config: TrainConfig, device) -> None:
    s = splits.summary()
    console.print(
        f"[bold]data[/] {s['root']} ({s['layout']} layout): {len(splits.labels)} classes, "
        f"train {s['train']}, val {s['val']} ({s['val_source']}), test {s['test']}"
    )
    console.print(f"[bold]backbone[/] {model.backbone.name} from {model.backbone.source}; "
                  f"[bold]strategy[/] {strategy.name}; [bold]device[/] {device}")
    rows = strategy.describe(model, lr=config.resolved("lr"), backbone_lr_mult=config.backbone_lr_mult,
                             epochs=config.resolved("epochs"))
    console.print(stage_table(rows, title="parameter groups"))


def fit(data: str | Path, *, config: TrainConfig | None = None, **options) -> FitResult:
    """Fine-tune a pretrained backbone on ``data`` (a folder of class folders, optionally inside
    train/val/test split folders) and save the run. Options are ``TrainConfig``'s fields."""
    config = config or TrainConfig(data=str(data), **options)
    started = time.perf_counter()
    _runtime.tune_allocator()
    _runtime.configure_threads()
    _seed_everything(config.seed)
    device = _runtime.resolve_device(config.device)
    # Everything that can fail on the user's input happens before anything is written.
    splits = scan_folder(config.data, val_fraction=config.val_fraction, seed=config.seed)
    backbone = create_backbone(config.backbone, weights=config.weights or "default")
    advice = None
    if config.strategy == "auto":  # measure the data, then train what the advisor chose
        advice = _advise(splits, backbone, config, device)
        config = _apply_advice(config, advice)
    model = Classifier(backbone, Head(backbone.num_features, len(splits.labels), dropout=config.dropout))
    strategy = make_strategy(config.strategy, unfreeze=config.unfreeze)
    groups = strategy.setup(model, lr=config.resolved("lr"), backbone_lr_mult=config.backbone_lr_mult,
                            weight_decay=config.weight_decay)
    if config.progress:
        _print_plan(splits, model, strategy, config, device)
    run_dir = _new_run_dir(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = LoopConfig(epochs=config.resolved("epochs"), warmup_epochs=config.warmup_epochs,
                     label_smoothing=config.label_smoothing, patience=config.resolved("patience"),
                     device=device, channels_last=device.type == "cpu", progress=config.progress)
    workers = default_workers() if config.workers is None else config.workers
    skips = SkipLog()
    _exclude_non_images(splits, skips)
    pca, augment_record = _augmentation(config, splits, strategy, model.backbone.preprocess)
    if strategy.uses_frozen_backbone:
        history, test, extraction = _train_head_on_features(model, splits, config, cfg, skips, workers, groups,
                                                            pca)
        warm_start = None
    else:
        history, test, warm_start = _train_end_to_end(model, strategy, splits, config, cfg, skips, workers,
                                                      groups, pca)
        extraction = None
    model = model.to("cpu").to(memory_format=torch.contiguous_format).eval()
    best = next((r for r in history if r.get("best")), history[-1])
    chosen = {"C": best["C"]} if "C" in best else {"best_epoch": best["epoch"]}
    metrics = {"val": {"accuracy": best["val_acc"], "loss": best["val_loss"], **chosen},
               "test": test, "head_warm_start": warm_start, "feature_extraction": extraction,
               **({"advice": advice} if advice else {}), **skips.to_dict(),
               "timing": {"total_s": time.perf_counter() - started, "device": str(device)}}
    save_bundle(run_dir, model, labels=splits.labels, extra={
        "strategy": strategy.state_dict(), "training": config.to_dict(), "augment": augment_record,
        "data": splits.summary(), **({"advice": advice} if advice else {})})
    atomic_write_text(run_dir / "history.json", json.dumps(history, indent=2) + "\n")
    atomic_write_text(run_dir / "history.csv", _history_csv(history))
    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    trained = TrainedModel(model, splits.labels, config=None, run_dir=run_dir)
    return FitResult(run_dir, trained, history, metrics)


def _advise(splits: DatasetSplits, backbone: Backbone, config: TrainConfig, device) -> dict:
    """``--strategy auto``: measure train + val, decide, print the advice; the record for the run."""
    cfg = LoopConfig(epochs=1, device=device, channels_last=device.type == "cpu", progress=config.progress)
    cache = FeatureCache.for_backbone(config.cache_dir, backbone) if config.cache else None
    workers = default_workers() if config.workers is None else config.workers
    advice = decide(measure(splits, backbone, cfg=cfg, cache=cache, workers=workers, seed=config.seed))
    if config.progress:
        console.print(f"[bold]advice[/] {advice.quadrant} -> strategy {advice.strategy}: {advice.reason}")
    return advice.to_dict()


def _apply_advice(config: TrainConfig, advice: dict) -> TrainConfig:
    """The chosen strategy, with its settings where the option was left at its default.

    An option given explicitly with its default value cannot be told apart and is replaced too.
    """
    defaults = TrainConfig(data=config.data)
    applied = {k: v for k, v in advice["settings"].items()
               if getattr(config, k) == getattr(defaults, k)}
    advice["applied"] = applied
    return replace(config, strategy=advice["strategy"], **applied)


def advise(data: str | Path, *, backbone: str = "efficientnet_lite0", weights: str | None = None,
           cache: bool = True, cache_dir: str | None = None, seed: int = 0, workers: int | None = None,
           device: str = "auto", progress: bool = False) -> Advice:
    """Measure ``data`` against ``backbone`` and choose a fine-tuning strategy (``--strategy auto``).

    Looks at the train and val splits only (never test): their size and class balance, how well a
    cross-validated linear probe separates the classes on frozen features (cached) and how far the
    images' BatchNorm statistics sit from the pretraining data's. See ``visiontune.strategies.advisor``.

    >>> advice = visiontune.api.advise("photos/")        # doctest: +SKIP
    >>> advice.strategy, advice.quadrant                  # doctest: +SKIP
    ('head', 'small+similar')
    """
    _runtime.tune_allocator()
    _runtime.configure_threads()
    splits = scan_folder(data, val_fraction=0.0, seed=seed)
    model = create_backbone(backbone, weights=weights or "default")
    dev = _runtime.resolve_device(device)
    cfg = LoopConfig(epochs=1, device=dev, channels_last=dev.type == "cpu", progress=progress)
    store = FeatureCache.for_backbone(cache_dir, model) if cache else None
    return decide(measure(splits, model, cfg=cfg, cache=store, seed=seed,
                          workers=default_workers() if workers is None else workers))


def _augmentation(config, splits, strategy, preprocess) -> tuple[PCAStats | None, dict]:
    """``--augment`` for this run: the training pixels' principal components when ``pca-color`` is
    used (computed once, before training), and the exact pipeline, recorded in config.json."""
    augment = parse_augment(config.augment)
    if not strategy.uses_frozen_backbone:
        used_for = "training images"
    elif config.cache_views:
        used_for = f"{config.cache_views} cached view(s) of each training image"
    else:
        return None, {"text": str(augment), "ops": augment.text, "used_for": None, "pca": None}
    pca = compute_pca_stats(splits.train, seed=config.seed) if augment.uses_pca else None
    pipeline = train_transform(preprocess, augment=augment, pca=pca).transforms
    mixer = build_batch_transform(augment, num_classes=len(splits.labels))
    return pca, {"text": str(augment), "ops": augment.text, "used_for": used_for,
                 "pipeline": [repr(t) for t in pipeline], "batch": repr(mixer) if mixer else None,
                 "pca": pca.to_dict() if pca else None}


def augment_preview(data: str | Path, out: str | Path, *, augment: str = "standard", rows: int = 4,
                    cols: int = 6, seed: int = 0, size: int = 224, tile: int | None = None) -> dict:
    """Write a PNG grid of what training sees: ``rows`` training images of ``data`` (classes in
    turn), each as its eval view and then ``cols`` seeded augmented draws at ``size`` pixels."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise VisiontuneError(f"--out must end in .png, got {out.name}")
    for name, value, low in (("--rows", rows, 1), ("--cols", cols, 1), ("--size", size, 8), ("--tile", tile, 8)):
        if value is not None and value < low:
            raise VisiontuneError(f"{name} must be at least {low}, got {value}")
    try:
        spec = parse_augment(augment)
    except ValueError as exc:
        raise VisiontuneError(f"--augment: {exc}") from None
    splits = scan_folder(data, val_fraction=0.0)
    pca = compute_pca_stats(splits.train, seed=seed) if spec.uses_pca else None
    preprocess = PreprocessSpec(size=size)
    try:
        grid, shown = render_preview(splits.train, splits.labels.names, preprocess, spec, pca=pca, rows=rows,
                                     cols=cols, seed=seed, tile=tile)
    except ValueError as exc:
        raise VisiontuneError(f"{data}: {exc}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: grid.save(tmp, format="PNG", optimize=True))
    return {"out": str(out), "augment": str(spec), "ops": spec.text, "rows": len(shown), "cols": cols,
            "size": list(grid.size), "images": [str(s.path) for s in shown],
            "pca": pca.to_dict() if pca else None}


def load(run: str | Path, *, device: str = "cpu") -> TrainedModel:
    """Load a saved run folder (``model.safetensors`` + ``config.json``) for prediction."""
    _runtime.tune_allocator()
    return TrainedModel.from_run(run, device=device)


def evaluate(run: str | Path, folder: str | Path, *, batch_size: int = 32, workers: int | None = None,
             progress: bool = False) -> dict:
    """Accuracy, per-class precision/recall/F1 and the confusion matrix on ``folder/<class>/...``."""
    return load(run).evaluate(folder, batch_size=batch_size, workers=workers, progress=progress)


def predict(run: str | Path, paths, *, top_k: int = 1, batch_size: int = 32, workers: int | None = None,
            progress: bool = False) -> list[dict]:
    """Top-k classes with probabilities for each image file (folders are expanded)."""
    return load(run).predict(paths, top_k=top_k, batch_size=batch_size, workers=workers, progress=progress)


def _backbone_from(run_or_backbone: str | Path, weights: str | None) -> Backbone:
    """A run folder's backbone (its fine-tuned weights) or a backbone by name."""
    if (Path(run_or_backbone) / "config.json").is_file():
        backbone = load(run_or_backbone).model.backbone
        # Fine-tuned: the pretrained file's hash no longer describes these weights, so the feature
        # cache keys on a hash of the tensors themselves.
        backbone.weights_sha256 = None
        return backbone
    return create_backbone(str(run_or_backbone), weights=weights or "default")


def extract(data: str | Path, out: str | Path, *, backbone: str = "efficientnet_lite0",
            weights: str | None = None, cache: bool = True, cache_dir: str | None = None,
            batch_size: int = 64, workers: int | None = None, progress: bool = False) -> dict:
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
    features = _features(model, parts, config, cfg, skips, default_workers() if workers is None else workers)
    rows = [(name, fs) for name, fs in features.items()]
    table = {
        "path": np.array([str(s.path) for _, fs in rows for s in fs.samples]),
        "label": np.concatenate([fs.labels.numpy() for _, fs in rows]),
        "split": np.array([name for name, fs in rows for _ in fs.samples]),
        "embedding": np.concatenate([fs.features.numpy() for _, fs in rows]).astype(np.float32),
    }
    table["class_name"] = np.array([splits.labels.names[i] for i in table["label"]])
    _write_table(out, table, splits.labels.names)
    return {"out": str(out), "rows": len(table["path"]), "dim": int(table["embedding"].shape[1]),
            "computed": sum(fs.computed for _, fs in rows), "from_cache": sum(fs.from_cache for _, fs in rows),
            "skipped": skips.to_dict()["skipped"]}


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
        raise VisiontuneError("writing .parquet needs pyarrow (pip install pyarrow); or use .npz") from exc
    columns = {k: v for k, v in table.items() if k != "embedding"}
    columns["embedding"] = list(table["embedding"])
    atomic_write(out, lambda tmp: pq.write_table(pa.table(columns), tmp))


def similar(run_or_backbone: str | Path, query: str | Path, folder: str | Path, *, k: int = 5,
            weights: str | None = None, cache: bool = True, cache_dir: str | None = None,
            workers: int | None = None, progress: bool = False) -> list[dict]:
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
    feats = _features(model, {"gallery": gallery, "query": [Sample(query, 0)]}, config, cfg, skips,
                      default_workers() if workers is None else workers)
    if "query" not in feats or not len(feats["query"]):
        raise VisiontuneError(f"cannot decode the query image {query}: {skips.skipped.get(str(query), '')}")
    scores, indices = top_k_similar(feats["query"].features[0], feats["gallery"].features, k)
    return [{"path": str(feats["gallery"].samples[i].path), "score": float(s)}
            for s, i in zip(scores[0].tolist(), indices[0].tolist(), strict=False)]
