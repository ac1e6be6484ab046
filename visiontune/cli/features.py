"""`visiontune extract`, `similar` and `cache`: the frozen backbone's features."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..config import manifest_columns
from .options import (
    DATA_HELP,
    add_cache_options,
    add_data_options,
    add_feature_precision_option,
)


def _add_extract(sub) -> None:
    p = sub.add_parser(
        "extract",
        help="write every image's backbone embedding to a file",
        description="Run a frozen backbone over DATA (class folders or splits) and write "
        "path, label, class_name, split and embedding per image to FILE (.npz; .parquet "
        "with pyarrow). Reads and fills the feature cache.",
    )
    p.add_argument(
        "data",
        metavar="DATA",
        help=DATA_HELP,
    )
    add_data_options(p)
    p.add_argument("--out", required=True, metavar="FILE", help="output file, .npz or .parquet")
    p.add_argument(
        "--backbone",
        default="efficientnet_lite0",
        help="backbone name, or a run folder to use its fine-tuned backbone (default: %(default)s)",
    )
    p.add_argument("--weights", default=None, metavar="PATH", help="local weights file or folder")
    add_cache_options(p)
    add_feature_precision_option(p)
    p.add_argument(
        "--workers", type=int, default=None, help="loader processes (default: one per spare core)"
    )
    p.set_defaults(run=_run_extract)


def _run_extract(args) -> int:
    from ..api import extract

    summary = extract(
        args.data,
        args.out,
        backbone=args.backbone,
        weights=args.weights,
        cache=args.cache,
        cache_dir=args.cache_dir,
        precision=args.precision,
        workers=args.workers,
        progress=sys.stderr.isatty(),
        columns=manifest_columns(args),
    )
    print(
        f"wrote {summary['rows']} embeddings of dimension {summary['dim']} to {summary['out']} "
        f"({summary['computed']} computed, {summary['from_cache']} from the cache)"
    )
    for path, reason in summary["skipped"].items():
        print(f"skipped {path}: {reason}", file=sys.stderr)
    return 0


def _add_similar(sub) -> None:
    p = sub.add_parser(
        "similar",
        help="find the images most similar to a query image",
        description="List the K images under DIR most similar to QUERY: cosine similarity "
        "of pooled backbone features (cached, so repeated searches over DIR are fast).",
    )
    p.add_argument("source", metavar="RUN_OR_BACKBONE", help="a run folder or a backbone name")
    p.add_argument("query", metavar="QUERY", help="the query image")
    p.add_argument("dir", metavar="DIR", help="folder of images to search (recursively)")
    p.add_argument("--k", type=int, default=5, help="how many to list (default: %(default)s)")
    p.add_argument(
        "--weights", default=None, metavar="PATH", help="local weights for a backbone name"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    add_cache_options(p)
    add_feature_precision_option(p)
    p.set_defaults(run=_run_similar)


def _run_similar(args) -> int:
    from ..api import similar

    rows = similar(
        args.source,
        args.query,
        args.dir,
        k=args.k,
        weights=args.weights,
        cache=args.cache,
        cache_dir=args.cache_dir,
        precision=args.precision,
        progress=sys.stderr.isatty(),
    )
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(f"{row['score']:.4f}\t{row['path']}")
    return 0


def _add_cache(sub) -> None:
    p = sub.add_parser(
        "cache",
        help="show or clear the on-disk feature cache",
        description="The feature cache keeps each image's frozen-backbone features, keyed "
        "by backbone, weights, preprocessing and the file's identity, so later runs skip the "
        "backbone. `info` lists its stores; `clear` deletes them (or one, with --key).",
    )
    p.add_argument(
        "action",
        nargs="?",
        default="info",
        choices=["info", "clear"],
        help="info (the default): where the cache is and what it holds; clear: delete",
    )
    p.add_argument(
        "--cache-dir", default=None, metavar="DIR", help="(default: the per-user cache folder)"
    )
    p.add_argument("--key", default=None, help="with clear: only this store")
    p.add_argument("--json", action="store_true", help="with info: print JSON")
    p.set_defaults(run=_run_cache)


def _run_cache(args) -> int:
    from .._paths import default_cache_dir
    from ..features.cache import cache_info, clear_cache

    root = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    if args.action == "clear":
        freed = clear_cache(root, args.key)
        print(f"freed {freed / 2**20:.1f} MiB in {root}")
        return 0
    rows = cache_info(root)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"feature cache: {root}")
    if not rows:
        print("  (empty)")
    for row in rows:
        described = row.get("description") or {}
        view = described.get("view") or "eval view"
        print(
            f"  {row['key']}  {described.get('backbone', '?'):<22} {view:<40} "
            f"{row.get('entries', 0):>7} images "
            f"{row.get('bytes', 0) / 2**20:>8.1f} MiB  {row.get('status', '')}"
        )
    return 0


def register(sub) -> None:
    _add_extract(sub)
    _add_similar(sub)
    _add_cache(sub)
