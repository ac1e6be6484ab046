"""`visiontune backbones`: what can load now."""

from __future__ import annotations

import json


def _add_backbones(sub) -> None:
    p = sub.add_parser(
        "backbones",
        help="list backbones and whether their weights can load now",
        description="List registered backbones. Any other timm model name also works "
        "with --backbone, loading hub weights when online or --weights PATH.",
    )
    p.add_argument(
        "pattern", nargs="?", default="*", help="shell-style filter, e.g. 'efficientnet*'"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=_run_backbones)


def _run_backbones(args) -> int:
    from ..backbones import list_backbones

    rows = list_backbones(args.pattern)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<24} {'ImageNet top-1':>14}  weights now")
    for r in rows:
        top1 = f"{r['imagenet_top1']:.1f}%" if r["imagenet_top1"] else "-"
        print(
            f"{r['name']:<24} {top1:>14}  "
            f"{r['weights_now'] or 'not offline (needs internet or --weights PATH)'}"
        )
    return 0


def register(sub) -> None:
    _add_backbones(sub)
