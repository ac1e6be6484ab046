"""`visiontune advise`: measure a dataset and recommend a strategy."""

from __future__ import annotations

import json
import shlex
import sys

from ..config import manifest_columns
from .options import (
    DATA_HELP,
    add_cache_options,
    add_data_options,
    add_feature_precision_option,
)


def _add_advise(sub) -> None:
    p = sub.add_parser(
        "advise",
        help="measure a dataset and recommend a fine-tuning strategy",
        description="Measure DATA (its train and val splits; never test) against a backbone "
        "and say how much of the network to retrain. Size: images, images per class, class "
        "balance. Similarity to the pretraining data: how well a cross-validated linear probe "
        "on the frozen (cached) features separates the classes, and how far the images' "
        "activation statistics sit from the backbone's BatchNorm running statistics. Prints "
        "the quadrant (small/big x similar/different), the strategy with its settings and why; "
        "`train --strategy auto` runs exactly this.",
    )
    p.add_argument(
        "data",
        metavar="DATA",
        help=DATA_HELP,
    )
    add_data_options(p)
    p.add_argument(
        "--backbone", default="efficientnet_lite0", help="backbone name (default: %(default)s)"
    )
    p.add_argument(
        "--weights", default=None, metavar="PATH|none", help="local weights file or folder"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_cache_options(p)
    add_feature_precision_option(p)
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the probe's folds and the image sample (default: %(default)s)",
    )
    p.add_argument(
        "--workers", type=int, default=None, help="loader processes (default: one per spare core)"
    )
    p.set_defaults(run=_run_advise)


def _run_advise(args) -> int:
    from ..api import advise

    advice = advise(
        args.data,
        backbone=args.backbone,
        weights=args.weights,
        cache=args.cache,
        cache_dir=args.cache_dir,
        precision=args.precision,
        seed=args.seed,
        workers=args.workers,
        progress=not args.json and sys.stderr.isatty(),
        columns=manifest_columns(args),
    ).to_dict()
    if args.json:
        print(json.dumps(advice, indent=2))
        return 0
    m = advice["measurements"]
    probe = (
        "n/a"
        if m["probe_accuracy"] is None
        else f"{m['probe_accuracy']:.3f} (chance {m['chance']:.3f})"
    )
    shift = (
        "n/a (no pretrained BatchNorm statistics)"
        if m["bn_shift"] is None
        else f"{m['bn_shift']:.3f} on {m['bn_images']} images"
    )
    similarity = "n/a" if advice["similarity"] is None else f"{advice['similarity']:.2f}"
    print(
        f"data        {m['num_images']} images, {m['num_classes']} classes, "
        f"{m['images_per_class']:.0f} per class (smallest/largest {m['balance']:.2f})"
    )
    print(f"probe       cross-validated balanced accuracy {probe}")
    print(f"BatchNorm   shift {shift}")
    print(f"similarity  {similarity}")
    print(f"quadrant    {advice['quadrant']}")
    settings = ", ".join(f"{k}={v}" for k, v in advice["settings"].items())
    print(f"strategy    {advice['strategy']} ({settings})")
    print(f"reason      {advice['reason']}")
    print(f"auto        {advice['auto_plan']}")
    print(
        f"run it      visiontune train {shlex.quote(args.data)}  (--strategy auto is the default)"
    )
    return 0


def register(sub) -> None:
    _add_advise(sub)
