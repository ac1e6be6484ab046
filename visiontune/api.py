"""The public workflows: each validates its arguments and calls one layer below.

>>> result = visiontune.fit(photos, strategy="head", progress=False, **TINY)
>>> result.metrics["test"]["num_images"], sorted(result.metrics["test"])[:2]
(6, ['absent_classes', 'accuracy'])
>>> model = visiontune.load(result.run_dir)
>>> [row["top"][0]["class"] for row in model.predict([photos / "test" / "cat"])][:1]
['cat']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ._paths import check_writable_dir, check_writable_file, default_cache_dir
from .config import TrainConfig, changed_options, check_run_options
from .data.checks import CheckReport, check_folder
from .data.duplicates import DEFAULT_NEAR_DISTANCE
from .data.manifest import ManifestColumns
from .errors import VisiontuneError

if TYPE_CHECKING:  # the workflows import torch when called, so `visiontune check` never does
    from .exporting.parity import ExportReport
    from .prediction.ensemble import Ensemble
    from .prediction.predictor import TrainedModel
    from .strategies import Advice
    from .training import EnsembleFitResult, FitResult
    from .trust import AuditResult

__all__ = [
    "advise",
    "apply_fixes",
    "audit",
    "augment_preview",
    "check",
    "evaluate",
    "export",
    "extract",
    "fit",
    "fit_ensemble",
    "load",
    "predict",
    "resume",
    "similar",
]

Runs = str | Path | Sequence[str | Path]


def _train_config(data, config: TrainConfig | None, options: dict) -> tuple[TrainConfig, set]:
    """``config`` (or the defaults) with ``data`` and ``options`` on top; and the options the
    caller set, which ``--strategy auto`` keeps."""
    unknown = sorted(set(options) - {f.name for f in fields(TrainConfig)} - {"data"})
    if unknown:
        valid = ", ".join(TrainConfig.field_names())
        raise VisiontuneError(f"unknown training option(s) {', '.join(unknown)}; valid: {valid}")
    base = config if config is not None else TrainConfig(data="")
    merged = replace(base, **options)
    data = _data_path(data, merged.cache_dir, merged.manifest_columns)
    merged = replace(merged, data=str(data))
    return merged, set(options) | (changed_options(config) if config is not None else set())


def _data_path(data, cache_dir: str | None, columns):
    """``data`` itself, or for a pandas DataFrame the manifest file it is saved as (under the
    cache folder's ``manifests/``, its ``columns.path`` made absolute), which the run then
    records."""
    from .data.manifest import is_manifest, save_frame

    if isinstance(data, str | Path) or not is_manifest(data):
        return data
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    return save_frame(data, root / "manifests", columns)


def fit(data: str | Path, *, config: TrainConfig | None = None, **options) -> FitResult:
    """Fine-tune a pretrained backbone on ``data`` (a folder of class folders, optionally inside
    train/val/test split folders) and save the run. Options are ``TrainConfig``'s fields, given
    as keywords, on top of ``config`` when one is given.

    Started by ``torchrun``, each process trains its share with DistributedDataParallel
    (``visiontune.engine.distributed``) and only rank 0 writes the run."""
    from .engine.distributed import launched
    from .training import run_training, train_auto

    config, explicit = _train_config(data, config, options)
    if config.strategy == "auto" and not launched():  # torchrun: every rank trains the rule's
        return train_auto(config, explicit=frozenset(explicit))
    return run_training(config, explicit=frozenset(explicit))


def fit_ensemble(
    data: str | Path,
    *,
    members: int | None = None,
    backbones: Sequence[str] | None = None,
    config: TrainConfig | None = None,
    **options,
) -> EnsembleFitResult:
    """Train ``members`` seeds (or one member per name in ``backbones``) into one run folder
    that loads as one model, averaging probabilities. Options as ``fit``'s.

    >>> result = visiontune.fit_ensemble(photos, members=2, strategy="head", progress=False,
    ...                                  **TINY)
    >>> len(visiontune.load(result.run_dir).members)
    2
    """
    from .training import train_ensemble

    config, explicit = _train_config(data, config, options)
    return train_ensemble(
        config, members=members, backbones=backbones, explicit=frozenset(explicit)
    )


def resume(
    run: str | Path,
    *,
    workers: int | None = None,
    device: str | None = None,
    progress: bool = True,
    **options,
) -> FitResult:
    """Continue the run in folder ``run`` from its last checkpoint, with its own options.

    The run ends exactly as it would have without the interruption (on the CPU, where arithmetic
    is deterministic): the interrupted epoch is trained again from its start, drawing the same
    random numbers. ``options`` may repeat the run's options but not change them; ``workers``,
    ``device`` and ``progress`` may change."""
    from .training import resumed_config, run_training

    changeable = {"workers": workers, "device": device, "progress": progress}
    config, checkpoint = resumed_config(run, {**options, **changeable})
    return run_training(config, resume=checkpoint)


def advise(
    data: str | Path,
    *,
    backbone: str = "efficientnet_lite0",
    weights: str | None = None,
    cache: bool = True,
    cache_dir: str | None = None,
    seed: int = 0,
    workers: int | None = None,
    device: str = "auto",
    progress: bool = False,
    columns: ManifestColumns | None = None,
    precision: str = "auto",
) -> Advice:
    """Measure ``data`` (train and val splits, never test) against ``backbone`` and choose a
    fine-tuning strategy, as ``--strategy auto`` does (``visiontune.strategies.advisor``);
    ``precision`` of the features, as ``train``'s (the defaults share its feature cache). With
    the same ``seed`` it measures the sample ``train`` with its default hold-out measures.

    >>> advice = visiontune.advise(photos, **TINY)
    >>> advice.strategy in ("head", "partial", "full", "gradual")
    True
    """
    from . import _runtime
    from .data.dataset import scan_data
    from .features.embeddings import embedding_model
    from .training.advice import measure_and_decide

    check_run_options(workers=workers, seed=seed)
    _runtime.configure_threads()
    # Split as ``train`` does by default: the measurement sample is drawn from train + val in
    # that order, so with the same seed advise measures the very images ``auto`` measures.
    hold_out = TrainConfig.default("val_fraction")
    splits = scan_data(data, columns, val_fraction=hold_out, seed=seed)
    model = embedding_model(
        backbone,
        weights,
        cache,
        cache_dir,
        workers,
        precision=precision,
        progress=progress,
        device=device,
    )
    return measure_and_decide(splits, model.backbone, seed=seed, **model.options())


def check(
    data: str | Path,
    *,
    near_duplicates: bool = True,
    near_distance: int = DEFAULT_NEAR_DISTANCE,
    min_side: int = 32,
    max_pixels: int = 50_000_000,
    imbalance_ratio: float = 3.0,
    workers: int | None = None,
    columns: ManifestColumns | None = None,
) -> CheckReport:
    """Every finding about the images under ``data`` (any layout ``train`` accepts): unreadable
    and truncated files, odd formats, tiny and huge images, class counts and imbalance, exact and
    near duplicates, leakage across splits, images filed under two classes.

    >>> report = visiontune.check(photos)
    >>> report.has_errors
    False
    """
    limits = (
        ("--near-distance", near_distance, 0),
        ("--min-side", min_side, 1),
        ("--max-pixels", max_pixels, 1),
        ("--imbalance-ratio", imbalance_ratio, 1),
    )
    check_run_options(workers=workers)
    for name, value, low in limits:
        if value < low:
            raise VisiontuneError(f"{name} must be at least {low}, got {value}")
    return check_folder(
        data,
        near_distance=near_distance if near_duplicates else None,
        min_side=min_side,
        max_pixels=max_pixels,
        imbalance_ratio=imbalance_ratio,
        workers=workers,
        columns=columns,
    )


def audit(
    data: str | Path,
    *,
    backbone: str = "efficientnet_lite0",
    weights: str | None = None,
    folds: int = 5,
    seed: int = 0,
    cache: bool = True,
    cache_dir: str | None = None,
    workers: int | None = None,
    progress: bool = False,
    report: str | Path | None = None,
    columns: ManifestColumns | None = None,
    precision: str = "auto",
) -> AuditResult:
    """Find wrong labels (``label-issue``), ``outlier`` and ``ambiguous`` images in every split
    of ``data``, from out-of-fold probabilities of ``folds``-fold linear probes on the frozen
    ``backbone``'s cached features (``visiontune.trust.audit``). With a test split, the result
    also says the TEST accuracy with and without the flagged TEST images. ``report``: a folder
    for ``index.html`` (thumbnails beside examples of both classes), ``audit.json`` and an
    editable ``fixes.csv``. ``precision``: of the features, as ``train``'s (the defaults share
    its feature cache, and ``train --exclude-suspects`` audits the same features).

    >>> result = visiontune.audit(photos, **TINY)
    >>> result.counts, {f.kind for f in result.findings} <= {"label-issue", "outlier", "ambiguous"}
    ({'train': 12, 'val': 4, 'test': 6}, True)
    """
    from ._seeding import isolated_rng
    from .features.embeddings import embedding_model
    from .trust import audit_folder
    from .trust.audit_report import write_audit_report

    check_run_options(workers=workers, seed=seed)
    if folds < 2:
        raise VisiontuneError(f"--folds must be at least 2, got {folds}")
    if report is not None:
        check_writable_file(Path(report) / "index.html", "audit --report")
    with isolated_rng(seed):  # a randomly initialised backbone (weights "none") the same each time
        model = embedding_model(
            backbone, weights, cache, cache_dir, workers, precision=precision, progress=progress
        )
    result = audit_folder(
        data,
        model.backbone,
        folds=folds,
        seed=seed,
        probe=report is not None,  # the head the report's overlays explain
        columns=columns,
        **model.options(),
    )
    if report is not None:
        overlays = _audit_overlays(model.backbone, result, Path(report))
        write_audit_report(
            report, result, root=data, context={"backbone": backbone}, explanations=overlays
        )
    return result


def _audit_overlays(backbone, result: AuditResult, report: Path) -> dict[str, str]:
    """Grad-CAM overlays of the findings shown on the audit page, each for its suggested
    class, under the backbone with the audit's probe as its head (``report/explain/``)."""
    import torch

    from .backbones import Classifier, Head
    from .prediction.predictor import TrainedModel
    from .prediction.report import report_overlays
    from .specs import LabelMap
    from .trust.audit_report import REPORT_LIMIT

    shown = result.findings[:REPORT_LIMIT]
    head = Head(backbone.num_features, len(result.class_names), dropout=0.0)
    with torch.no_grad():
        head.fc.weight.copy_(result.probe[0])
        head.fc.bias.copy_(result.probe[1])
    model = TrainedModel(Classifier(backbone, head), LabelMap(tuple(result.class_names)))
    return report_overlays(model, {f.path: f.suggested for f in shown}, report)


