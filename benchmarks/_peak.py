"""Run ``-m MODULE ARGS...`` or ``-c CODE ARGS...`` in this process and, at exit, print its own
peak resident memory and its children's to stderr as ``PEAK <self MiB> <children MiB>``.

``/usr/bin/time``'s ``%M`` cannot tell them apart: Linux reports the larger of a process's own
peak and its waited-for children's, and a forked DataLoader worker's resident set counts the
parent pages it shares copy-on-write, so the workers can set that figure.
"""

from __future__ import annotations

import atexit
import resource
import runpy
import sys


def _report() -> None:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"PEAK {own:.1f} {children:.1f}", file=sys.stderr, flush=True)


def main() -> None:
    mode, target, *args = sys.argv[1:]
    atexit.register(_report)
    if mode == "-m":
        sys.argv = [target, *args]
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    elif mode == "-c":
        sys.argv = ["-c", *args]
        exec(compile(target, "<string>", "exec"), {"__name__": "__main__"})
    else:
        raise SystemExit(f"usage: {sys.argv[0]} -m MODULE ARGS... | -c CODE ARGS...")


if __name__ == "__main__":
    main()
