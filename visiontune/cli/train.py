"""`visiontune train`: fine-tune a backbone on a folder. Its options are ``TrainConfig``'s."""

from __future__ import annotations

import argparse

from ..config import TrainConfig
from ..errors import VisiontuneError
from .options import add_config_options, given_options
from .summary import print_ensemble_summary, print_summary

DESCRIPTION = """\
Fine-tune a pretrained backbone on DATA and save the run folder (model bundle, history,
metrics). When DATA has a test split, training ends by evaluating on it.

By default (--strategy auto) it trains the head on cached features first, then the fine-tune
`visiontune advise` names, and keeps it unless the head is better on validation beyond noise:
  visiontune train photos/                      # auto; RUN/auto.json says what and why
  visiontune train photos/ --time-budget 5m     # ... done within five minutes
  visiontune train photos/ --strategy full      # one strategy, no candidates"""


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune a pretrained backbone on a folder of images",
        description=DESCRIPTION,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument(
        "data",
        metavar="DATA",
        nargs="?",
        help="folder of class sub-folders or of train/val/test splits, or a .csv/.parquet\n"
        "manifest (see --path-column); not with --resume",
    )
    add_config_options(p, TrainConfig)
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
    from .. import api

    options = given_options(args, TrainConfig)
    if args.resume:
        data = {} if args.data is None else {"data": args.data}
        print_summary(api.resume(args.resume, **data, **options))
        return 0
    if args.data is None:
        raise VisiontuneError("train needs DATA (or --resume RUN to continue an interrupted run)")
    backbone = options.get("backbone", "")
    backbones = [b.strip() for b in backbone.split(",")] if "," in backbone else None
    if args.ensemble is not None or backbones:
        if backbones:
            options["backbone"] = backbones[0]
        result = api.fit_ensemble(args.data, members=args.ensemble, backbones=backbones, **options)
        print_ensemble_summary(result)
        return 0
    print_summary(api.fit(args.data, **options))
    return 0


def register(sub) -> None:
    _add_train(sub)
