"""Command-line options generated from a config dataclass's fields (``TrainConfig``).

Every option is declared once, on the field: its help, choices and spelling are the field's
metadata, its type and default the field's own. Arguments default to ``argparse.SUPPRESS``, so
the parsed namespace holds exactly the options given on the command line: "given explicitly" is
presence, which ``--strategy auto`` (keep what the user set) and ``--resume`` (refuse a changed
option) both need.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, Field, fields

__all__ = [
    "DATA_HELP",
    "PRECISION_HELP",
    "add_cache_options",
    "add_config_options",
    "add_data_options",
    "add_feature_precision_option",
    "add_precision_option",
    "given_options",
]

DATA_HELP = "folder of class sub-folders or of train/val/test splits, or a .csv/.parquet manifest"
# Annotation (as written, under ``from __future__ import annotations``) -> argparse type.
_TYPES = {"int": int, "float": float, "str": str}


def _value_type(annotation: str):
    base = annotation.replace("| None", "").strip()
    return _TYPES.get(base, str)


def _help(f: Field) -> str:
    text = f.metadata["help"]
    if "(default:" in text or f.default is None or f.type == "bool":
        return text
    return f"{text} (default: {f.default})"


def _add(parser: argparse.ArgumentParser, f: Field) -> None:
    meta = f.metadata
    flag = meta.get("flag") or "--" + f.name.replace("_", "-")
    common = {"dest": f.name, "default": argparse.SUPPRESS, "help": _help(f)}
    if f.type == "bool":  # a switch that flips the default: --warm-start-head, --no-cache
        action = "store_false" if f.default else "store_true"
        parser.add_argument(flag, action=action, **common)
        return
    extra = {"choices": meta["choices"]} if meta.get("choices") else {}
    if meta.get("metavar"):
        extra["metavar"] = meta["metavar"]
    parser.add_argument(flag, type=_value_type(f.type), **extra, **common)


def add_config_options(parser: argparse.ArgumentParser, config_class) -> None:
    """One ``--option`` per field of ``config_class`` whose metadata does not say ``cli=False``."""
    for f in fields(config_class):
        if f.metadata.get("cli", True) and f.default is not MISSING:
            _add(parser, f)


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """``TrainConfig``'s manifest options (``DATA_OPTIONS``), for the commands other than train
    that read DATA (check, advise, audit, evaluate, extract); defaults kept, so
    ``config.manifest_columns(args)`` reads them."""
    from ..config import DATA_OPTIONS, TrainConfig

    for f in fields(TrainConfig):
        if f.name in DATA_OPTIONS:
            _add(parser, f)
            parser.set_defaults(**{f.name: f.default})


def given_options(args: argparse.Namespace, config_class) -> dict:
    """The ``config_class`` options present in ``args``: those given on the command line."""
    names = {f.name for f in fields(config_class) if f.metadata.get("cli", True)}
    return {k: v for k, v in vars(args).items() if k in names}


def add_cache_options(p) -> None:
    """``--cache-dir DIR`` and ``--no-cache`` (``args.cache_dir``, ``args.cache``), for the
    commands that take them without the rest of ``TrainConfig`` (advise, extract, similar)."""
    p.add_argument(
        "--cache-dir",
        default=None,
        metavar="DIR",
        help="feature cache folder (default: $VISIONTUNE_CACHE or ~/.cache/visiontune)",
    )
    p.add_argument(
        "--no-cache", dest="cache", action="store_false", help="bypass the feature cache"
    )


PRECISION_HELP = (
    "autocast dtype of the forward passes: fp32, bf16, or auto (bf16 where this machine has\n"
    "fast native kernels); default: the precision the run was trained and calibrated in"
)


def add_feature_precision_option(p) -> None:
    """``--precision`` of the commands that run a frozen backbone (extract, similar, audit)."""
    from ..choices import PRECISIONS

    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="autocast dtype of the backbone's forward passes, resolved as train's --precision\n"
        "(auto: bf16 where this machine has fast native kernels); the feature cache keeps\n"
        "each precision apart, so the default fills the cache a default train reads\n"
        "(default: %(default)s)",
    )


def add_precision_option(p) -> None:
    """``--precision`` of the commands that load a run (predict, evaluate, serve)."""
    from ..choices import PRECISIONS

    p.add_argument("--precision", choices=PRECISIONS, default=None, help=PRECISION_HELP)
