"""`visiontune evaluate`: metrics of a run on a labelled folder."""

from __future__ import annotations

import json
import sys


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="accuracy and per-class metrics of a run on a labelled folder",
                       description="Evaluate a trained run on DIR (a folder of class sub-folders whose "
                       "names are among the model's classes).")
    p.add_argument("run_dir", metavar="RUN", help="run folder written by `visiontune train`")
    p.add_argument("dir", metavar="DIR", help="folder of class sub-folders")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--batch-size", type=int, default=32, help="(default: %(default)s)")
    p.add_argument("--workers", type=int, default=None, help="loader processes (default: one per spare core)")
    p.set_defaults(run=_run_evaluate)


def _run_evaluate(args) -> int:
    from ..api import evaluate

    metrics = evaluate(args.run_dir, args.dir, batch_size=args.batch_size, workers=args.workers,
                       progress=not args.json and sys.stderr.isatty())
    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    print(f"accuracy {metrics['accuracy']:.4f} on {metrics['num_images']} images")
    print(f"{'class':<20} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}")
    for name, row in metrics["per_class"].items():
        print(f"{name:<20} {row['precision']:>9.3f} {row['recall']:>9.3f} {row['f1']:>9.3f} {row['support']:>8}")
    macro = metrics["macro_avg"]
    print(f"{'macro avg':<20} {macro['precision']:>9.3f} {macro['recall']:>9.3f} {macro['f1']:>9.3f}")
    names = metrics["class_names"]
    print("confusion matrix (rows: true, columns: predicted)")
    print(" " * 12 + "".join(f"{n[:8]:>9}" for n in names))
    for name, row in zip(names, metrics["confusion_matrix"], strict=False):
        print(f"{name[:12]:<12}" + "".join(f"{v:>9}" for v in row))
    for path, reason in metrics.get("skipped", {}).items():
        print(f"skipped {path}: {reason}", file=sys.stderr)
    return 0


def register(sub) -> None:
    _add_evaluate(sub)
