"""Calibration and unknown-image rejection of yoga models (issue 16, parts 2 and 3).

For ``head`` and ``full`` runs on the shared Yoga Poses set (seed 0, the defaults otherwise):

* **calibration**: the temperature fitted on validation, and the expected calibration error
  (15 bins) on validation and on TEST, before (T = 1) and after;
* **rejection**: the share of yoga TEST flagged unknown at ``--reject auto`` (target about 5 %,
  the rate set on validation), the share of each foreign dataset flagged, and the AUROC of the
  run's unknown score against that of the max softmax probability (1 - top probability),
  separating yoga TEST from each foreign set.

Two controls with an i.i.d. TEST split, where TEST is drawn as validation is: ``head`` on
fashion-MNIST (160 per class, built as ``benchmarks/strategies.py`` builds it), and ``yoga-iid``:
the yoga photos of TRAIN and TEST pooled and split again at random (30 % to TEST, as the original
split has; byte-identical copies kept on one side). Yoga's own TEST is not drawn as its TRAIN
is (validation, from TRAIN, is the harder of the two), and every run reports the comparison of
validation with TEST that ``train`` makes (``metrics.json`` ``validation_vs_test``).

Foreign sets: the TEST images of three real datasets that ship in packages, built as
``benchmarks/strategies.py`` builds them: ELPV solar-cell images, scikit-image's LFW faces and
textures (brick, grass, gravel).

    python benchmarks/trust.py [--work DIR] [--runs yoga:head yoga-iid:full ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import YOGA, write_section  # noqa: E402
from strategies import dataset_path  # noqa: E402

import visiontune  # noqa: E402
from visiontune.evaluation.rejection import auroc  # noqa: E402

FOREIGN = ("elpv", "lfw", "textures")
DEFAULT_RUNS = ["yoga:head", "yoga:full", "fashion:head", "yoga-iid:head", "yoga-iid:full"]


def build_yoga_iid(root: Path, test_share: float = 0.3, seed: int = 0) -> Path:
    """Yoga's TRAIN and TEST photos pooled and split again at random, per class; copies of one
    file (same bytes) go to the same side, so no TEST image has a twin in train."""
    if (root / ".complete").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    for folder in sorted((YOGA / "TRAIN").iterdir()):
        files = sorted((YOGA / "TRAIN" / folder.name).iterdir()) + sorted(
            (YOGA / "TEST" / folder.name).iterdir()
        )
        groups: dict[str, list[Path]] = {}
        for f in files:
            groups.setdefault(hashlib.sha256(f.read_bytes()).hexdigest(), []).append(f)
        for digest in rng.permutation(sorted(groups)):
            split = "test" if rng.uniform() < test_share else "train"
            for f in groups[digest]:
                out = root / split / folder.name / f"{f.parent.parent.name}-{f.name}"
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, out)
    (root / ".complete").touch()
    return root


def data_of(name: str, work: Path) -> tuple[Path, Path]:
    """(the data folder, its TEST folder)."""
    if name == "yoga":
        return YOGA, YOGA / "TEST"
    if name == "yoga-iid":
        root = build_yoga_iid(work / "data" / name)
        return root, root / "test"
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
    evaluated = model.evaluate(test)  # the calibrated ECE, and its floor on this many images
    result = {
        "data": name,
        "strategy": strategy,
        "trust_pass_s": trust_pass_seconds(run, data) if strategy != "head" else None,
        "calibration": metrics["calibration"],
        "validation_vs_test": metrics.get("validation_vs_test"),
        "test_accuracy": metrics["test"]["accuracy"],
        "test_ece": evaluated["expected_calibration_error"],
        "test_ece_floor": evaluated["ece_if_calibrated"],
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
        "| run | TEST acc. | val images (copies of train left out) | T | "
        "val ECE before → after | TEST ECE before → after | "
        "TEST ECE of a calibrated model: mean (95 %) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c, floor = r["calibration"], r["test_ece_floor"]
        lines.append(
            f"| {r['data']} `{r['strategy']}` | {_pct(r['test_accuracy'])} | "
            f"{c['images']} ({c.get('val_copies_left_out', 0)}) | {c['temperature']:.3f} | "
            f"{_pct(c['ece_before'])} → {_pct(c['ece_after'])} | "
            f"{_pct(c['test']['ece_before'])} → {_pct(c['test']['ece_after'])} | "
            f"{_pct(floor['mean'])} ({_pct(floor['p95'])}) |"
        )
    lines += [
        "",
        "The last column is `evaluate`'s `ece_if_calibrated`: the ECE a perfectly calibrated "
        "model with the run's TEST probabilities would show on as many images (labels drawn from "
        "those probabilities, 200 times). A TEST ECE inside it is no evidence of miscalibration.",
    ]
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
    lines += [
        "",
        "### Validation against TEST (`metrics.json` `validation_vs_test`, Fisher's exact test)",
        "",
        "| run | val / TEST images | accuracy val / TEST | p | flagged val / TEST | p | differ |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = r["validation_vs_test"]
        lines.append(
            f"| {r['data']} `{r['strategy']}` | {s['val_images']} / {s['test_images']} | "
            f"{_pct(s['val_accuracy'])} / {_pct(s['test_accuracy'])} | {s['accuracy_p']:.2g} | "
            f"{_pct(s['val_flagged'])} / {_pct(s['test_flagged'])} | {s['flagged_p']:.2g} | "
            f"{'yes' if s['differ'] else 'no'} |"
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
    parser.add_argument("--runs", nargs="+", default=DEFAULT_RUNS)
    args = parser.parse_args()
    results = [measure(*r.split(":"), args.work) for r in args.runs]
    print(json.dumps(results, indent=2))
    write_section(
        "trust",
        "## Trust: calibration and unknown images\n\n" + report(results),
        command="python benchmarks/trust.py"
        + ("" if args.runs == DEFAULT_RUNS else " --runs " + " ".join(args.runs)),
    )


if __name__ == "__main__":
    main()
