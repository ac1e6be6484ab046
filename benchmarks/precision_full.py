"""`full` fine-tunes predicting in fp32 and in bf16: does bf16 inference change TEST accuracy?

    python benchmarks/precision_full.py [--datasets yoga,elpv,textures] [--seeds 0,1,2]
                                        [--work /tmp/vt-precision-full]

`--precision auto` gives bf16 inference on a CPU with fast native bf16 (training stays fp32;
``visiontune.engine.precision``). `benchmarks/precision.py` measures that on `head` and
`partial`; this script adds `full`, the strategy that moves every weight away from the
pretrained ones. For each dataset and seed, `visiontune train DATA --strategy full --seed S`
(every other option at its default) runs in its own process; its TEST split is then evaluated
with `visiontune.evaluate(RUN, TEST, precision=P)` for P = fp32 and bf16, alternating which goes
first with the seed. Reported: TEST accuracy per precision, mean ± standard deviation over the
seeds, the per-seed difference and how many TEST images changed their predicted class. Results
(JSON lines) are kept in --work, so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import ResultLog, write_section  # noqa: E402
from strategies import dataset_path  # noqa: E402

PRECISIONS = ("fp32", "bf16")


def _test_folder(data: Path) -> Path:
    return data / ("TEST" if (data / "TEST").is_dir() else "test")


def run_one(name: str, seed: int, work: Path) -> dict:
    """One `full` run trained with the defaults, its TEST split evaluated in both precisions."""
    import visiontune

    data = dataset_path(name, work)
    out = work / "runs" / f"{name}-seed{seed}"
    if not (out / "metrics.json").exists():  # a run an interrupted benchmark finished is kept
        subprocess.run(
            [sys.executable, "-m", "visiontune", "train", str(data), "--strategy", "full"]
            + ["--seed", str(seed), "--out", str(out), "--overwrite", "--no-progress"]
            + ["--cache-dir", str(work / "cache")],
            check=True,
            capture_output=True,
        )
    order = PRECISIONS if seed % 2 == 0 else PRECISIONS[::-1]
    row: dict = {"dataset": name, "seed": seed}
    predicted = {}
    for precision in order:
        result = visiontune.evaluate(out, _test_folder(data), precision=precision)
        row[precision] = result["accuracy"]
        predicted[precision] = visiontune.predict(out, [_test_folder(data)], precision=precision)
    row["changed"] = sum(
        a["top"][0]["class"] != b["top"][0]["class"]
        for a, b in zip(predicted["fp32"], predicted["bf16"], strict=True)
    )
    row["images"] = len(predicted["fp32"])
    row["run_precision"] = json.loads((out / "config.json").read_text()).get("precision")
    return row


def _pct(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.2f} %"
    return f"{100 * statistics.mean(values):.2f} % ± {100 * statistics.stdev(values):.2f}"


def _row(name: str, rows: list[dict]) -> str:
    of = [r for r in rows if r["dataset"] == name]
    if not of:
        return f"| {name} | not run | | | | |"
    gaps = ", ".join(f"{100 * (r['bf16'] - r['fp32']):+.2f}" for r in of)
    changed = ", ".join(f"{r['changed']}/{r['images']}" for r in of)
    return (
        f"| {name} | {_pct([r['fp32'] for r in of])} | {_pct([r['bf16'] for r in of])} | "
        f"{gaps} | {changed} | {len(of)} |"
    )


def report(names: list[str], rows: list[dict]) -> str:
    return (
        "## Precision: `full` fine-tunes predicting in fp32 and in bf16\n\n"
        "`visiontune train DATA --strategy full --seed S` with every other option at its "
        "default (fp32 training; validation and calibration in the `auto` precision), then "
        "`visiontune.evaluate(RUN, TEST, precision=P)` in fp32 and in bf16, the two alternating "
        "with the seed. Seeds draw the validation split, the initialisation and the "
        "augmentation. Datasets as in the strategies section.\n\n"
        "| dataset | TEST fp32 | TEST bf16 | bf16 − fp32 per seed (points) | TEST images whose "
        "class changed, per seed | seeds |\n|---|---|---|---|---|---|\n"
        + "\n".join(_row(name, rows) for name in names)
        + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", default="yoga,elpv,textures")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--work", default="/tmp/vt-precision-full")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log = ResultLog(work / "results.jsonl")
    names, seeds = args.datasets.split(","), [int(s) for s in args.seeds.split(",")]
    for name in names:
        for seed in seeds:
            if not log.has(dataset=name, seed=seed):
                log.add(run_one(name, seed, work))
    command = f"python benchmarks/precision_full.py --datasets {args.datasets} --seeds {args.seeds}"
    write_section("precision-full", report(names, log.rows), command=command)


if __name__ == "__main__":
    main()
