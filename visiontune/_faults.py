"""Fault injection for tests: kill this process at an exact point, named by an env variable.

Tests that check what a crash leaves behind (a resumed run ends as an uninterrupted one; an
atomic write is never torn) used to SIGKILL a subprocess after sleeping and hoped it landed in
the right place. With ``VISIONTUNE_FAULT`` set, the process kills itself, with SIGKILL, exactly
where asked::

    VISIONTUNE_FAULT="kill-at-batch:EPOCH:BATCH"
        at the start of training batch BATCH of epoch EPOCH, before that batch is used (so
        BATCH - 1 batches of that epoch have trained). Both 1-based, as the progress bar and
        history.json count: "kill-at-batch:2:3" dies in the second epoch, after two batches.
    VISIONTUNE_FAULT="kill-before-rename:NAME[:COUNT]"
        in the COUNT-th atomic write (default 1, 1-based) whose target file name matches NAME,
        once the temporary file is complete and fsynced but before it is renamed over the target:
        the target still holds its previous version and the temporary file is left behind. For
        the target this is the same as a kill anywhere inside the write.
    VISIONTUNE_FAULT="kill-after-write:NAME[:COUNT]"
        right after that write has been committed (renamed into place).
    VISIONTUNE_FAULT="hold-batch:PATH"
        not a kill: before each forward pass of ``visiontune serve``, wait until the file PATH
        exists, so a test can have requests in flight, for certain, when it sends a signal.

NAME is a file name or an ``fnmatch`` pattern matched against the target's name only (no folder),
e.g. ``checkpoint.safetensors`` or ``shard-*.safetensors``; COUNT counts matching writes in this
process. Before dying the process writes one line starting ``VISIONTUNE_FAULT:`` to stderr.

Unset or empty, every hook is a no-op: one cached lookup. A value that does not parse raises
``FaultSpecError`` on the first hook call. Standard library only: no torch, no visiontune imports.
"""

from __future__ import annotations

import fnmatch
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ENV",
    "Fault",
    "FaultSpecError",
    "active",
    "after_write",
    "at_batch",
    "before_rename",
    "hold_batch",
    "parse",
    "reset",
]

ENV = "VISIONTUNE_FAULT"

_FORMS = (
    "kill-at-batch:EPOCH:BATCH, kill-before-rename:NAME[:COUNT], kill-after-write:NAME[:COUNT] "
    "(EPOCH, BATCH and COUNT whole numbers from 1) or hold-batch:PATH"
)
_WRITE_KINDS = ("kill-before-rename", "kill-after-write")


class FaultSpecError(ValueError):
    """``VISIONTUNE_FAULT`` holds something that is not a fault this module knows."""


@dataclass(frozen=True)
class Fault:
    """One parsed fault: ``kind`` and either ``epoch``/``batch`` or ``name``/``count`` (1-based)."""

    kind: str
    epoch: int = 0
    batch: int = 0
    name: str = ""
    count: int = 1


def _number(text: str, what: str, value: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise FaultSpecError(
            f"{ENV}={value!r}: {what} must be a whole number from 1 (1-based), got {text!r}; "
            f"expected {_FORMS}"
        )
    return int(text)


def parse(value: str | None) -> Fault | None:
    """The fault ``value`` describes, None for unset/empty; ``FaultSpecError`` if malformed."""
    if not value or not value.strip():
        return None
    kind, *args = value.strip().split(":")
    if kind == "kill-at-batch" and len(args) == 2:
        epoch, batch = _number(args[0], "EPOCH", value), _number(args[1], "BATCH", value)
        return Fault(kind, epoch=epoch, batch=batch)
    if kind == "hold-batch" and args and ":".join(args):
        return Fault(kind, name=":".join(args))
    if kind in _WRITE_KINDS and len(args) in (1, 2) and args[0]:
        count = _number(args[1], "COUNT", value) if len(args) == 2 else 1
        return Fault(kind, name=args[0], count=count)
    raise FaultSpecError(f"{ENV}={value!r} is not a fault; expected {_FORMS}")


_UNREAD = object()
_fault: Fault | None | object = _UNREAD
_writes = 0  # matching atomic writes seen so far in this process
_lock = threading.Lock()


def active() -> Fault | None:
    """The fault from ``$VISIONTUNE_FAULT``, read and parsed on the first call only."""
    global _fault
    if _fault is _UNREAD:
        _fault = parse(os.environ.get(ENV))
    return _fault  # type: ignore[return-value]


def reset() -> None:
    """Forget the parsed variable and the write count (tests that change the variable)."""
    global _fault, _writes
    _fault, _writes = _UNREAD, 0


def _kill(what: str) -> None:
    sys.stderr.write(f"{ENV}: {what}; killing process {os.getpid()} with SIGKILL\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def at_batch(epoch_index: int, batch_index: int) -> None:
    """Hook at the start of each training batch; takes the loop's 0-based epoch and batch."""
    fault = active()
    if fault is None or fault.kind != "kill-at-batch":
        return
    if (epoch_index + 1, batch_index + 1) == (fault.epoch, fault.batch):
        _kill(f"kill-at-batch: epoch {fault.epoch}, batch {fault.batch} (1-based)")


def _write_hook(kind: str, path: str | Path) -> None:
    global _writes
    fault = active()
    if fault is None or fault.kind != kind or not fnmatch.fnmatchcase(Path(path).name, fault.name):
        return
    with _lock:
        _writes += 1
        reached = _writes == fault.count
    if reached:
        _kill(f"{kind}: write {fault.count} of a file matching {fault.name!r} ({path})")


def before_rename(path: str | Path) -> None:
    """Hook in an atomic write to ``path``: temporary file complete, not yet renamed."""
    _write_hook("kill-before-rename", path)


def after_write(path: str | Path) -> None:
    """Hook in an atomic write to ``path``: renamed into place (committed)."""
    _write_hook("kill-after-write", path)


def hold_batch(poll_s: float = 0.01) -> None:
    """Hook before each forward pass of a server: with ``hold-batch:PATH``, return only once the
    file PATH exists (the test creates it to let the held requests go on)."""
    fault = active()
    if fault is None or fault.kind != "hold-batch":
        return
    while not Path(fault.name).exists():
        time.sleep(poll_s)