def apply_fixes(
    data: str | Path, fixes: str | Path, out: str | Path, *, copy: bool = False
) -> dict:
    """A relabelled copy of ``data`` in ``out`` from an edited ``fixes.csv`` (``audit
    --report``): each listed image moved to its ``suggested`` class folder, or left out where
    that is empty; a symlink farm, or copied files with ``copy``. ``data`` is never modified;
    a bad row is refused, naming its line, before anything is written.

    >>> _ = Path("fixes.csv").write_text("path,given,suggested\\ntrain/cat/cat_0.png,cat,dog\\n")
    >>> visiontune.apply_fixes(photos, "fixes.csv", "fixed")["relabelled"]
    1
    >>> (Path("fixed") / "train" / "dog" / "cat_0.png").is_symlink()
    True
    """
    from .trust.relabel import apply_fixes as apply

    return apply(data, fixes, out, copy=copy)


def _is_onnx(run: Runs) -> bool:
    single = run if isinstance(run, str | Path) else (run[0] if len(run) == 1 else None)
    return single is not None and str(single).lower().endswith(".onnx")


def load(
    run: Runs, *, device: str = "cpu", precision: str | None = None
) -> TrainedModel | Ensemble:
    """A saved run folder for prediction; an ensemble folder (``train --ensemble``) or a list of
    folders loads as one ``Ensemble`` that averages its members' probabilities; an ``.onnx``
    file from ``visiontune export`` as an ``OnnxModel`` (same ``predict``/``evaluate``).
    ``precision`` (``fp32``, ``bf16``, ``auto``): instead of the precision each run was trained
    and calibrated in, which it predicts in by default."""
    from . import _runtime
    from .prediction.ensemble import load_predictor

    _runtime.tune_allocator()
    if _is_onnx(run):
        if precision is not None:
            raise VisiontuneError(
                "--precision applies to run folders: an .onnx file runs its graph as exported "
                "(fp32, or int8 with export --quantize)"
            )
        from .prediction.onnx_predictor import OnnxModel  # onnxruntime only when asked for

        return OnnxModel.from_file(run if isinstance(run, str | Path) else run[0])
    return load_predictor(run, device=device, precision=precision)


