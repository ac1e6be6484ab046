"""Time to accuracy with every default: `visiontune train yoga` and nothing else.

    python benchmarks/time_to_accuracy.py [--data PATH] [--runs 1]

Each run is its own process with a cold feature cache; the wall time is measured from launching
it to its exit, so Python's start and the imports count. Target (issue 18): >= 99.0 % TEST
within 90 s. Reported: wall time, TEST accuracy, what `auto` tried and kept, and the time the
run itself recorded for each candidate.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import YOGA, timed_train, write_section  # noqa: E402

TARGET_ACCURACY, TARGET_SECONDS = 0.99, 90


def run_defaults(data: Path, work: Path) -> dict:
    out = work / "run"
    wall, load, proc = timed_train(data, out, work / "cache", "--overwrite")
    proc.check_returncode()
    metrics = json.loads((out / "metrics.json").read_text())
    decision = metrics.get("auto") or {}
    return {
        "wall_s": wall,
        "load_before": load,
        "test_acc": metrics["test"]["accuracy"],
        "kept": decision.get("kept", metrics.get("strategy")),
        "candidates": {c["name"]: c["seconds"] for c in decision.get("candidates", [])},
    }


def report(rows: list[dict]) -> str:
    lines = [
        "## Time to accuracy with the defaults: `visiontune train yoga`\n",
        "Every option at its default (`--strategy auto`, `--precision auto`, "
        "`--activation-views 2`); each run its own process with a cold feature cache, wall time "
        "from launch to exit. Target: ≥ 99.0 % TEST within 90 s.\n",
        "| run | wall | TEST accuracy | candidates (their own seconds) → kept | load before | "
        "target |",
        "|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows, 1):
        met = r["wall_s"] <= TARGET_SECONDS and r["test_acc"] >= TARGET_ACCURACY
        tried = ", ".join(f"{name} ({s:.0f} s)" for name, s in r["candidates"].items())
        lines.append(
            f"| {i} | {r['wall_s']:.0f} s | {100 * r['test_acc']:.2f} % | {tried} → "
            f"**{r['kept']}** | {r['load_before']} | {'met' if met else '**not met**'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(YOGA))
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    rows = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="vt-defaults-") as tmp:
            rows.append(run_defaults(Path(args.data), Path(tmp)))
        print(json.dumps(rows[-1]), flush=True)
    command = "python benchmarks/time_to_accuracy.py"
    command += f" --data {args.data}" if args.data != str(YOGA) else ""
    command += f" --runs {args.runs}" if args.runs != 1 else ""
    write_section("time-to-accuracy", report(rows), command=command)


if __name__ == "__main__":
    main()
