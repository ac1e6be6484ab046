"""Options more than one subcommand takes, defined once."""

from __future__ import annotations

__all__ = ["add_cache_options"]


def add_cache_options(p) -> None:
    """``--cache-dir DIR`` and ``--no-cache`` (``args.cache_dir``, ``args.cache``)."""
    p.add_argument(
        "--cache-dir",
        default=None,
        metavar="DIR",
        help="feature cache folder (default: $VISIONTUNE_CACHE or ~/.cache/visiontune)",
    )
    p.add_argument(
        "--no-cache", dest="cache", action="store_false", help="bypass the feature cache"
    )
