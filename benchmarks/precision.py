"""bf16 against fp32: speed of the forward pass and of extraction, and what it does to accuracy.

    python benchmarks/precision.py [--datasets yoga,elpv,textures] [--seeds 0,1,2]
                                   [--runs /tmp/vt-activations/runs] [--train-seeds 0,1]

What `--precision auto` rests on (``visiontune.engine.precision``), measured in one run:

1. **Speed**, alternating fp32 and bf16 rounds in this process (tuned allocator,
   `channels_last`): the Lite0 forward on preloaded tensors (batch 32) and end-to-end
   extraction of the whole yoga set (decode included), as fractions of the 301 images/s fp32
   forward limit measured for issue 3 (no bf16 limit was measured here).
2. **`head` accuracy**: `visiontune.fit(strategy="head", precision=P, seed=S)` on each dataset,
   every seed, fp32 and bf16 (features extracted in P, one cache per precision).
3. **Fine-tuned models predicting in bf16**: the `partial` runs of `benchmarks/activations.py`
   (trained in fp32), TEST accuracy evaluated with `precision="fp32"` and `"bf16"`.
4. **Training in bf16**: `visiontune train yoga --strategy partial --precision bf16`, against
   the same seeds' fp32-trained runs in --runs.
`benchmarks/time_to_accuracy.py` times `visiontune train yoga` with every default (once part
of this script).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import YOGA, write_section  # noqa: E402
from strategies import dataset_path  # noqa: E402

PHYSICAL_LIMIT = 301.0
BATCH = 32


def _pct(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.2f} %"
    return f"{100 * statistics.mean(values):.2f} % ± {100 * statistics.stdev(values):.2f}"


def speed(rounds: int = 3) -> dict:
    """Images/s of the forward pass and of yoga's extraction, fp32 and bf16 alternating."""
    import torch

    from visiontune import _runtime
    from visiontune.backbones import create_backbone
    from visiontune.data.folder import scan_folder
    from visiontune.data.loader import default_workers
    from visiontune.engine.loop import Runtime
    from visiontune.engine.precision import Precision, autocast
    from visiontune.features.extract import extract_features

    _runtime.tune_allocator()
    _runtime.configure_threads()
    backbone = create_backbone("efficientnet_lite0").eval().to(memory_format=torch.channels_last)
    x = torch.randn(BATCH, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    splits = scan_folder(YOGA)
    samples = splits.train + splits.val + splits.test
    out: dict = {"forward": {"fp32": [], "bf16": []}, "extract": {"fp32": [], "bf16": []}}
    for _ in range(rounds):
        for name in ("fp32", "bf16"):
            with torch.inference_mode(), autocast(x.device, name):
                backbone(x)
                started = time.perf_counter()
                for _ in range(4):
                    backbone(x)
            out["forward"][name].append(4 * BATCH / (time.perf_counter() - started))
    for _ in range(2):
        for name in ("fp32", "bf16"):
            runtime = Runtime(progress=False, precision=Precision(name, name, name, ""))
            started = time.perf_counter()
            fs = extract_features(
                backbone, samples, runtime=runtime, batch_size=BATCH, workers=default_workers()
            )
            out["extract"][name].append(len(fs) / (time.perf_counter() - started))
    out["images"] = len(samples)
    print("speed", json.dumps(out), flush=True)
    return out


def heads(names: list[str], seeds: list[int], work: Path) -> dict:
    import visiontune

    results: dict = {}
    for name in names:
        data = YOGA if name == "yoga" else dataset_path(name, work)
        for seed in seeds:
            for precision in ("fp32", "bf16") if seed % 2 == 0 else ("bf16", "fp32"):
                run = visiontune.fit(
                    data,
                    strategy="head",
                    precision=precision,
                    seed=seed,
                    cache_dir=str(work / f"cache-{precision}"),
                    out=str(work / "heads" / f"{name}-{precision}-{seed}"),
                    overwrite=True,
                    progress=False,
                )
                results.setdefault(name, {}).setdefault(precision, []).append(
                    run.metrics["test"]["accuracy"]
                )
        print("head", name, json.dumps(results[name]), flush=True)
    return results


def finetuned_inference(runs: Path) -> dict:
    """TEST accuracy of each fp32-trained partial run predicting in fp32 and in bf16."""
    import visiontune

    out: dict = {}
    for run in sorted(runs.glob("*-views2")) if runs.is_dir() else []:
        config = json.loads((run / "config.json").read_text())
        data = Path(config["training"]["data"])
        test = data / ("TEST" if (data / "TEST").is_dir() else "test")
        dataset = run.name.split("-seed")[0]
        for precision in ("fp32", "bf16"):
            metrics = visiontune.evaluate(run, test, precision=precision)
            out.setdefault(dataset, {}).setdefault(precision, []).append(metrics["accuracy"])
    print("finetuned", json.dumps(out), flush=True)
    return out


def _train(args: list[str]) -> tuple[float, dict]:
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "visiontune", "train", *args, "--no-progress"],
        check=True,
        capture_output=True,
    )
    wall = time.monotonic() - started
    out = Path(args[args.index("--out") + 1])
    return wall, json.loads((out / "metrics.json").read_text())


