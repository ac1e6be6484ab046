"""`visiontune train`: fine-tune a backbone on a folder."""

from __future__ import annotations

import argparse
import os

from ..data.augment import augment_help
from ..errors import VisiontuneError
from .features import _add_cache_options

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
        "train",
        help="fine-tune a pretrained backbone on a folder of images",
        description="Fine-tune a pretrained backbone on DATA and save the run folder (model bundle, "
        "history, metrics). When DATA has a test split, training ends by evaluating on it.",
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument(
        "data",
        metavar="DATA",
        nargs="?",
        help="folder of class sub-folders, or of train/val/test splits (not with --resume)",
    )
    p.add_argument(
        "--backbone",
        default="efficientnet_lite0",
        help="registered name (see `visiontune backbones`) or any timm model name\n"
        "(default: %(default)s); a comma-separated list a,b,c trains an ensemble\n"
        "with one member per backbone",
    )
    p.add_argument(
        "--ensemble",
        type=int,
        default=None,
        metavar="N",
        help="train N members with seeds SEED..SEED+N-1 into one folder (OUT/members/0..N-1\n"
        "+ OUT/ensemble.json) that evaluate and predict use as one model, averaging\n"
        "the members' probabilities; each seed also draws its own validation hold-out",
    )
    p.add_argument(
        "--weights",
        default=None,
        metavar="PATH|none",
        help="local weights file (.safetensors/.pth) or folder; 'none' for random init.\n"
        "Default: the embedded package, else the model hub.",
    )
    p.add_argument(
        "--strategy",
        default="full",
        choices=["head", "partial", "full", "gradual", "auto"],
        help=STRATEGY_HELP,
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="training epochs (default: 6; 60 for --head-solver adamw)",
    )
    p.add_argument(
        "--batch-size", type=int, default=32, help="images per step (default: %(default)s)"
    )
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate of the new head (default: 5e-3 for partial/full,\n1e-3 for --head-solver adamw)",
    )
    p.add_argument(
        "--backbone-lr-mult",
        type=float,
        default=0.1,
        help="pretrained layers train at lr x this, so their knowledge is not erased\n(default: %(default)s)",
    )
    p.add_argument(
        "--unfreeze",
        type=int,
        default=None,
        metavar="N",
        help="with --strategy partial: how many of the last stages train (default: a third);\n"
        "with gradual: how many are unfrozen in all (default: every stage)",
    )
    p.add_argument(
        "--weight-decay", type=float, default=0.05, help="AdamW weight decay (default: %(default)s)"
    )
    p.add_argument("--label-smoothing", type=float, default=0.1, help="(default: %(default)s)")
    p.add_argument(
        "--dropout",
        type=float,
        default=0.2,
        help="dropout before the new head (default: %(default)s)",
    )
    p.add_argument("--augment", default="standard", metavar="PRESET|OPS", help=augment_help())
    p.add_argument(
        "--warmup-epochs",
        type=float,
        default=0.5,
        help="linear LR warm-up before the cosine decay (default: %(default)s)",
    )
    p.add_argument(
        "--patience",
        type=int,
        default=None,
        help="stop after N epochs without validation improvement (default: off)",
    )
    p.add_argument(
        "--warm-start-head",
        action="store_true",
        help="partial/full: before fine-tuning, fit the new head as a linear probe on the\n"
        "pretrained features (linear-probe-then-fine-tune) instead of random init",
    )
    p.add_argument(
        "--head-solver",
        default="lbfgs",
        choices=["lbfgs", "adamw"],
        help="with --strategy head: 'lbfgs' fits the head as a logistic regression on\n"
        "the cached features, its L2 strength chosen on validation (default);\n"
        "'adamw' trains it in mini-batches for --epochs",
    )
    _add_cache_options(p)
    p.add_argument(
        "--cache-views",
        type=int,
        default=0,
        metavar="K",
        help="with --strategy head: also cache K augmented views of each training image\n"
        "and train the head on them too (default: 0)",
    )
    p.add_argument(
        "--balance",
        default="none",
        choices=["none", "weights", "sampler"],
        help="for imbalanced classes (default: none; `visiontune check` shows the counts):\n"
        "weights - the loss weighs each class by n_train / (classes x its count)\n"
        "sampler - training batches draw every class equally often (with\n"
        "          replacement); the L-BFGS head solver uses weights either way",
    )
    p.add_argument(
        "--exclude-duplicates",
        action="store_true",
        help="leave val/test images that have a byte-identical copy in train out of the\n"
        "evaluation (they inflate its accuracy); metrics.json says how many",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.15,
        help="share of train held out (stratified, seeded) when DATA has no val split\n(default: %(default)s)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for the split, init, shuffling (default: %(default)s)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="image-loading worker processes (default: one per spare core, max 4)",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="auto, cpu or cuda; a GPU uses mixed precision (default: auto)",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="run folder (default: runs/<time>-<backbone>-<strategy>)",
    )
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bars or tables on stderr"
    )
    p.add_argument(
        "--resume",
        default=None,
        metavar="RUN",
        help="continue the interrupted run in folder RUN from its last checkpoint (written\n"
        "after every epoch), with the options it was started with; the result equals\n"
        "an uninterrupted run's. Only --workers, --device and --no-progress may change:\n"
        "  visiontune train --resume runs/poses",
    )
    p.set_defaults(run=_run_train)


