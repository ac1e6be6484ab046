"""Does `--time-budget` hold? `visiontune train yoga --time-budget B` for several budgets.

    python benchmarks/budget.py [--budgets 60,120,300] [--data PATH]

Each budget runs `visiontune train DATA --time-budget B` (strategy auto, every other option at
its default) as its own process with a cold feature cache; the wall time is measured from
launching the process to its exit, so Python's start and the imports are inside it, as they are
inside the budget. Target: every run ends within 10 % of its budget, and TEST accuracy rises (or
holds) with the budget.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import YOGA, timed_train, write_section  # noqa: E402


def run_budget(data: Path, budget: float, work: Path) -> dict:
    out, cache = work / f"run-{budget:g}", work / f"cache-{budget:g}"
    wall, load, proc = timed_train(data, out, cache, "--time-budget", f"{budget:g}s")
    if proc.returncode != 0:
        return {"budget": budget, "error": proc.stderr.strip().splitlines()[-1][:200]}
    metrics = json.loads((out / "metrics.json").read_text())
    decision = metrics.get("auto") or {}
    return {
        "budget": budget,
        "wall_s": wall,
        "test_acc": metrics["test"]["accuracy"],
        "kept": decision.get("kept"),
        "tried": [c["name"] for c in decision.get("candidates", [])],
        "epochs": len(json.loads((out / "history.json").read_text())),
        "reason": (decision.get("reasons") or [""])[-1],
        "load_before": load,
    }


def _row(r: dict) -> str:
    if "error" in r:
        return f"| {r['budget']:g} s | failed: {r['error']} | | | | |"
    over = 100 * (r["wall_s"] / r["budget"] - 1)
    ok = "met" if over <= 10 else "**missed**"
    return (
        f"| {r['budget']:g} s | {r['wall_s']:.0f} s ({over:+.0f} %, {ok}) | "
        f"{100 * r['test_acc']:.2f}% | {', '.join(r['tried'])} → **{r['kept']}** | "
        f"{r['epochs']} | {r['load_before']} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budgets", default="60,120,300")
    parser.add_argument("--data", default=str(YOGA))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vt-budget-"))
    results = []
    try:
        for budget in (float(b) for b in args.budgets.split(",")):
            results.append(run_budget(Path(args.data), budget, work))
            print(json.dumps(results[-1]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rising = all(
        a["test_acc"] <= b["test_acc"] + 1e-9
        for a, b in zip(results, results[1:], strict=False)
        if "error" not in a and "error" not in b
    )
    body = (
        "## Time budget: `visiontune train yoga --time-budget B`\n\n"
        "Strategy `auto` with every other option at its default, each budget in its own process "
        "with a cold feature cache; wall time from launching the process to its exit (Python's "
        "start and the imports are inside the budget too). Target: each run within 10 % of its "
        "budget, TEST accuracy rising with the budget. Epochs: rows of the kept model's "
        "history (a head's rows are its C grid).\n\n"
        "| budget | wall (vs budget) | TEST accuracy | candidates → kept | epochs | load before |\n"
        "|---|---|---|---|---|---|\n"
        + "\n".join(_row(r) for r in results)
        + f"\n\nAccuracy {'rises or holds' if rising else '**does not rise**'} with the budget; "
        "the reasons `auto` gave:\n\n"
        + "\n".join(f"- {r['budget']:g} s: {r.get('reason', '')}" for r in results)
        + "\n"
    )
    write_section("budget", body, command=f"python benchmarks/budget.py --budgets {args.budgets}")


if __name__ == "__main__":
    main()