def bf16_training(seeds: list[int], runs: Path, work: Path) -> dict:
    out: dict = {"bf16": [], "fp32": [], "bf16_epoch_s": [], "fp32_epoch_s": []}
    for seed in seeds:
        target = work / "bf16-train" / f"yoga-{seed}"
        args = [str(YOGA), "--strategy", "partial", "--precision", "bf16", "--seed", str(seed)]
        args += ["--out", str(target), "--overwrite", "--cache-dir", str(work / f"cache-t{seed}")]
        _, metrics = _train(args)
        out["bf16"].append(metrics["test"]["accuracy"])
        history = json.loads((target / "history.json").read_text())
        out["bf16_epoch_s"].append(statistics.mean(h["seconds"] for h in history))
        reference = runs / f"yoga-seed{seed}-views2"
        if (reference / "metrics.json").exists():
            base = json.loads((reference / "metrics.json").read_text())
            out["fp32"].append(base["test"]["accuracy"])
            history = json.loads((reference / "history.json").read_text())
            out["fp32_epoch_s"].append(statistics.mean(h["seconds"] for h in history))
    print("bf16 training", json.dumps(out), flush=True)
    return out


def _speed_rows(s: dict) -> list[str]:
    rows = []
    for what, label in (
        ("forward", f"forward, preloaded tensors, batch {BATCH}"),
        ("extract", f"extraction, whole yoga set, decode included ({s['images']} images)"),
    ):
        fp32, bf16 = (statistics.median(s[what][k]) for k in ("fp32", "bf16"))
        rows.append(
            f"| {label} | {fp32:.1f} ({100 * fp32 / PHYSICAL_LIMIT:.0f} %) | "
            f"{bf16:.1f} ({100 * bf16 / PHYSICAL_LIMIT:.0f} %) | {bf16 / fp32:.2f}× |"
        )
    return rows


def _accuracy_rows(label: str, results: dict) -> list[str]:
    rows = []
    for name, by in results.items():
        if not by.get("fp32") or not by.get("bf16"):
            continue
        gap = 100 * (statistics.mean(by["bf16"]) - statistics.mean(by["fp32"]))
        rows.append(
            f"| {label} | {name} | {_pct(by['fp32'])} | {_pct(by['bf16'])} | {gap:+.2f} | "
            f"{len(by['fp32'])} |"
        )
    return rows


def report(s, h, f, t) -> str:
    body = (
        "## Precision: bf16 against fp32 (`--precision`)\n\n"
        "Speed: median images/s of alternating rounds in one process; in brackets the fraction "
        f"of the fp32 forward limit ({PHYSICAL_LIMIT:.0f} images/s, issue 3; no bf16 limit was "
        "measured).\n\n| measurement | fp32 | bf16 | bf16 / fp32 |\n|---|---|---|---|\n"
        + "\n".join(_speed_rows(s))
        + "\n\nTEST accuracy, mean ± standard deviation over seeds (the seed draws the "
        "validation split, the initialisation and the augmentation):\n\n"
        "| work | dataset | fp32 | bf16 | bf16 − fp32 (points) | seeds |\n"
        "|---|---|---|---|---|---|\n"
        + "\n".join(
            _accuracy_rows("`head` (features extracted in it)", h)
            + _accuracy_rows("`partial` trained fp32, predicting in it", f)
            + _accuracy_rows("`partial` trained in it (yoga)", {"yoga": t} if t else {})
        )
        + "\n"
    )
    if t and t.get("fp32_epoch_s"):
        body += (
            f"\nbf16 training epoch: {statistics.mean(t['bf16_epoch_s']):.1f} s against "
            f"{statistics.mean(t['fp32_epoch_s']):.1f} s in fp32 (both on cached activations).\n"
        )
    return body


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", default="yoga,elpv,textures")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--runs", default="/tmp/vt-activations/runs")
    parser.add_argument("--train-seeds", default="0,1")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vt-precision-"))
    seeds = [int(x) for x in args.seeds.split(",")]
    s = speed()
    h = heads(args.datasets.split(","), seeds, work)
    f = finetuned_inference(Path(args.runs))
    train_seeds = [int(x) for x in args.train_seeds.split(",") if x]
    t = bf16_training(train_seeds, Path(args.runs), work) if train_seeds else None
    command = (
        f"python benchmarks/precision.py --datasets {args.datasets} --seeds {args.seeds} "
        f"--runs {args.runs} --train-seeds {args.train_seeds}"
    )
    write_section("precision", report(s, h, f, t), command=command)


if __name__ == "__main__":
    main()