def evaluate(
    run: Runs,
    folder: str | Path,
    *,
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool = False,
    tta: str = "none",
    report: str | Path | None = None,
    precision: str | None = None,
    columns: ManifestColumns | None = None,
) -> dict:
    """Accuracy, per-class precision/recall/F1 and the confusion matrix on ``folder/<class>/``.
    ``tta``: ``none``, ``flip``, ``5crop`` or ``10crop`` views per image, probabilities averaged.
    ``report``: a folder to write ``index.html``, ``metrics.json`` and figures into.
    ``precision``: see ``load``."""
    from .evaluation.report import check_report_dir
    from .prediction.report import evaluation_report

    check_run_options(batch_size=batch_size, workers=workers)
    options = {"batch_size": batch_size, "workers": workers, "progress": progress, "tta": tta}
    options["columns"] = columns
    if report is None:
        return load(run, precision=precision).evaluate(folder, **options)
    check_report_dir(report)  # before any work: a bad folder writes nothing
    return evaluation_report(load(run, precision=precision), run, folder, report, **options)


def predict(
    run: Runs,
    paths,
    *,
    top_k: int = 1,
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool = False,
    tta: str = "none",
    reject: str | float | None = None,
    reject_rate: float | None = None,
    explain: str | Path | None = None,
    precision: str | None = None,
) -> list[dict]:
    """Top-k classes with calibrated probabilities for each image file (folders are
    expanded), and whether it looks like none of the classes: ``unknown`` and
    ``unknown_score`` (0 typical, above 1 flagged) where the run has rejection statistics.
    ``reject``: ``"auto"`` (flag a share ``reject_rate`` of validation images, default the
    run's 5 %), ``"none"``, or a threshold on ``unknown_score``. ``explain``: a folder for one
    Grad-CAM overlay PNG per image, of its top class, named after the image
    (``prediction.explain.overlay_names``); each row gets ``explanation``, its path.
    ``precision``: see ``load``."""
    check_run_options(batch_size=batch_size, workers=workers)
    options = {
        "top_k": top_k,
        "batch_size": batch_size,
        "workers": workers,
        "tta": tta,
        "reject": reject,
        "reject_rate": reject_rate,
    }
    if explain is None:
        return load(run, precision=precision).predict(paths, progress=progress, **options)
    from .prediction.explain import check_explainable, explain_images  # model code: only here

    check_writable_dir(explain, "--explain folder")  # before any work
    if _is_onnx(run):
        raise VisiontuneError(
            "--explain needs the run folder, not an .onnx export: Grad-CAM takes gradients "
            "through the network, which the exported file does not give"
        )
    model = load(run, precision=precision)
    check_explainable(model)
    rows = model.predict(paths, progress=progress, **options)
    tops = {r["path"]: r["top"][0]["class"] for r in rows if "top" in r}
    written = explain_images(model, list(tops), explain, classes=tops) if tops else {}
    return [
        {**r, "explanation": str(written[r["path"]])} if r["path"] in written else r for r in rows
    ]


