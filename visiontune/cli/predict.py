"""`visiontune predict`: classify image files with a run."""

from __future__ import annotations

import argparse
import csv
import json
import sys

from ..choices import PREDICTION_FORMATS, TTA_MODES
from ..errors import VisiontuneError
from .evaluate import TTA_HELP, split_runs
from .options import add_precision_option

EXPLAIN_HELP = """write one PNG per image into DIR: where the evidence for its top
class lies, as a Grad-CAM heat map (red: strong, blue: none) blended over
the centre crop the model saw. Grad-CAM weights the last feature map's
channels by the class score's gradient: one backward pass per image.
ViTs: the patch tokens entering the last block, laid out on their grid.
Names: the image's name with .png (cat.jpg -> cat.png); a name already
taken in this call gets -2, -3... in input order (a/cat.jpg, b/cat.jpg ->
cat.png, cat-2.png). Each row gets an "explanation" field (a column in
csv and table output). With --tta the class is the averaged views' top
one; the map is of the centre crop. Ensembles: the members' maps averaged
(those with the first member's preprocessing: another input size sees
another crop). Refused for .onnx files: they give no gradients"""


def _add_predict(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="classify image files or folders with a trained run",
        description="Predict the class of each image in PATH... (files, or folders "
        "searched recursively).",
        epilog="examples:\n"
        "  visiontune predict runs/poses new/ --top-k 3\n"
        "  visiontune predict runs/poses photo.jpg --tta flip\n"
        "  visiontune predict runs/a,runs/b,runs/c new/ --tta 10crop   # ensemble of 3 runs\n"
        "  visiontune predict runs/ens new/ --format csv               # train --ensemble folder\n"
        "  visiontune predict runs/poses/model.onnx new/               # `visiontune export` file\n"
        "  visiontune predict runs/poses new/ --reject none            # never flag unknown ones\n"
        "  visiontune predict runs/poses new/ --reject-rate 0.01       # flag fewer of them\n"
        "  visiontune predict runs/poses new/ --explain why/           # + why/<name>.png maps\n"
        "\n"
        "Probabilities are calibrated: the run's temperature (fitted on its validation split)\n"
        "divides the logits, so 0.9 means right about 9 times in 10. UNKNOWN marks an image\n"
        "unlike every training class: its pooled features are far (Mahalanobis distance)\n"
        "from every class's training images. unknown_score is 0 for a typical validation\n"
        "image and 1 at the automatic threshold, which flags 5 % of validation images.",
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument(
        "run_dir",
        metavar="RUN",
        help="run folder written by `visiontune train` (or `train --ensemble`);\n"
        "a comma-separated list a,b,c is used as one ensemble that averages\n"
        "their probabilities (same classes in the same order); or an .onnx\n"
        "file from `visiontune export`, run with onnxruntime",
    )
    p.add_argument("paths", metavar="PATH", nargs="+", help="image files or folders")
    p.add_argument(
        "--top-k", type=int, default=1, help="classes to show per image (default: %(default)s)"
    )
    p.add_argument(
        "--format",
        choices=PREDICTION_FORMATS,
        default="table",
        help="output format (default: %(default)s)",
    )
    p.add_argument(
        "--json",
        action="store_const",
        dest="format",
        const="json",
        help="the same as --format json (the flag the other commands take)",
    )
    p.add_argument("--tta", choices=TTA_MODES, default="none", help=TTA_HELP)
    p.add_argument(
        "--reject",
        metavar="auto|none|T",
        default=None,
        help="flag images unlike the training classes (unknown: true):\n"
        "auto - at the run's threshold (default, where the run has one)\n"
        "none - never; T - at unknown_score > T (1 is auto's threshold)",
    )
    p.add_argument(
        "--reject-rate",
        type=float,
        default=None,
        metavar="R",
        help="with auto: the share of validation images flagged (default: 0.05)",
    )
    p.add_argument("--explain", metavar="DIR", default=None, help=EXPLAIN_HELP)
    p.add_argument("--batch-size", type=int, default=32, help="(default: %(default)s)")
    p.add_argument(
        "--workers", type=int, default=None, help="loader processes (default: one per spare core)"
    )
    add_precision_option(p)
    p.set_defaults(run=_run_predict)


def _run_predict(args) -> int:
    from ..api import predict

    if args.top_k < 1:
        raise VisiontuneError(f"--top-k must be at least 1, got {args.top_k}")
    results = predict(
        split_runs([args.run_dir]),
        args.paths,
        top_k=args.top_k,
        batch_size=args.batch_size,
        workers=args.workers,
        progress=args.format == "table" and sys.stderr.isatty(),
        tta=args.tta,
        reject=args.reject,
        reject_rate=args.reject_rate,
        explain=args.explain,
        precision=args.precision,
    )
    if args.format == "json":
        print(json.dumps(results, indent=2))
    elif args.format == "csv":
        _print_csv(results, explained=args.explain is not None)
    else:
        for r in results:
            if "error" in r:
                print(f"{r['path']}\tERROR {r['error']}")
            else:
                shown = _shown(r)
                tops = ", ".join(f"{t['class']} {t['probability']:.3f}" for t in shown)
                tops = tops or "(no class above its threshold)"
                flag = f"\tUNKNOWN (score {r['unknown_score']:.2f})" if r.get("unknown") else ""
                why = f"\t{r['explanation']}" if "explanation" in r else ""
                print(f"{r['path']}\t{tops}{flag}{why}")
    return 1 if all("error" in r for r in results) else 0


def _shown(row: dict) -> list[dict]:
    """The classes a row names: a multi-label model's every class above its threshold, else
    the top k."""
    return row["labels"] if "labels" in row else row.get("top", [])


def _print_csv(results: list[dict], *, explained: bool) -> None:
    """One row per image and rank; ``unknown`` is empty where nothing was scored;
    ``explanation`` is a last column only with ``--explain``."""
    writer = csv.writer(sys.stdout)
    header = ["path", "rank", "class", "probability", "unknown", "error"]
    writer.writerow(header + ["explanation"] * explained)
    for r in results:
        why = [r.get("explanation", "")] * explained
        unknown = str(r["unknown"]).lower() if "unknown" in r else ""
        for rank, top in enumerate(_shown(r), 1):
            probability = f"{top['probability']:.6f}"
            writer.writerow([r["path"], rank, top["class"], probability, unknown, "", *why])
        if "error" in r:
            writer.writerow([r["path"], "", "", "", "", r["error"], *why])


def register(sub) -> None:
    _add_predict(sub)
