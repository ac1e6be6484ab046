"""The ``visiontune`` command. Each subcommand: parse -> config -> one api call -> print/exit code.

Exit codes: 0 success, 2 a problem with the input (bad path, empty class, unknown backbone...),
printed as one line on stderr; 130 interrupted.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import sys
from pathlib import Path

from . import __version__
from .data.augment import augment_help
from .errors import VisiontuneError

__all__ = ["build_parser", "main"]

DESCRIPTION = """\
Transfer learning for image classification: take an ImageNet-pretrained backbone, replace its
classifier with one for your classes, fine-tune, evaluate and predict - offline, on a CPU.

DATA is a folder with one sub-folder per class, or a folder holding train/ val/ test/ split
folders (any letter case) that each hold class sub-folders."""

EPILOG = """\
examples:
  visiontune demo                                   # try it on a dataset that ships with a package
  visiontune train photos/ --strategy head          # frozen backbone: fast, for small similar data
  visiontune advise photos/                         # which strategy suits this data, and why
  visiontune train photos/ --strategy auto          # ... and train with it
  visiontune train photos/ --strategy full --epochs 6 --out runs/poses
  visiontune evaluate runs/poses photos/test --json
  visiontune predict runs/poses new_photos/ --top-k 3
  visiontune train photos/ --augment strong         # or ops: --augment flip,crop,rotate=15,pca-color=0.1
  visiontune augment-preview photos/ --augment strong --out grid.png   # see what training sees
  visiontune extract photos/ --out embeddings.npz   # backbone embeddings of every image
  visiontune similar efficientnet_lite0 query.jpg photos/ --k 5
  visiontune cache info                             # the on-disk feature cache
  visiontune backbones                              # which backbones can load weights right now
"""

STRATEGY_HELP = """fine-tuning strategy (default: full):
head    - freeze the whole backbone (BatchNorm statistics too), train only the new classifier;
          features are computed once, so this is fast. Small data similar to ImageNet.
partial - freeze the first stages, train the last --unfreeze stages and the classifier.
full    - train everything, starting from the pretrained weights. Larger or different data.
gradual - fit the classifier on cached features first, then unfreeze one more stage per epoch
          from the top (up to --unfreeze, default all), each deeper stage at half the LR.
