"""Atomic file writes: a temporary file in the same folder, fsynced, then renamed over the target.

A process killed at any moment leaves either the old file or the new one, never a torn one. What
a kill does leave is the temporary file, ``.<target name>.<writer>-<pid>-<random>.tmp``; the next
atomic write to the same target removes those of dead writers (see ``remove_stale_temps``).

The result gets the permissions of any new file (``0o666 & ~umask``), not the owner-only ``0o600``
of ``tempfile.mkstemp``: a model written by one user is meant to be read by a serving process that
runs as another.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from . import _faults

__all__ = ["STALE_AFTER_S", "atomic_write", "atomic_write_text", "remove_stale_temps"]

# A temporary file whose writer cannot be checked (another machine, another pid namespace, or a
# name from before writers were recorded) is removed only once it is this old: a write takes
# seconds to minutes (an ONNX export with its parity check), never an hour.
STALE_AFTER_S = 3600


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(temporary_path)``, then move the result to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.{_writer_tag()}-{os.getpid()}-", suffix=".tmp"
    )
    os.close(fd)
    try:
        write(tmp)
        # After ``write``: writers such as safetensors replace the file rather than fill it, and
        # the new one has mkstemp's owner-only mode again.
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        _faults.before_rename(path)  # test hook: no-op unless $VISIONTUNE_FAULT says
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _faults.after_write(path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def remove_stale_temps(path: str | Path, *, now: float | None = None) -> list[Path]:
    """Delete temporary files that killed atomic writes to ``path`` left behind; return them.

    Only names of our own pattern for this very target are considered, and of those only files
    no live writer can still be renaming (a concurrent writer to the same target is safe):

    - written on this machine in this pid namespace (same writer tag) by a process that is no
      longer running: removed at once. A live pid, even one reused by an unrelated process,
      keeps the file, which errs on the side of keeping;
    - anything else (another host sharing the folder, another container, an older name without
      a writer tag): a pid means nothing here, so the file goes only when its last change is
      ``STALE_AFTER_S`` old.
    """
    path = Path(path)
    now = time.time() if now is None else now
    pattern = re.compile(
        rf"\.{re.escape(path.name)}\.(?:(?P<tag>[0-9a-f]{{8}})-(?P<pid>\d+)-)?[a-z0-9_]{{8}}\.tmp"
    )
    removed = []
    with contextlib.suppress(OSError):  # an unlistable folder: the write itself will say why
        for entry in os.scandir(path.parent):
            match = pattern.fullmatch(entry.name)
            if match and _is_stale(entry, match, now):
                with contextlib.suppress(OSError):  # gone already, or not ours to delete
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


def _is_stale(entry: os.DirEntry, match: re.Match, now: float) -> bool:
    if match["tag"] == _writer_tag() and int(match["pid"]) != os.getpid():
        return not _pid_alive(int(match["pid"]))
    try:
        return now - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER_S
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, OverflowError):
        return True  # another user's process, or a pid we cannot ask about: assume alive
    return True


_TAG: list[str] = []


def _writer_tag() -> str:
    """8 hex digits naming this machine's boot and pid namespace: where a pid is meaningful."""
    if not _TAG:
        parts = [socket.gethostname()]
        for source in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
            with contextlib.suppress(OSError):
                parts.append(
                    os.readlink(source) if source.endswith("/pid") else Path(source).read_text()
                )
        _TAG.append(hashlib.sha256("|".join(parts).encode()).hexdigest()[:8])
    return _TAG[0]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
