"""`visiontune predict`: classify image files with a run."""

from __future__ import annotations

import csv
import json
import sys

from ..errors import VisiontuneError


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="classify image files or folders with a trained run",
                       description="Predict the class of each image in PATH... (files, or folders "
                       "searched recursively).")
    p.add_argument("run_dir", metavar="RUN", help="run folder written by `visiontune train`")
    p.add_argument("paths", metavar="PATH", nargs="+", help="image files or folders")
    p.add_argument("--top-k", type=int, default=1, help="classes to show per image (default: %(default)s)")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table",
                   help="output format (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="(default: %(default)s)")
    p.add_argument("--workers", type=int, default=None, help="loader processes (default: one per spare core)")
    p.set_defaults(run=_run_predict)


def _run_predict(args) -> int:
    from ..api import predict

    if args.top_k < 1:
        raise VisiontuneError(f"--top-k must be at least 1, got {args.top_k}")
    results = predict(args.run_dir, args.paths, top_k=args.top_k, batch_size=args.batch_size,
                      workers=args.workers, progress=args.format == "table" and sys.stderr.isatty())
    if args.format == "json":
        print(json.dumps(results, indent=2))
    elif args.format == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(["path", "rank", "class", "probability", "error"])
        for r in results:
            for rank, top in enumerate(r.get("top", []), 1):
                writer.writerow([r["path"], rank, top["class"], f"{top['probability']:.6f}", ""])
            if "error" in r:
                writer.writerow([r["path"], "", "", "", r["error"]])
    else:
        for r in results:
            if "error" in r:
                print(f"{r['path']}\tERROR {r['error']}")
            else:
                tops = ", ".join(f"{t['class']} {t['probability']:.3f}" for t in r["top"])
                print(f"{r['path']}\t{tops}")
    return 1 if all("error" in r for r in results) else 0


def register(sub) -> None:
    _add_predict(sub)
