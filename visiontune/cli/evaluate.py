"""`visiontune evaluate`: metrics of a run on a labelled folder."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..choices import TTA_MODES
from ..config import manifest_columns
from .options import add_data_options, add_precision_option

TTA_HELP = """test-time augmentation: views per image, their probabilities averaged
(default: none). The image is resized as for evaluation (short side size/crop_pct):
none   - the centre crop: 1 forward pass per image and model
flip   - the centre crop and its mirror image: 2
5crop  - centre + 4 corner crops of the central square: 5
10crop - those 5 and their mirror images: 10"""
RUNS_HELP = """run folder written by `visiontune train` (or `train --ensemble`); several
folders, or a comma-separated list a,b,c, are used as one ensemble that averages
their probabilities (they must have the same classes in the same order)"""


def split_runs(values: list[str]) -> list[str]:
    """Run folders from arguments that may be comma-separated lists (an existing path is kept
    whole)."""
    runs = []
    for value in values:
        runs += [value] if Path(value).exists() else [v for v in value.split(",") if v]
    return runs


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="accuracy and per-class metrics of a run on a labelled folder",
        description="Evaluate a trained run (or an ensemble of runs) on DIR, a folder of "
        "class sub-folders whose names are among the model's classes.",
        epilog="examples:\n"
        "  visiontune evaluate runs/poses photos/test\n"
        "  visiontune evaluate runs/poses photos/test --tta 10crop\n"
        "  visiontune evaluate runs/a runs/b runs/c photos/test    # ensemble of 3 runs\n"
        "  visiontune evaluate runs/a,runs/b,runs/c photos/test    # the same\n"
        "  visiontune evaluate runs/ens photos/test --json         # train --ensemble folder\n"
        "  visiontune evaluate runs/poses photos/test --report report/  # then open "
        "report/index.html",
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN", nargs="+", help=RUNS_HELP)
    p.add_argument(
        "dir",
        metavar="DATA",
        help="folder of class sub-folders (a dataset root with train/ val/ test/: its test\n"
        "split), or a .csv/.parquet manifest (its test rows, or every row when it has no\n"
        "split column)",
    )
    add_data_options(p)
    p.add_argument("--tta", choices=TTA_MODES, default="none", help=TTA_HELP)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument(
        "--report",
        metavar="OUT_DIR",
        default=None,
        help="also write a report folder: index.html (open it in a browser: metrics, confusion\n"
        "matrix, training curves, misclassified images, each beside the Grad-CAM map\n"
        "of its predicted class: see `predict --explain`), metrics.json (adds top-k\n"
        "accuracy, calibration error, most-confused pairs), confusion_matrix.png,\n"
        "curves.png, thumbs/, explain/; relative links, so it can be moved or zipped",
    )
    p.add_argument("--batch-size", type=int, default=32, help="(default: %(default)s)")
    p.add_argument(
        "--workers", type=int, default=None, help="loader processes (default: one per spare core)"
    )
    add_precision_option(p)
    p.set_defaults(run=_run_evaluate)


def _run_evaluate(args) -> int:
    from ..api import evaluate

    metrics = evaluate(
        split_runs(args.run_dir),
        args.dir,
        batch_size=args.batch_size,
        workers=args.workers,
        progress=not args.json and sys.stderr.isatty(),
        tta=args.tta,
        report=args.report,
        precision=args.precision,
        columns=manifest_columns(args),
    )
    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    if metrics.get("task") == "multi-label":
        return _print_multi_label(metrics)
    print(
        f"accuracy {metrics['accuracy']:.4f} on {metrics['num_images']} images "
        f"(tta {metrics['tta']}: {_passes(metrics)})"
    )
    _print_calibration(metrics)
    print(f"{'class':<20} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}")
    for name, row in metrics["per_class"].items():
        print(
            f"{name:<20} {row['precision']:>9.3f} {row['recall']:>9.3f} {row['f1']:>9.3f} "
            f"{row['support']:>8}"
        )
    macro = metrics["macro_avg"]
    print(
        f"{'macro avg':<20} {macro['precision']:>9.3f} {macro['recall']:>9.3f} {macro['f1']:>9.3f}"
    )
    if metrics.get("absent_classes"):
        print(f"no images of (left out of the averages): {', '.join(metrics['absent_classes'])}")
    names = metrics["class_names"]
    print("confusion matrix (rows: true, columns: predicted)")
    print(" " * 12 + "".join(f"{n[:8]:>9}" for n in names))
    for name, row in zip(names, metrics["confusion_matrix"], strict=False):
        print(f"{name[:12]:<12}" + "".join(f"{v:>9}" for v in row))
    for path, reason in metrics.get("skipped", {}).items():
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if "report" in metrics:
        print(f"report: {metrics['report']}")
    return 0


def _passes(metrics: dict) -> str:
    """How many forward passes each image took, in words.

    >>> _passes({"forward_passes_per_image": 1}), _passes({"forward_passes_per_image": 10})
    ('1 forward pass per image', '10 forward passes per image')
    """
    n = metrics["forward_passes_per_image"]
    return f"{n} forward pass{'' if n == 1 else 'es'} per image"


def _print_multi_label(metrics: dict) -> int:
    """A multi-label evaluation: the summary at the run's thresholds and at 0.5, per class."""
    fixed = metrics["at_0.5"]
    print(
        f"mAP {metrics['mAP']:.4f}, macro F1 {metrics['macro_f1']:.4f} (at 0.5: "
        f"{fixed['macro_f1']:.4f}), micro F1 {metrics['micro_f1']:.4f}, subset accuracy "
        f"{metrics['subset_accuracy']:.4f} on {metrics['num_images']} images (tta "
        f"{metrics['tta']}: {_passes(metrics)})"
    )
    header = ("precision", "recall", "f1", "AP", "threshold")
    print(f"{'class':<20}" + "".join(f"{h:>10}" for h in header) + f"{'support':>9}")
    for name, row in metrics["per_class"].items():
        ap = row["average_precision"]
        values = (
            row["precision"],
            row["recall"],
            row["f1"],
            ap if ap is not None else float("nan"),
        )
        print(
            f"{name:<20}"
            + "".join(f"{v:>10.3f}" for v in (*values, row["threshold"]))
            + f"{row['support']:>9}"
        )
    for path, reason in metrics.get("skipped", {}).items():
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if "report" in metrics:
        print(f"report: {metrics['report']}")
    return 0


def _print_calibration(metrics: dict) -> None:
    """One line: the expected calibration error and the temperature it was reached with."""
    ece = metrics.get("expected_calibration_error")
    if ece is None:
        return
    record = metrics.get("calibration") or {}
    if "temperature" in record:
        how = f"temperature {record['temperature']:.3f}, fitted on the run's validation split"
    elif "members" in record:
        how = "each member's own temperature"
    else:
        how = "uncalibrated: the run stores no temperature"
    floor = metrics.get("ece_if_calibrated")
    noise = (
        f"; a perfectly calibrated model would show {floor['mean']:.4f} on these images "
        f"(95 %: {floor['p95']:.4f})"
        if floor
        else ""
    )
    print(f"calibration error (ECE, 15 bins) {ece:.4f} ({how}){noise}")


def register(sub) -> None:
    _add_evaluate(sub)