def _run_train(args) -> int:
    from ..api import fit
    from ..config import TrainConfig

    if args.resume:
        return _run_resume(args)
    if args.data is None:
        raise VisiontuneError("train needs DATA (or --resume RUN to continue an interrupted run)")
    options = {k: v for k, v in vars(args).items() if k in TrainConfig.field_names()}
    options["progress"] = not args.no_progress
    backbones = args.backbone.split(",") if "," in args.backbone else None
    if args.ensemble is not None or backbones:
        return _run_ensemble(
            args,
            TrainConfig(**{**options, "backbone": (backbones or [args.backbone])[0]}),
            backbones,
        )
    result = fit(args.data, config=TrainConfig(**options))
    _print_summary(result)
    return 0


def _run_resume(args) -> int:
    from ..api import resume
    from ..config import TrainConfig
    from . import build_parser

    # Options typed again are checked against the run's; those left at their default are not.
    defaults = vars(build_parser().parse_args(["train"]))
    given = {
        k: v
        for k, v in vars(args).items()
        if k in TrainConfig.field_names() and v != defaults.get(k)
    }
    given.pop("progress", None)
    result = resume(args.resume, progress=not args.no_progress, **given)
    _print_summary(result)
    return 0


def _print_summary(result) -> None:
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 speaks for all
        return
    val = result.metrics["val"]
    chosen = f"L2 strength C={val['C']:g}" if "C" in val else f"best epoch {val['best_epoch']}"
    print(f"validation accuracy {val['accuracy']:.4f} ({chosen})")
    test = result.metrics.get("test")
    if test and test.get("accuracy") is not None:
        print(f"test accuracy {test['accuracy']:.4f} on {test['num_images']} images")
    excluded = (result.metrics.get("data_checks") or {}).get("excluded_duplicates")
    if excluded:
        print(
            f"excluded {excluded['val']} val and {excluded['test']} test image(s) with a copy in train "
            "(--exclude-duplicates)"
        )
    skipped = result.metrics.get("skipped") or {}
    if skipped:
        print(
            f"skipped {len(skipped)} unreadable file(s); listed in {result.run_dir / 'metrics.json'}"
        )
    print(f"run saved to {result.run_dir}")


def _run_ensemble(args, config, backbones) -> int:
    from ..api import fit_ensemble

    result = fit_ensemble(args.data, members=args.ensemble, backbones=backbones, config=config)
    for member, fitted in zip(result.metrics["members"], result.members, strict=True):
        print(f"member {member['run']} ({member['backbone']}, seed {member['seed']}): ", end="")
        _print_summary(fitted)
    test = result.metrics.get("test")
    if test and test.get("accuracy") is not None:
        print(
            f"ensemble of {len(result.members)}: test accuracy {test['accuracy']:.4f} on "
            f"{test['num_images']} images"
        )
    print(f"ensemble saved to {result.run_dir}")
    return 0


def register(sub) -> None:
    _add_train(sub)