def export(
    run: str | Path,
    *,
    format: str = "onnx",
    out: str | Path | None = None,
    tolerance: float | None = None,
    max_images: int | None = None,
    quantize: str = "none",
    max_drop: float | None = None,
    min_speedup: float = 1.0,
) -> ExportReport:
    """Export the model of ``run`` to ``out`` (default ``RUN/model.onnx``, ``RUN/model.int8.onnx``
    or ``RUN/model.torchscript.pt``; a folder gets that name inside it): uint8 RGB crops in, class
    probabilities out, class names and preprocessing embedded. It is first compared with the run's
    own model on up to ``max_images`` of its images; a difference above ``tolerance`` raises
    ``ExportError`` and writes nothing. Defaults: ``exporting.parity.TOLERANCE`` (1e-4) and
    ``MAX_IMAGES``. ``quantize="int8"`` (ONNX) then quantizes the checked graph and writes it only
    if, on the run's validation split, it loses at most ``max_drop`` points (default 0.5) and runs
    at least ``min_speedup`` times as fast as the fp32 file here (``exporting.quantize``)."""
    from . import _runtime
    from .exporting.exporter import check_format, default_export_name, export_model
    from .exporting.parity import MAX_IMAGES, TOLERANCE
    from .prediction.predictor import TrainedModel

    check_format(format)
    int8 = _check_quantize(quantize, format)
    _runtime.tune_allocator()
    trained = TrainedModel.from_run(run)
    model, labels, config = trained.model, trained.labels, trained.config
    name = "model.int8.onnx" if int8 else default_export_name(format)
    target = Path(run) / name if out is None else Path(out)
    if target.is_dir():
        target = target / name
    check_writable_file(target, "export --out")  # before the parity check: a bad target fails fast
    options = {
        "format": format,
        "data": (config.get("training") or {}).get("data"),
        "tolerance": TOLERANCE if tolerance is None else tolerance,
        "max_images": MAX_IMAGES if max_images is None else max_images,
        "temperature": trained.temperature,
        "detector": trained.detector,
        "thresholds": trained.thresholds,
    }
    if int8 and trained.multi_label:
        raise VisiontuneError(
            "--quantize int8's gate measures top-1 agreement and accuracy; a multi-label "
            "model is exported in fp32 only"
        )
    if not int8:
        return export_model(model, labels, out=target, **options)
    from .exporting.quantize import MAX_DROP, quantize_onnx, run_crops

    calibration, validation = run_crops(config, trained.preprocess)
    fp32 = target.with_name(target.name + ".fp32.partial")
    try:
        report = export_model(model, labels, out=fp32, **options)
        gate = quantize_onnx(
            fp32,
            target,
            calibration=calibration,
            validation=validation,
            max_drop=MAX_DROP if max_drop is None else max_drop,
            min_speedup=min_speedup,
        )
    finally:
        fp32.unlink(missing_ok=True)
    quantization = gate.to_dict()
    return replace(report, path=target, size_bytes=target.stat().st_size, quantization=quantization)


