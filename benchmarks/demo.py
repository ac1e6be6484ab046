"""Wall time of `visiontune demo` (the README's first command, after installation), cold then warm.

python benchmarks/demo.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402


def main() -> None:
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "VISIONTUNE_CACHE": f"{tmp}/cache"}
        for run in ("cold", "warm"):
            start = time.perf_counter()
            proc = subprocess.run(
                ["visiontune", "demo", "--no-progress", "--out", f"{tmp}/{run}"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            times.append(time.perf_counter() - start)
            accuracy = next(
                line for line in proc.stdout.splitlines() if line.startswith("test accuracy")
            )
    body = (
        "## `visiontune demo`\n\n"
        f"Wall time of the whole command, process start included: {times[0]:.1f} s with an empty "
        "cache (builds the lfw_subset image folder, extracts features, fits the head, evaluates), "
        f"{times[1]:.1f} s when run again. Last run: {accuracy}. Target: under 3 minutes.\n"
    )
    write_section("demo", body, command="python benchmarks/demo.py")
    print(body)


if __name__ == "__main__":
    main()
