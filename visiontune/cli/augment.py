"""`visiontune augment-preview`: see what training sees."""

from __future__ import annotations

import argparse

from ..data.augment import augment_help


def _add_augment_preview(sub) -> None:
    p = sub.add_parser(
        "augment-preview",
        help="draw a grid of augmented training images (PNG)",
        description="Write a PNG grid showing what training sees with --augment: rows are "
        "training images of DATA (each class in turn), the first column their eval view "
        "(what evaluation and prediction see), the other columns seeded augmented draws.",
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument(
        "data", metavar="DATA", help="folder of class sub-folders, or of train/val/test splits"
    )
    p.add_argument("--augment", default="standard", metavar="PRESET|OPS", help=augment_help())
    p.add_argument("--out", required=True, metavar="PNG", help="the picture to write (.png)")
    p.add_argument("--rows", type=int, default=4, help="sample images (default: %(default)s)")
    p.add_argument(
        "--cols", type=int, default=6, help="augmented draws per image (default: %(default)s)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="picks the images and the draws (default: %(default)s)"
    )
    p.add_argument(
        "--size",
        type=int,
        default=224,
        help="model input size the ops run at (default: %(default)s)",
    )
    p.add_argument(
        "--tile",
        type=int,
        default=None,
        metavar="PX",
        help="displayed pixels per image (default: --size)",
    )
    p.set_defaults(run=_run_augment_preview)


def _run_augment_preview(args) -> int:
    from ..api import augment_preview

    info = augment_preview(
        args.data,
        args.out,
        augment=args.augment,
        rows=args.rows,
        cols=args.cols,
        seed=args.seed,
        size=args.size,
        tile=args.tile,
    )
    ops = "" if info["augment"] == info["ops"] else f" ({info['ops']})"
    print(
        f"wrote {info['out']}: {info['rows']} images x {info['cols']} draws of "
        f"{info['augment']}{ops}, {info['size'][0]}x{info['size'][1]} px"
    )
    return 0


def register(sub) -> None:
    _add_augment_preview(sub)