auto    - measure the data (`visiontune advise`) and run the strategy and settings it chooses;
          options you give explicitly are kept. The advice is saved in the run folder."""


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train", help="fine-tune a pretrained backbone on a folder of images",
        description="Fine-tune a pretrained backbone on DATA and save the run folder (model bundle, "
        "history, metrics). When DATA has a test split, training ends by evaluating on it.",
        formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("data", metavar="DATA", help="folder of class sub-folders, or of train/val/test splits")
    p.add_argument("--backbone", default="efficientnet_lite0",
                   help="registered name (see `visiontune backbones`) or any timm model name\n(default: %(default)s)")
    p.add_argument("--weights", default=None, metavar="PATH|none",
                   help="local weights file (.safetensors/.pth) or folder; 'none' for random init.\n"
                        "Default: the embedded package, else the model hub.")
    p.add_argument("--strategy", default="full", choices=["head", "partial", "full", "gradual", "auto"],
                   help=STRATEGY_HELP)
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs (default: 6; 60 for --head-solver adamw)")
    p.add_argument("--batch-size", type=int, default=32, help="images per step (default: %(default)s)")
    p.add_argument("--lr", type=float, default=None, help="learning rate of the new head (default: 5e-3 for partial/full,\n1e-3 for --head-solver adamw)")
    p.add_argument("--backbone-lr-mult", type=float, default=0.1,
                   help="pretrained layers train at lr x this, so their knowledge is not erased\n(default: %(default)s)")
    p.add_argument("--unfreeze", type=int, default=None, metavar="N",
                   help="with --strategy partial: how many of the last stages train (default: a third);\n"
                        "with gradual: how many are unfrozen in all (default: every stage)")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (default: %(default)s)")
    p.add_argument("--label-smoothing", type=float, default=0.1, help="(default: %(default)s)")
    p.add_argument("--dropout", type=float, default=0.2, help="dropout before the new head (default: %(default)s)")
    p.add_argument("--augment", default="standard", metavar="PRESET|OPS", help=augment_help())
    p.add_argument("--warmup-epochs", type=float, default=0.5,
                   help="linear LR warm-up before the cosine decay (default: %(default)s)")
    p.add_argument("--patience", type=int, default=None,
                   help="stop after N epochs without validation improvement (default: off)")
    p.add_argument("--warm-start-head", action="store_true",
                   help="partial/full: before fine-tuning, fit the new head as a linear probe on the\n"
                        "pretrained features (linear-probe-then-fine-tune) instead of random init")
    p.add_argument("--head-solver", default="lbfgs", choices=["lbfgs", "adamw"],
                   help="with --strategy head: 'lbfgs' fits the head as a logistic regression on\n"
                        "the cached features, its L2 strength chosen on validation (default);\n"
                        "'adamw' trains it in mini-batches for --epochs")
    _add_cache_options(p)
    p.add_argument("--cache-views", type=int, default=0, metavar="K",
                   help="with --strategy head: also cache K augmented views of each training image\n"
                        "and train the head on them too (default: 0)")
    p.add_argument("--val-fraction", type=float, default=0.15,
                   help="share of train held out (stratified, seeded) when DATA has no val split\n(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed for the split, init, shuffling (default: %(default)s)")
    p.add_argument("--workers", type=int, default=None,
                   help="image-loading worker processes (default: one per spare core, max 4)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda; a GPU uses mixed precision (default: auto)")
    p.add_argument("--out", default=None, metavar="DIR", help="run folder (default: runs/<time>-<backbone>-<strategy>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars or tables on stderr")
    p.set_defaults(run=_run_train)


def _run_train(args) -> int:
    from .api import fit
    from .config import TrainConfig

    options = {k: v for k, v in vars(args).items() if k in TrainConfig.field_names()}
    options["progress"] = not args.no_progress
    result = fit(args.data, config=TrainConfig(**options))
    _print_summary(result)
    return 0


def _print_summary(result) -> None:
    val = result.metrics["val"]
    chosen = f"L2 strength C={val['C']:g}" if "C" in val else f"best epoch {val['best_epoch']}"
    print(f"validation accuracy {val['accuracy']:.4f} ({chosen})")
    test = result.metrics.get("test")
    if test and test.get("accuracy") is not None:
        print(f"test accuracy {test['accuracy']:.4f} on {test['num_images']} images")
    skipped = result.metrics.get("skipped") or {}
    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s); listed in {result.run_dir / 'metrics.json'}")
    print(f"run saved to {result.run_dir}")


def _add_advise(sub) -> None:
    p = sub.add_parser("advise", help="measure a dataset and recommend a fine-tuning strategy",
                       description="Measure DATA (its train and val splits; never test) against a backbone "
                       "and say how much of the network to retrain. Size: images, images per class, class "
                       "balance. Similarity to the pretraining data: how well a cross-validated linear probe "
                       "on the frozen (cached) features separates the classes, and how far the images' "
                       "activation statistics sit from the backbone's BatchNorm running statistics. Prints "
                       "the quadrant (small/big x similar/different), the strategy with its settings and why; "
                       "`train --strategy auto` runs exactly this.")
    p.add_argument("data", metavar="DATA", help="folder of class sub-folders, or of train/val/test splits")
    p.add_argument("--backbone", default="efficientnet_lite0", help="backbone name (default: %(default)s)")
    p.add_argument("--weights", default=None, metavar="PATH|none", help="local weights file or folder")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_cache_options(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the probe's folds and the image sample "
                   "(default: %(default)s)")
    p.add_argument("--workers", type=int, default=None, help="loader processes (default: one per spare core)")
    p.set_defaults(run=_run_advise)


def _run_advise(args) -> int:
    from .api import advise

    advice = advise(args.data, backbone=args.backbone, weights=args.weights, cache=args.cache,
                    cache_dir=args.cache_dir, seed=args.seed, workers=args.workers,
                    progress=not args.json and sys.stderr.isatty()).to_dict()
    if args.json:
        print(json.dumps(advice, indent=2))
        return 0
    m = advice["measurements"]
    probe = "n/a" if m["probe_accuracy"] is None else f"{m['probe_accuracy']:.3f} (chance {m['chance']:.3f})"
    shift = "n/a (no pretrained BatchNorm statistics)" if m["bn_shift"] is None else \
        f"{m['bn_shift']:.3f} on {m['bn_images']} images"
    similarity = "n/a" if advice["similarity"] is None else f"{advice['similarity']:.2f}"
    print(f"data        {m['num_images']} images, {m['num_classes']} classes, "
          f"{m['images_per_class']:.0f} per class (smallest/largest {m['balance']:.2f})")
    print(f"probe       cross-validated balanced accuracy {probe}")
    print(f"BatchNorm   shift {shift}")
    print(f"similarity  {similarity}")
    print(f"quadrant    {advice['quadrant']}")
    settings = ", ".join(f"{k}={v}" for k, v in advice["settings"].items())
    print(f"strategy    {advice['strategy']} ({settings})")
    print(f"reason      {advice['reason']}")
    print(f"run it      visiontune train {shlex.quote(args.data)} --strategy auto")
    return 0


def _add_augment_preview(sub) -> None:
    p = sub.add_parser("augment-preview", help="draw a grid of augmented training images (PNG)",
                       description="Write a PNG grid showing what training sees with --augment: rows are "
                       "training images of DATA (each class in turn), the first column their eval view "
                       "(what evaluation and prediction see), the other columns seeded augmented draws.",
                       formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("data", metavar="DATA", help="folder of class sub-folders, or of train/val/test splits")
    p.add_argument("--augment", default="standard", metavar="PRESET|OPS", help=augment_help())
    p.add_argument("--out", required=True, metavar="PNG", help="the picture to write (.png)")
    p.add_argument("--rows", type=int, default=4, help="sample images (default: %(default)s)")
    p.add_argument("--cols", type=int, default=6, help="augmented draws per image (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="picks the images and the draws (default: %(default)s)")
    p.add_argument("--size", type=int, default=224, help="model input size the ops run at (default: %(default)s)")
    p.add_argument("--tile", type=int, default=None, metavar="PX",
                   help="displayed pixels per image (default: --size)")
    p.set_defaults(run=_run_augment_preview)


def _run_augment_preview(args) -> int:
    from .api import augment_preview

    info = augment_preview(args.data, args.out, augment=args.augment, rows=args.rows, cols=args.cols,
                           seed=args.seed, size=args.size, tile=args.tile)
    ops = "" if info["augment"] == info["ops"] else f" ({info['ops']})"
    print(f"wrote {info['out']}: {info['rows']} images x {info['cols']} draws of {info['augment']}{ops}, "
          f"{info['size'][0]}x{info['size'][1]} px")
    return 0


def _add_extract(sub) -> None:
    p = sub.add_parser("extract", help="write every image's backbone embedding to a file",
                       description="Run a frozen backbone over DATA (class folders or splits) and write "
                       "path, label, class_name, split and embedding per image to FILE (.npz; .parquet "
                       "with pyarrow). Reads and fills the feature cache.")
    p.add_argument("data", metavar="DATA")
    p.add_argument("--out", required=True, metavar="FILE", help="output file, .npz or .parquet")
    p.add_argument("--backbone", default="efficientnet_lite0",
                   help="backbone name, or a run folder to use its fine-tuned backbone (default: %(default)s)")
    p.add_argument("--weights", default=None, metavar="PATH", help="local weights file or folder")
    _add_cache_options(p)
    p.add_argument("--workers", type=int, default=None, help="loader processes (default: one per spare core)")
    p.set_defaults(run=_run_extract)


def _add_cache_options(p) -> None:
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="feature cache folder (default: $VISIONTUNE_CACHE or ~/.cache/visiontune)")
    p.add_argument("--no-cache", dest="cache", action="store_false", help="bypass the feature cache")


def _run_extract(args) -> int:
    from .api import extract

    summary = extract(args.data, args.out, backbone=args.backbone, weights=args.weights, cache=args.cache,
                      cache_dir=args.cache_dir, workers=args.workers, progress=sys.stderr.isatty())
    print(f"wrote {summary['rows']} embeddings of dimension {summary['dim']} to {summary['out']} "
          f"({summary['computed']} computed, {summary['from_cache']} from the cache)")
    for path, reason in summary["skipped"].items():
        print(f"skipped {path}: {reason}", file=sys.stderr)
    return 0


def _add_similar(sub) -> None:
    p = sub.add_parser("similar", help="find the images most similar to a query image",
                       description="List the K images under DIR most similar to QUERY: cosine similarity "
                       "of pooled backbone features (cached, so repeated searches over DIR are fast).")
    p.add_argument("source", metavar="RUN_OR_BACKBONE", help="a run folder or a backbone name")
    p.add_argument("query", metavar="QUERY", help="the query image")
    p.add_argument("dir", metavar="DIR", help="folder of images to search (recursively)")
    p.add_argument("--k", type=int, default=5, help="how many to list (default: %(default)s)")
    p.add_argument("--weights", default=None, metavar="PATH", help="local weights for a backbone name")
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_cache_options(p)
    p.set_defaults(run=_run_similar)


def _run_similar(args) -> int:
    from .api import similar

    rows = similar(args.source, args.query, args.dir, k=args.k, weights=args.weights, cache=args.cache,
                   cache_dir=args.cache_dir, progress=sys.stderr.isatty())
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(f"{row['score']:.4f}\t{row['path']}")
    return 0


def _add_cache(sub) -> None:
    p = sub.add_parser("cache", help="show or clear the on-disk feature cache",
                       description="The feature cache keeps each image's frozen-backbone features, keyed "
                       "by backbone, weights, preprocessing and the file's identity, so later runs skip the "
                       "backbone. `info` lists its stores; `clear` deletes them (or one, with --key).")
    p.add_argument("action", choices=["info", "clear"])
    p.add_argument("--cache-dir", default=None, metavar="DIR", help="(default: the per-user cache folder)")
    p.add_argument("--key", default=None, help="with clear: only this store")
    p.add_argument("--json", action="store_true", help="with info: print JSON")
    p.set_defaults(run=_run_cache)


def _run_cache(args) -> int:
    from ._paths import default_cache_dir
    from .features.cache import cache_info, clear_cache

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
        print(f"  {row['key']}  {described.get('backbone', '?'):<22} {view:<40} {row.get('entries', 0):>7} images "
              f"{row.get('bytes', 0) / 2**20:>8.1f} MiB  {row.get('status', '')}")
    return 0


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
    from .api import evaluate

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
    from .api import predict

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


def _add_backbones(sub) -> None:
    p = sub.add_parser("backbones", help="list backbones and whether their weights can load now",
                       description="List registered backbones. Any other timm model name also works "
                       "with --backbone, loading hub weights when online or --weights PATH.")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'efficientnet*'")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=_run_backbones)


def _run_backbones(args) -> int:
    from .backbones import list_backbones

    rows = list_backbones(args.pattern)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<24} {'ImageNet top-1':>14}  weights now")
    for r in rows:
        top1 = f"{r['imagenet_top1']:.1f}%" if r["imagenet_top1"] else "-"
        print(f"{r['name']:<24} {top1:>14}  {r['weights_now'] or 'not offline (needs internet or --weights PATH)'}")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="train and evaluate on a small real dataset that ships with a package",
                       description="Build scikit-image's lfw_subset (200 real photos: faces vs. non-faces) "
                       "as an image folder, fine-tune the embedded EfficientNet-Lite0 on it, evaluate on "
                       "its test split, and print the accuracy and the run folder. About a minute on 2 cores.")
    p.add_argument("--strategy", default="head", choices=["head", "partial", "full"],
                   help="(default: %(default)s)")
    p.add_argument("--out", default=None, metavar="DIR", help="run folder (default: runs/<time>-demo)")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="where to write the demo images (default: the visiontune cache folder)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars or tables on stderr")
    p.set_defaults(run=_run_demo)


def _run_demo(args) -> int:
    from .api import fit
    from .demo import build_demo_dataset

    data = build_demo_dataset(args.data_dir)
    print(f"demo data: {data} (scikit-image lfw_subset: face vs not_face)")
    result = fit(data, strategy=args.strategy, out=args.out, progress=not args.no_progress)
    _print_summary(result)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visiontune", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"visiontune {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for add in (_add_train, _add_advise, _add_evaluate, _add_predict, _add_extract, _add_similar, _add_cache,
                _add_backbones, _add_demo, _add_augment_preview):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except VisiontuneError as exc:
        print(f"visiontune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("visiontune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
