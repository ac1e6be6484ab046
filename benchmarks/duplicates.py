"""Yoga TEST accuracy with and without ``--exclude-duplicates``, and how long ``check`` takes.

    python benchmarks/duplicates.py

``visiontune check`` runs as a command (process start and imports included), with and without
near-duplicate hashing. Then ``--strategy head`` (the frozen backbone's linear probe, every other
option at its default) trains twice on the same feature cache: once as is, once with
``--exclude-duplicates``, which leaves the val/test images that have a byte-identical copy in
train out of validation and TEST.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import YOGA, leaked_test_files, write_section


def time_check(*extra: str) -> tuple[float, dict]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "visiontune", "check", str(YOGA), "--json", *extra],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise RuntimeError(proc.stderr)
    return wall, json.loads(proc.stdout)


def accuracy(predictions: list[dict]) -> float:
    correct = [
        Path(r["path"]).parent.name.lower() == r["top"][0]["class"].lower() for r in predictions
    ]
    return sum(correct) / len(correct)


def train(out: Path, cache: Path, *, exclude: bool) -> dict:
    import visiontune

    result = visiontune.fit(
        YOGA,
        strategy="head",
        exclude_duplicates=exclude,
        out=str(out),
        cache_dir=str(cache),
        progress=False,
    )
    metrics = result.metrics
    row = {
        "test_acc": metrics["test"]["accuracy"],
        "test_n": metrics["test"]["num_images"],
        "val_acc": metrics["val"]["accuracy"],
        "C": metrics["val"]["C"],
        "excluded": metrics["data_checks"]["excluded_duplicates"],
        "leakage": metrics["data_checks"]["leakage"],
    }
    if not exclude:  # the same model on the leaked TEST images alone, and on the rest
        leaked = sorted(leaked_test_files())
        rest = [
            str(p)
            for p in sorted((YOGA / "TEST").rglob("*"))
            if p.is_file() and str(p) not in set(leaked)
        ]
        row["leaked_acc"] = accuracy(result.model.predict(leaked, workers=1))
        row["rest_acc"] = accuracy(result.model.predict(rest, workers=1))
        row["leaked_n"], row["rest_n"] = len(leaked), len(rest)
    return row


def main() -> None:
    load = os.getloadavg()[0]
    full_s, report = time_check()
    cheap_s, _ = time_check("--no-near-duplicates")
    with tempfile.TemporaryDirectory() as tmp:
        plain = train(Path(tmp) / "plain", Path(tmp) / "cache", exclude=False)
        clean = train(Path(tmp) / "clean", Path(tmp) / "cache", exclude=True)
    print(
        json.dumps(
            {"check_s": full_s, "check_cheap_s": cheap_s, "plain": plain, "clean": clean}, indent=2
        )
    )
    summary = ", ".join(f"{kind} {n}" for kind, n in report["summary"].items())
    body = (
        "## Duplicates and leakage (yoga): `check`, and TEST accuracy with "
        "`--exclude-duplicates`\n\n"
        f"`visiontune check yoga --json` (process start included): **{full_s:.1f} s** for "
        f"{report['num_files']} files with decoding and perceptual hashing "
        f"({report['seconds']:.1f} s of it checking), **{cheap_s:.1f} s** with "
        "`--no-near-duplicates` (headers and sha256 only, what `train` runs first). Findings: "
        f"{summary}.\n\n"
        "`visiontune train yoga --strategy head` (EfficientNet-Lite0 frozen, L-BFGS linear probe, "
        "C chosen on 15 % of TRAIN held out, seed 0), the same run with and without "
        "`--exclude-duplicates`:\n\n"
        "| run | TEST accuracy (images) | validation (C) | left out |\n|---|---|---|---|\n"
        f"| as is | {100 * plain['test_acc']:.2f}% ({plain['test_n']}) | "
        f"{100 * plain['val_acc']:.2f}% (C={plain['C']:g}) | - |\n"
        f"| `--exclude-duplicates` | {100 * clean['test_acc']:.2f}% ({clean['test_n']}) | "
        f"{100 * clean['val_acc']:.2f}% (C={clean['C']:g}) | {clean['excluded']['test']} TEST, "
        f"{clean['excluded']['val']} validation |\n\n"
        f"`train` checks its actual splits: of the {plain['leaked_n']} TEST images with a copy in "
        f"TRAIN, {clean['excluded']['test']} have one in the part trained on (the others' copies "
        f"fell into the held-out validation), and {clean['excluded']['val']} validation images "
        "have a copy in the part trained on (TRAIN's own duplicates, split across the two). The "
        f"model trained as is scores {100 * plain['leaked_acc']:.2f}% on the {plain['leaked_n']} "
        f"TEST images with a copy in TRAIN and {100 * plain['rest_acc']:.2f}% on the other "
        f"{plain['rest_n']}. Load average at the start: {load:.1f} (the machine is shared; times "
        "are wall-clock)."
    )
    write_section("duplicates", body, command="python benchmarks/duplicates.py")


if __name__ == "__main__":
    main()
