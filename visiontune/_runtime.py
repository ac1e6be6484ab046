"""Process-level speed settings: a glibc allocator that does not page-fault, threads, device.

Measured on this project's 2-core machine: with glibc's default thresholds, eager PyTorch frees
large activation buffers back to the OS after every op and faults them in again (~0.6 M minor
faults per EfficientNet-Lite0 forward, up to half the CPU time). Raising the mmap and trim
thresholds keeps those pages in the heap. ``mallopt`` can be called at any time, so this works
from inside Python without LD_PRELOAD; with jemalloc/tcmalloc preloaded it is a harmless no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
import time
from pathlib import Path

import torch

__all__ = [
    "configure_threads",
    "cpu_info",
    "process_started",
    "release_free_memory",
    "resolve_device",
    "tune_allocator",
    "tune_worker_allocator",
]

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_TUNED = False

# A forked DataLoader worker inherits the tuned thresholds, and with them the parent's retained
# free heap: each chunk of it the worker reuses is copied on write into its own memory, and what
# it frees stays with it up to the 2 GiB trim threshold. A worker decodes and augments one image
# at a time (buffers under a few MB, a batch of tens of MB inside the kept 64 MiB top pad), so
# moderate thresholds cost it no page faults that show: BENCHMARKS.md, "DataLoader worker
# memory" (``benchmarks/worker_memory.py``), measures its private memory and speed both ways.
WORKER_MMAP_THRESHOLD = 16 << 20
WORKER_TRIM_THRESHOLD = 256 << 20
# What glibc adds to each growth of the heap and leaves free at its top after a trim, in the
# parent and so in a worker it forks (the worker does not reset it).
# glibc serves even a request above the mmap threshold from free heap where a chunk fits it, so
# a worker still fills (and keeps, below its trim threshold) up to this much of what it inherits.
TOP_PAD = 64 << 20


@functools.cache  # find_library runs ldconfig in a subprocess; a forked worker inherits this
def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def tune_allocator(*, mmap_threshold: int = 1 << 30, trim_threshold: int = 1 << 31) -> bool:
    """Keep freed memory in glibc's heap instead of returning it to the OS. True if applied."""
    global _TUNED
    if _TUNED or not sys.platform.startswith("linux") or os.environ.get("VISIONTUNE_NO_MALLOPT"):
        return _TUNED
    try:
        libc = _libc()
        # Some glibc builds cap M_MMAP_THRESHOLD at 32 MiB (64-bit) and refuse larger values
        # (this machine's 2.36 takes 1 GiB); the cap is the most they allow.
        for value in (mmap_threshold, 32 << 20):
            if libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(min(value, 2**31 - 1))):
                break
        libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(min(trim_threshold, 2**31 - 1)))
        libc.mallopt(_M_TOP_PAD, ctypes.c_int(TOP_PAD))
        _TUNED = True
    except (OSError, AttributeError):
        pass  # not glibc (musl, macOS): nothing to tune
    return _TUNED


def tune_worker_allocator() -> bool:
    """In a forked loader worker of a tuned process: moderate mmap and trim thresholds (see
    ``WORKER_MMAP_THRESHOLD``), so the worker maps its large buffers and unmaps them at free, and
    hands back its heap's top beyond the trim threshold, instead of keeping up to 2 GiB.
    True if applied; a no-op where the parent was not tuned."""
    if not _TUNED:
        return False
    try:
        libc = _libc()
        libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(WORKER_MMAP_THRESHOLD))
        libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(WORKER_TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False
    return True


def release_free_memory() -> bool:
    """Hand the heap's free pages back to the OS (glibc ``malloc_trim``), which the tuned
    thresholds otherwise keep: a long-running server calls it when idle, so memory freed after
    a burst of batches of every size does not stay with the process. True if it ran."""
    if not _TUNED:
        return False
    try:
        _libc().malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; asking for ``cuda`` without one is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from .errors import VisiontuneError

        raise VisiontuneError("--device cuda was asked for, but PyTorch sees no CUDA GPU")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        from .errors import VisiontuneError

        raise VisiontuneError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def configure_threads() -> None:
    """Use every core this process may run on (containers often report more than they give)."""
    if hasattr(os, "sched_getaffinity"):
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))


def process_started() -> float:
    """When this process started, on the ``time.monotonic()`` clock: a ``--time-budget`` counts
    from there, so Python's start and the imports (torch: seconds) are inside it.

    Linux gives the start in ``/proc/self/stat`` (clock ticks since boot; ``/proc/uptime`` is
    seconds since boot); elsewhere, the moment this module was first imported."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat(5)
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _IMPORTED
    return time.monotonic() - max(0.0, uptime - started)


_IMPORTED = time.monotonic()


def cpu_info(field: str) -> str | None:
    """The first ``field`` line of ``/proc/cpuinfo`` (``"model name"``, ``"flags"``), or None
    where there is none (not Linux, or not reported)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == field:
            return value.strip()
    return None
