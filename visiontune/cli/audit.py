"""`visiontune audit`: images whose label looks wrong, outliers and ambiguous images; and
``--apply``, a relabelled copy of DATA from an edited fixes.csv."""

from __future__ import annotations

import argparse
import json
import sys

from ..config import manifest_columns
from ..errors import VisiontuneError
from .options import (
    DATA_HELP,
    add_cache_options,
    add_data_options,
    add_feature_precision_option,
)

DESCRIPTION = """\
Find images in DATA (every split: train, val and test) whose label looks wrong. Each image
gets class probabilities from a linear probe on frozen backbone features that never saw it
(k-fold, all splits pooled; seconds once the features are cached), and confident learning
(cleanlab) names the images another class is confidently predicted for. Kinds of finding:
  label-issue  another class is confidently predicted; `suggested` names it
  outlier      far from every class in feature space (not a photo of any class?)
  ambiguous    between two classes: their probabilities are close
With a test split it also says the TEST accuracy with and without the flagged TEST images
(a wrong TEST label makes a right answer count as a mistake).

DATA is never modified: --report writes fixes.csv (path,given,suggested,kind,score); edit its
`suggested` column (a class, or empty to leave the image out) and --apply it to make a
relabelled copy (symlinks to DATA's files, or copies with --copy)."""

EPILOG = """\
examples:
  visiontune audit photos/                          # a table of findings
  visiontune audit photos/ --report audit/          # audit/index.html, audit/fixes.csv
  visiontune audit photos/ --json > audit.json
  visiontune audit photos/ --apply audit/fixes.csv --out photos-fixed/
  visiontune train photos/ --exclude-suspects       # train without the flagged train images"""


def _add_audit(sub) -> None:
    p = sub.add_parser(
        "audit",
        help="find wrong labels, outliers and ambiguous images",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "data",
        metavar="DATA",
        help=DATA_HELP,
    )
    add_data_options(p)
    p.add_argument(
        "--backbone",
        default="efficientnet_lite0",
        help="backbone whose features are probed (default: %(default)s)",
    )
    p.add_argument("--weights", default=None, metavar="PATH", help="local weights file or folder")
    p.add_argument("--folds", type=int, default=5, help="probe folds (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the folds (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument(
        "--report",
        metavar="DIR",
        default=None,
        help="write DIR/index.html (each finding beside examples of both classes), "
        "DIR/audit.json and DIR/fixes.csv",
    )
    p.add_argument("--limit", type=int, default=30, help="table rows shown (default: %(default)s)")
    p.add_argument("--apply", metavar="FIXES", default=None, help="apply an edited fixes.csv")
    p.add_argument("--out", metavar="DIR", default=None, help="with --apply: the new folder")
    p.add_argument("--copy", action="store_true", help="with --apply: copy files, not symlinks")
    add_cache_options(p)
    add_feature_precision_option(p)
    p.add_argument(
        "--workers", type=int, default=None, help="loader processes (default: one per spare core)"
    )
    p.set_defaults(run=_run_audit)


def _apply(args) -> int:
    from ..api import apply_fixes

    if args.out is None:
        raise VisiontuneError("--apply needs --out DIR, the folder for the relabelled copy")
    done = apply_fixes(args.data, args.apply, args.out, copy=args.copy)
    how = "copied" if done["copy"] else "linked"
    print(
        f"{done['out']}: {done['relabelled']} relabelled, {done['left_out']} left out, "
        f"{done['unchanged']} unchanged ({how}); {args.data} is unchanged"
    )
    return 0


def _print_table(result, limit: int) -> None:
    summary = ", ".join(f"{len(result.of_kind(k))} {k}" for k in ("label-issue", "outlier"))
    summary += f", {len(result.of_kind('ambiguous'))} ambiguous"
    audited = ", ".join(f"{n} {split}" for split, n in result.counts.items())
    print(f"audited {audited} images: {summary}")
    if result.findings:
        print(f"{'kind':<12} {'score':>6} {'split':<6} {'given':<14} {'suggested':<14} path")
    for f in result.findings[:limit]:
        print(f"{f.kind:<12} {f.score:>6.3f} {f.split:<6} {f.given:<14} {f.suggested:<14} {f.path}")
    if len(result.findings) > limit:
        print(f"... and {len(result.findings) - limit} more (--limit, --json or --report)")
    test = result.test
    if test and test["accuracy"] is not None and test["accuracy_without_flagged"] is not None:
        print(
            f"TEST accuracy (linear probe on train+val): {test['accuracy']:.4f} on "
            f"{test['num_images']} images; {test['accuracy_without_flagged']:.4f} without the "
            f"{test['flagged']} flagged (label-issue, outlier)"
        )


def _run_audit(args) -> int:
    if args.apply is not None:
        return _apply(args)
    if args.out is not None or args.copy:
        raise VisiontuneError("--out and --copy go with --apply FIXES")
    from ..api import audit

    result = audit(
        args.data,
        backbone=args.backbone,
        weights=args.weights,
        folds=args.folds,
        seed=args.seed,
        cache=args.cache,
        cache_dir=args.cache_dir,
        precision=args.precision,
        workers=args.workers,
        progress=not args.json and sys.stderr.isatty(),
        report=args.report,
        columns=manifest_columns(args),
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        _print_table(result, args.limit)
    if args.report is not None:
        print(f"report: {args.report}/index.html", file=sys.stderr)
    return 0


def register(sub) -> None:
    _add_audit(sub)
