"""`visiontune demo`: train and evaluate on a dataset that ships with a package."""

from __future__ import annotations

from .summary import print_summary


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="train and evaluate on a small real dataset that ships with a package",
        description="Build scikit-image's lfw_subset (200 real photos: faces vs. non-faces) "
        "as an image folder, fine-tune the embedded EfficientNet-Lite0 on it, evaluate on "
        "its test split, and print the accuracy and the run folder. About a minute on 2 cores.",
    )
    p.add_argument(
        "--strategy",
        default="auto",
        choices=["auto", "head", "partial", "full"],
        help="(default: %(default)s)",
    )
    p.add_argument(
        "--out", default=None, metavar="DIR", help="run folder (default: runs/<time>-demo)"
    )
    p.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="where to write the demo images (default: the visiontune cache folder)",
    )
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bars or tables on stderr"
    )
    p.set_defaults(run=_run_demo)


def _run_demo(args) -> int:
    from ..api import fit
    from ..demo import build_demo_dataset

    data = build_demo_dataset(args.data_dir)
    print(f"demo data: {data} (scikit-image lfw_subset: face vs not_face)")
    result = fit(data, strategy=args.strategy, out=args.out, progress=not args.no_progress)
    print_summary(result)
    return 0


def register(sub) -> None:
    _add_demo(sub)
