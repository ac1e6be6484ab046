"""The ``visiontune`` command. One module per subcommand, each with ``register(sub)``; each
subcommand: parse -> config -> one api call -> print / exit code.

Exit codes: 0 success, 2 a problem with the input (bad path, empty class, unknown backbone...),
printed as one line on stderr - an operating-system error while reading or writing (a full
disk, a read-only folder, no permission) too, naming the path; 130 interrupted. An unexpected
exception is a bug in visiontune: one line naming its type and message, a hint to rerun with
``--debug``, exit 1. ``visiontune --debug COMMAND ...`` (or ``VISIONTUNE_DEBUG=1``) re-raises
every error instead, so Python prints the traceback. Usage errors are argparse's own (exit 2).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from .._version import __version__
from ..errors import VisiontuneError, VisiontuneWarning

__all__ = ["build_parser", "main"]

DESCRIPTION = """\
Transfer learning for image classification: take an ImageNet-pretrained backbone, replace its
classifier with one for your classes, fine-tune, evaluate and predict - offline, on a CPU.

DATA is a folder with one sub-folder per class, or a folder holding train/ val/ test/ split
folders (any letter case) that each hold class sub-folders."""

EPILOG = """\
examples:
  visiontune demo                                   # try it on a dataset that ships with a package
  visiontune check photos/                          # unreadable, duplicated, leaked images...
  visiontune audit photos/ --report audit/          # wrong labels, outliers (audit/index.html)
  visiontune train photos/ --strategy head          # frozen backbone: fast, for small similar data
  visiontune advise photos/                         # which strategy suits this data, and why
  visiontune train photos/ --strategy auto          # ... and train with it
  visiontune train photos/ --strategy full --epochs 6 --out runs/poses
  visiontune evaluate runs/poses photos/test --json
  visiontune predict runs/poses new_photos/ --top-k 3
  visiontune export runs/poses --format onnx        # one self-contained file, parity-checked
  visiontune serve runs/poses                       # a web page + JSON API on 127.0.0.1:8000
  visiontune train photos/ --augment strong         # or ops: flip,crop,rotate=15,pca-color=0.1
  visiontune augment-preview photos/ --augment strong --out grid.png   # see what training sees
  visiontune extract photos/ --out embeddings.npz   # backbone embeddings of every image
  visiontune similar efficientnet_lite0 query.jpg photos/ --k 5
  visiontune cache info                             # the on-disk feature cache
  visiontune backbones                              # which backbones can load weights right now
"""

from . import (  # noqa: E402
    advise,
    audit,
    augment,
    backbones,
    check,
    demo,
    evaluate,
    export,
    features,
    predict,
    serve,
    train,
)

# the order `--help` lists them in
COMMANDS = [
    check,
    audit,
    train,
    advise,
    evaluate,
    predict,
    serve,
    export,
    features,
    backbones,
    demo,
    augment,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="visiontune",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"visiontune {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the Python traceback of any error (also: VISIONTUNE_DEBUG=1)",
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


@contextmanager
def _clean_warnings() -> Iterator[None]:
    """Show the package's own warnings as one ``visiontune: warning: ...`` line on stderr
    (no source file or line); any other warning as Python shows it."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, VisiontuneWarning):
            print(f"visiontune: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = default


def _os_error(exc: OSError) -> str:
    """``<strerror>: <path>``, as the shell says it."""
    reason = exc.strerror or str(exc)
    paths = [p for p in (exc.filename, exc.filename2) if p is not None]
    return f"{reason}: {' -> '.join(str(p) for p in paths)}" if paths else reason


def debug_requested(args: argparse.Namespace | None = None) -> bool:
    """``--debug`` was given, or ``$VISIONTUNE_DEBUG`` is set (to anything but ``""``/``0``)."""
    env = os.environ.get("VISIONTUNE_DEBUG", "").strip().lower() not in ("", "0", "false")
    return env or bool(getattr(args, "debug", False))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = debug_requested(args)
    try:
        with _clean_warnings():
            return args.run(args)
    except KeyboardInterrupt:
        print("visiontune: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `visiontune predict ... | head`: the reader has what it wanted
        _silence_stdout()
        return 141  # 128 + SIGPIPE, what the shell reports for a tool killed by the pipe
    except Exception as exc:
        if debug:
            raise
        return _report(exc)


def _silence_stdout() -> None:
    # Python's documented recipe: point stdout at devnull, so flushing it at exit cannot raise
    # a second BrokenPipeError ("Exception ignored ... BrokenPipeError") after ours.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _report(exc: Exception) -> int:
    """One line on stderr for ``exc``; the exit code: 2 the user's input or disk, 1 a bug."""
    if isinstance(exc, VisiontuneError):
        print(f"visiontune: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    if isinstance(exc, OSError):  # ENOSPC, EROFS, EACCES...: the user's disk, not a bug
        print(f"visiontune: error: {_one_line(_os_error(exc))}", file=sys.stderr)
        return 2
    print(
        f"visiontune: internal error (a bug, please report it): {type(exc).__name__}: "
        f"{_one_line(str(exc))} - rerun with --debug to see the traceback",
        file=sys.stderr,
    )
    return 1


def _one_line(text: str) -> str:
    """``text`` with its line breaks folded, so an error stays one line."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


if __name__ == "__main__":
    raise SystemExit(main())
