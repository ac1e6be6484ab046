"""Calibration and unknown-image rejection of yoga models (issue 16, parts 2 and 3).

For ``head`` and ``full`` runs on the shared Yoga Poses set (seed 0, the defaults otherwise):

* **calibration**: the temperature fitted on validation, and the expected calibration error
  (15 bins) on validation and on TEST, before (T = 1) and after;
* **rejection**: the share of yoga TEST flagged unknown at ``--reject auto`` (target about 5 %,
  the rate set on validation), the share of each foreign dataset flagged, and the AUROC of the
  run's unknown score against that of the max softmax probability (1 - top probability),
  separating yoga TEST from each foreign set.

A control with an i.i.d. TEST split: ``head`` on fashion-MNIST (160 per class, built as
``benchmarks/strategies.py`` builds it), where TEST is drawn as validation is.

Foreign sets: the TEST images of three real datasets that ship in packages, built as
``benchmarks/strategies.py`` builds them: ELPV solar-cell images, scikit-image's LFW faces and
textures (brick, grass, gravel).

    python benchmarks/trust.py [--work DIR] [--runs yoga:head yoga:full fashion:head]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import YOGA, write_section  # noqa: E402
from strategies import dataset_path  # noqa: E402

import visiontune  # noqa: E402
from visiontune.evaluation.rejection import auroc  # noqa: E402

FOREIGN = ("elpv", "lfw", "textures")


def data_of(name: str, work: Path) -> tuple[Path, Path]:
    """(the data folder, its TEST folder)."""
    if name == "yoga":
        return YOGA, YOGA / "TEST"
    root = dataset_path(name, work)
    return root, root / "test"


def train(data: Path, name: str, strategy: str, work: Path) -> Path:
    run = work / "runs" / f"{name}-{strategy}"
    if not (run / "metrics.json").exists():
        visiontune.fit(data, strategy=strategy, seed=0, out=str(run), overwrite=True)
    return run


def scores(model, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(unknown score, 1 - top probability) of every decodable image under ``folder``."""
    rows = [r for r in model.predict([folder], reject="auto") if "top" in r]
    unknown = np.array([r["unknown_score"] for r in rows])
    return unknown, np.array([1 - r["top"][0]["probability"] for r in rows])


def trust_pass_seconds(run: Path, data: Path) -> float:
    """What the trust pass costs a fine-tuned run: one forward pass of its backbone over every
    image, without the feature cache (as ``training/trust.py`` runs it)."""
    import tempfile
    import time

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        visiontune.extract(data, Path(tmp) / "emb.npz", backbone=str(run), cache=False)
        return time.perf_counter() - started


def measure(name: str, strategy: str, work: Path) -> dict:
    data, test = data_of(name, work)
    run = train(data, name, strategy, work)
    metrics = json.loads((run / "metrics.json").read_text())
    model = visiontune.load(run)
    known, known_msp = scores(model, test)
    result = {
        "data": name,
        "strategy": strategy,
        "trust_pass_s": trust_pass_seconds(run, data) if strategy != "head" else None,
        "calibration": metrics["calibration"],
        "test_accuracy": metrics["test"]["accuracy"],
        "test_rejected": float(np.mean(known > 1)),
        "foreign": {},
    }
    for name in FOREIGN:
        unknown, msp = scores(model, dataset_path(name, work) / "test")
        result["foreign"][name] = {
            "images": len(unknown),
            "rejected": float(np.mean(unknown > 1)),
            "auroc": auroc(known, unknown),
            "auroc_msp": auroc(known_msp, msp),
        }
    return result


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def report(results: list[dict]) -> str:
    lines = [
        "### Calibration (temperature fitted on validation)",
        "",
        "| run | TEST acc. | T | val ECE before → after | TEST ECE before → after |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        c = r["calibration"]
        lines.append(
            f"| {r['data']} `{r['strategy']}` | {_pct(r['test_accuracy'])} | "
            f"{c['temperature']:.3f} | "
            f"{_pct(c['ece_before'])} → {_pct(c['ece_after'])} | "
            f"{_pct(c['test']['ece_before'])} → {_pct(c['test']['ece_after'])} |"
        )
    lines += [
        "",
        "### Unknown images (`--reject auto`, 5 % of validation flagged)",
        "",
        "| run | own TEST flagged | foreign set | images | flagged | AUROC: our score | "
        "AUROC: max softmax |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for name, f in r["foreign"].items():
            lines.append(
                f"| {r['data']} `{r['strategy']}` | {_pct(r['test_rejected'])} | {name} "
                f"| {f['images']} "
                f"| {_pct(f['rejected'])} | {f['auroc']:.3f} | {f['auroc_msp']:.3f} |"
            )
    for r in results:
        if r.get("trust_pass_s") is not None:
            lines += [
                "",
                f"The trust pass of the {r['data']} `{r['strategy']}` run (a forward pass of its "
                f"fine-tuned backbone over every image, no cache) took {r['trust_pass_s']:.0f} s.",
            ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/visiontune-bench/trust"))
    parser.add_argument("--runs", nargs="+", default=["yoga:head", "yoga:full", "fashion:head"])
    args = parser.parse_args()
    results = [measure(*r.split(":"), args.work) for r in args.runs]
    print(json.dumps(results, indent=2))
    write_section(
        "trust",
        "## Trust: calibration and unknown images\n\n" + report(results),
        command="python benchmarks/trust.py",
    )


if __name__ == "__main__":
    main()
