"""Data checks on yoga: files per second of the header + hash path and of the full check.

    python benchmarks/checks.py [--rounds 3]

``check_splits(decode=False)`` is what ``train`` runs before anything else (headers parsed from
the bytes read for the content hash; no pixel decoded); ``decode=True`` is ``visiontune check``
(each distinct content decoded once at reduced size: truncation, perceptual hashes, near
duplicates). Each in this process (workers 0) and with the default worker processes, alternating,
round after round; the files are in the page cache after the first round (the first is left
out). Then ``visiontune check`` as a command, start and imports included.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import YOGA, write_section  # noqa: E402


def _timed(splits, *, decode: bool, workers: int | None) -> float:
    from visiontune.data.checks import check_splits

    start = time.perf_counter()
    report = check_splits(
        splits, decode=decode, workers=workers, near_distance=None if not decode else 10
    )
    return len(report.files) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from visiontune.data.checks import default_check_workers
    from visiontune.data.folder import scan_folder

    splits = scan_folder(YOGA)
    files = len(splits.train) + len(splits.val) + len(splits.test)
    configs = [(d, w) for d in (False, True) for w in (0, None)]
    speeds: dict = {c: [] for c in configs}
    for r in range(args.rounds + 1):
        for decode, workers in configs:
            speed = _timed(splits, decode=decode, workers=workers)
            if r:
                speeds[(decode, workers)].append(speed)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "visiontune", "check", str(YOGA)], check=False, capture_output=True
    )
    command = time.perf_counter() - start
    rows = ["| path | processes | files/s |", "|---|---|---|"]
    for (decode, workers), values in speeds.items():
        what = (
            "full check (decode once per content)" if decode else "header + hash (train's checks)"
        )
        procs = "this one" if workers == 0 else f"{default_check_workers()} workers"
        rows.append(f"| {what} | {procs} | {statistics.median(values):,.0f} |")
    body = (
        "## Data checks (yoga, page cache warm)\n\n"
        f"{files} yoga files; medians of {args.rounds} alternating rounds after a first, "
        "uncounted one.\n\n" + "\n".join(rows) + "\n\n"
        f"`visiontune check yoga` as a command: {command:.2f} s wall ({files / command:,.0f} "
        "files/s, process start and imports included)."
    )
    write_section("checks", body, command="python benchmarks/checks.py")
    print(body)


if __name__ == "__main__":
    main()