def _check_quantize(quantize: str, format: str) -> bool:
    from .choices import QUANTIZE_MODES

    if quantize not in QUANTIZE_MODES:
        raise VisiontuneError(
            f"quantize must be one of {', '.join(QUANTIZE_MODES)}, got {quantize!r}"
        )
    if quantize == "int8" and format != "onnx":
        raise VisiontuneError("--quantize int8 is for ONNX exports (onnxruntime's quantization)")
    return quantize == "int8"


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
    columns: ManifestColumns | None = None,
    precision: str = "auto",
) -> dict:
    """Write every image's pooled features to ``out`` (``.npz``, or ``.parquet`` with pyarrow):
    columns ``path``, ``label``, ``class_name``, ``split``, ``embedding``. ``backbone`` may be a
    run folder (its fine-tuned backbone). Uses and fills the feature cache, in ``precision``
    resolved as ``train``'s (the defaults warm the cache a default ``train`` reads).

    >>> summary = visiontune.extract(photos, "emb.npz", **TINY)
    >>> summary["rows"], summary["dim"] > 0
    (22, True)
    """
    from .features.embeddings import embedding_model, write_embeddings

    check_run_options(batch_size=batch_size, workers=workers)
    check_writable_file(out, "extract --out")
    model = embedding_model(
        backbone, weights, cache, cache_dir, workers, precision=precision, progress=progress
    )
    return write_embeddings(data, out, model, batch_size=batch_size, columns=columns)


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
    precision: str = "auto",
) -> list[dict]:
    """The ``k`` images under ``folder`` most similar to ``query`` (cosine on pooled features,
    computed in ``precision`` as ``extract`` computes them).

    >>> query = next((photos / "test" / "cat").iterdir())
    >>> visiontune.similar(TINY["backbone"], query, photos, k=1, weights="none")[0]["score"] > 0.99
    True
    """
    from .features.embeddings import embedding_model, similar_images

    check_run_options(workers=workers)
    model = embedding_model(
        run_or_backbone, weights, cache, cache_dir, workers, precision=precision, progress=progress
    )
    return similar_images(model, query, folder, k=k)


def augment_preview(
    data: str | Path,
    out: str | Path,
    *,
    augment: str = "standard",
    rows: int = 4,
    cols: int = 6,
    seed: int = 0,
    size: int = 224,
    tile: int | None = None,
) -> dict:
    """Write a PNG grid of what training sees: ``rows`` training images of ``data`` (classes in
    turn), each as its eval view and then ``cols`` seeded augmented draws at ``size`` pixels."""
    from .data.preview import write_augment_preview

    check_run_options(seed=seed)
    check_writable_file(out, "augment-preview --out")
    return write_augment_preview(
        data, out, augment=augment, rows=rows, cols=cols, seed=seed, size=size, tile=tile
    )
