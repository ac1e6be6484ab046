"""`visiontune check`: what is wrong with a dataset folder, before training on it."""

from __future__ import annotations

import argparse
import json

from ..config import manifest_columns
from ..data.checks import FINDING_TYPES
from ..data.duplicates import DEFAULT_NEAR_DISTANCE
from ..errors import VisiontuneError
from .options import DATA_HELP, add_data_options

SEVERITY_ORDER = ("error", "warning", "info")

TYPES = "\n".join(
    f"  {kind:<19}{severity}: {meaning}" for kind, (severity, meaning) in FINDING_TYPES.items()
)
EPILOG = f"""\
finding types (severity: meaning):
{TYPES}

exit codes: 0 no errors (warnings and info may be present), 1 at least one error-severity finding,
2 DATA is not a dataset folder (missing, no class folders...).

examples:
  visiontune check photos/                       # summary: counts per finding type, a few examples
  visiontune check photos/ --json > checks.json  # every finding with every file involved
  visiontune check photos/ --no-near-duplicates  # headers and hashes only: faster
  visiontune train photos/ --exclude-duplicates  # then evaluate without leaked test images"""


def _add_check(sub) -> None:
    p = sub.add_parser(
        "check",
        help="find unreadable, odd, imbalanced, duplicated and leaked images in a dataset",
        description="Check every image under DATA (the layouts train accepts): unreadable or "
        "truncated files, extension/content mismatches, colour modes, tiny or huge images, class "
        "counts and imbalance, exact duplicates (sha256) and near duplicates (perceptual hash), "
        "test/val images with a copy in train (leakage) and images filed under two classes.",
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
        "--json", action="store_true", help="print one JSON object: every finding and all its files"
    )
    p.add_argument(
        "--examples",
        type=int,
        default=3,
        metavar="N",
        help="findings shown per type in the summary (default: %(default)s)",
    )
    p.add_argument(
        "--no-near-duplicates",
        action="store_true",
        help="skip decoding and perceptual hashing: no near-duplicate findings, and "
        "truncation judged from the files' end markers only (what train runs "
        "first)",
    )
    p.add_argument(
        "--near-distance",
        type=int,
        default=DEFAULT_NEAR_DISTANCE,
        metavar="BITS",
        help="perceptual hashes at most this many bits apart (of 143) are near "
        "duplicates (default: %(default)s)",
    )
    p.add_argument(
        "--min-side",
        type=int,
        default=32,
        metavar="PX",
        help="report images whose shorter side is under this (default: %(default)s)",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=50_000_000,
        metavar="N",
        help="report images with more pixels than this (default: %(default)s)",
    )
    p.add_argument(
        "--imbalance-ratio",
        type=float,
        default=3.0,
        metavar="R",
        help="report a split whose largest class has this many times the images of its "
        "smallest (default: %(default)s)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="processes (default: one per core, at most 8; 0 runs in this one)",
    )
    p.set_defaults(run=_run_check)


def _run_check(args) -> int:
    from ..api import check

    if args.examples < 0:
        raise VisiontuneError(f"--examples must be at least 0, got {args.examples}")
    report = check(
        args.data,
        near_duplicates=not args.no_near_duplicates,
        near_distance=args.near_distance,
        min_side=args.min_side,
        max_pixels=args.max_pixels,
        imbalance_ratio=args.imbalance_ratio,
        workers=args.workers,
        columns=manifest_columns(args),
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        _print_summary(report, args.examples)
    return 1 if report.has_errors else 0


def _print_summary(report, examples: int) -> None:
    print(
        f"checked {len(report.files)} files under {report.root} ({report.layout} layout) "
        f"in {report.seconds:.1f} s"
    )
    for part, per_class in report.counts.items():
        print(f"  {part}: " + ", ".join(f"{name} {n}" for name, n in per_class.items()))
    ordered = sorted(
        report.findings,
        key=lambda f: (SEVERITY_ORDER.index(f.severity), list(FINDING_TYPES).index(f.type)),
    )
    kinds = list(dict.fromkeys((f.severity, f.type) for f in ordered if f.type != "class-counts"))
    if not kinds:
        print("no findings")
    for severity, kind in kinds:
        found = [f for f in ordered if f.type == kind and f.severity == severity]
        print(f"{severity.upper():<8} {kind:<19} {len(found):>5}")
        for finding in found[:examples]:
            print(f"{'':<8} {finding.message}")
        if len(found) > examples:
            print(f"{'':<8} ... {len(found) - examples} more (--json lists them all)")
    errors = sum(f.severity == "error" for f in report.findings)
    print(f"{errors} error(s): exit code 1" if errors else "no errors")


def register(sub) -> None:
    _add_check(sub)
