"""`partial` on cached activations against `partial` recomputing the frozen stages every epoch.

    python benchmarks/activations.py [--datasets yoga,elpv] [--seeds 0,1,2] [--views 2]

For each dataset and seed, `visiontune train DATA --strategy partial --seed S` runs twice in its
own process, with a cold feature cache each: once with `--activation-views 0` (today's image
path) and once with `--activation-views K`; the order alternates with the seed, so a machine
that slows down mid-run does not favour one side. Reported per mode: the mean epoch time (the
history's `seconds`: training plus validation), the one-off activation extraction, the process's
wall time and TEST accuracy (mean and spread over the seeds). Target: epoch time >= 2x faster
at equal accuracy within seed noise. Results (JSON lines) are kept in --work, so an
interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import YOGA, ResultLog, write_section  # noqa: E402
from strategies import dataset_path  # noqa: E402


def data_of(name: str, work: Path) -> Path:
    return YOGA if name == "yoga" else dataset_path(name, work)


def run_one(data: Path, name: str, seed: int, views: int, work: Path) -> dict:
    tag = f"{name}-seed{seed}-views{views}"
    out, cache = work / "runs" / tag, work / "cache" / tag
    load = round(os.getloadavg()[0], 2)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "visiontune", "train", str(data), "--strategy", "partial"]
        + ["--seed", str(seed), "--activation-views", str(views), "--out", str(out)]
        + ["--cache-dir", str(cache), "--no-progress", "--overwrite"],
        capture_output=True,
        text=True,
    )
    wall = time.monotonic() - started
    row = {"dataset": name, "seed": seed, "views": views, "load_before": load}
    if proc.returncode != 0:
        return {**row, "error": proc.stderr.strip().splitlines()[-1][:200]}
    metrics = json.loads((out / "metrics.json").read_text())
    history = json.loads((out / "history.json").read_text())
    cached = metrics.get("activation_cache") or {}
    return {
        **row,
        "wall_s": wall,
        "epoch_s": statistics.mean(h["seconds"] for h in history),
        "activations_s": cached.get("seconds", 0.0) if cached.get("used") else 0.0,
        "used": bool(cached.get("used")),
        "test_acc": metrics["test"]["accuracy"],
    }


def _stats(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.2f} %"
    return f"{100 * statistics.mean(values):.2f} % ± {100 * statistics.stdev(values):.2f}"


def _rows(results: list[dict], name: str, views: int) -> list[str]:
    def of(k: int) -> list[dict]:
        return [r for r in results if r["dataset"] == name and r["views"] == k and "error" not in r]

    base, cached = of(0), of(views)
    if not base or not cached:
        return [f"| {name} | incomplete | | | | |"]
    epoch0 = statistics.mean(r["epoch_s"] for r in base)
    lines = []
    for label, rows in (("images every epoch", base), (f"{views} cached views", cached)):
        epoch = statistics.mean(r["epoch_s"] for r in rows)
        lines.append(
            f"| {name} | {label} | {epoch:.1f} s ({epoch0 / epoch:.2f}×) | "
            f"{statistics.mean(r['activations_s'] for r in rows):.0f} s | "
            f"{statistics.mean(r['wall_s'] for r in rows):.0f} s | "
            f"{_stats([r['test_acc'] for r in rows])} ({len(rows)} seeds) |"
        )
    return lines


def _verdict(results: list[dict], names: list[str], views: int) -> str:
    """Whether the 2x target holds, and what the cached epoch's share says about why not."""
    lines = []
    for name in names:
        base = [r["epoch_s"] for r in results if r["dataset"] == name and r["views"] == 0]
        cached = [r["epoch_s"] for r in results if r["dataset"] == name and r["views"] == views]
        if not base or not cached:
            continue
        ratio = statistics.mean(base) / statistics.mean(cached)
        share = 100 / ratio
        lines.append(
            f"- {name}: {ratio:.2f}× — target {'met' if ratio >= 2 else '**missed**'}; the "
            f"epoch on cached activations, which runs only the trainable stages and the head, "
            f"still costs {share:.0f} % of the image path's epoch: that share is the "
            "trainable top's forward and backward, which caching cannot remove."
        )
    return "\nEpoch-time target (≥ 2×):\n\n" + "\n".join(lines) + "\n" if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", default="yoga,elpv")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--work", default="/tmp/vt-activations")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log = ResultLog(work / "results.jsonl")
    names, seeds = args.datasets.split(","), [int(s) for s in args.seeds.split(",")]
    for name in names:
        data = data_of(name, work)
        for seed in seeds:
            order = (0, args.views) if seed % 2 == 0 else (args.views, 0)
            for views in order:
                if not log.has(dataset=name, seed=seed, views=views):
                    log.add(run_one(data, name, seed, views, work))
    done = log.rows
    body = (
        "## Fine-tuning on cached activations: `partial`, frozen stages once vs every epoch\n\n"
        "`visiontune train DATA --strategy partial --seed S` with `--activation-views 0` "
        f"(the frozen stages recomputed from augmented images every epoch) and "
        f"`--activation-views {args.views}` (their output computed once per view, epoch e "
        f"on view e mod {args.views}); each run its own process with a cold feature cache, the "
        "two alternating per seed. Epoch: the history's mean `seconds` (training + "
        "validation), ratio against the image path; activations: the one-off extraction of "
        "the cached views and validation, not inside the epochs; wall: the process from "
        "start to exit. Target: epoch time >= 2x at equal accuracy within seed noise.\n\n"
        "| dataset | frozen stages | epoch | activations | wall | TEST accuracy |\n"
        "|---|---|---|---|---|---|\n"
        + "\n".join(line for name in names for line in _rows(done, name, args.views))
        + "\n"
    )
    body += _verdict(done, names, args.views)
    command = (
        f"python benchmarks/activations.py --datasets {args.datasets} --seeds {args.seeds} "
        f"--views {args.views}"
    )
    write_section("activations", body, command=command)


if __name__ == "__main__":
    main()
