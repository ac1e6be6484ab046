"""Multi-label on real photos: composites of yoga poses, `head` and `full`, per-class thresholds
against a fixed 0.5.

    python benchmarks/multilabel.py [--train 900 --val 200 --test 400] [--strategies head,full]
                                    [--seed 0] [--work DIR]

The set: each image is a 224 x 224 canvas holding either one yoga photo (about a third of them;
labels: its pose) or two photos of different poses side by side, each letterboxed into a
112 x 224 half (labels: both poses). Train and val composites are drawn from yoga TRAIN photos,
test composites from yoga TEST photos only, so no test photo is seen in training except the 37
TEST images that are byte-identical copies of TRAIN ones (the dataset's README lists them). A
manifest (`path,labels,split`) describes it; then `visiontune train MANIFEST --strategy S` for
each strategy, with the run's own thresholds (chosen on val) and 0.5 both read from its
metrics.json (`test` at the thresholds, `test.at_0.5` at 0.5).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import YOGA, write_section  # noqa: E402

SIDE = 224


def _photos(split: str) -> dict[str, list[Path]]:
    """Decodable photos per pose of yoga ``split`` (TRAIN or TEST)."""
    found: dict[str, list[Path]] = {}
    for folder in sorted(p for p in (YOGA / split).iterdir() if p.is_dir()):
        for path in sorted(folder.iterdir()):
            try:
                with Image.open(path) as image:
                    image.verify()
            except Exception:  # noqa: BLE001 - a broken file is simply not used
                continue
            found.setdefault(folder.name.lower(), []).append(path)
    return found


def _letterbox(path: Path, width: int, height: int) -> Image.Image:
    from visiontune.data.images import decode_image  # as training decodes (truncated, CMYK...)

    image = decode_image(path).image
    image.thumbnail((width, height))
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    canvas.paste(image, ((width - image.width) // 2, (height - image.height) // 2))
    return canvas


def _composite(rng: random.Random, photos: dict[str, list[Path]]) -> tuple[Image.Image, list[str]]:
    poses = sorted(photos)
    if rng.random() < 1 / 3:
        pose = rng.choice(poses)
        return _letterbox(rng.choice(photos[pose]), SIDE, SIDE), [pose]
    pair = rng.sample(poses, 2)
    canvas = Image.new("RGB", (SIDE, SIDE))
    for i, pose in enumerate(pair):
        canvas.paste(_letterbox(rng.choice(photos[pose]), SIDE // 2, SIDE), (i * SIDE // 2, 0))
    return canvas, sorted(pair)


def build(work: Path, sizes: dict[str, int], seed: int) -> Path:
    """The composites and ``work/manifest.csv`` (reused when built with the same parameters)."""
    manifest, stamp = work / "manifest.csv", work / "built.json"
    wanted = {"sizes": sizes, "seed": seed}
    if manifest.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return manifest
    (work / "img").mkdir(parents=True, exist_ok=True)
    rng, rows = random.Random(seed), []
    sources = {"TRAIN": _photos("TRAIN"), "TEST": _photos("TEST")}
    for split, count in sizes.items():
        photos = sources["TEST" if split == "test" else "TRAIN"]
        for i in range(count):
            image, labels = _composite(rng, photos)
            name = f"img/{split}-{i:04d}.jpg"
            image.save(work / name, quality=92)
            rows.append((name, ";".join(labels), split))
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "labels", "split"])
        writer.writerows(rows)
    stamp.write_text(json.dumps(wanted))
    return manifest


def train(manifest: Path, strategy: str, seed: int, work: Path) -> dict:
    out = work / "runs" / strategy
    command = ["visiontune", "train", str(manifest), "--strategy", strategy, "--seed", str(seed)]
    command += ["--out", str(out), "--overwrite", "--no-progress"]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "strategy": strategy,
        "seconds": seconds,
        **metrics["test"],
        "thresholds": metrics["thresholds"]["values"],
    }


def _table(rows: list[dict], sizes: dict[str, int]) -> str:
    lines = [
        f"Composites of yoga photos (one or two poses each; train {sizes['train']}, val "
        f"{sizes['val']}, test {sizes['test']}), EfficientNet-Lite0, the run's defaults otherwise. "
        "F1 and subset accuracy at the per-class thresholds chosen on val, and at a fixed 0.5:",
        "",
        "| strategy | wall | TEST mAP | macro F1 | macro F1 at 0.5 | micro F1 | micro F1 at 0.5 "
        "| subset acc. | subset acc. at 0.5 | thresholds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fixed = r["at_0.5"]
        cells = [r["mAP"], r["macro_f1"], fixed["macro_f1"], r["micro_f1"], fixed["micro_f1"]]
        cells += [r["subset_accuracy"], fixed["subset_accuracy"]]
        thresholds = ", ".join(f"{t:.2f}" for t in r["thresholds"])
        lines.append(
            f"| {r['strategy']} | {r['seconds']:.0f} s | "
            + " | ".join(f"{100 * v:.1f} %" for v in cells)
            + f" | {thresholds} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=900)
    parser.add_argument("--val", type=int, default=200)
    parser.add_argument("--test", type=int, default=400)
    parser.add_argument("--strategies", default="head,full")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "vt-multilabel")
    parser.add_argument(
        "--no-write", action="store_true", help="print only, BENCHMARKS.md untouched"
    )
    args = parser.parse_args()
    sizes = {"train": args.train, "val": args.val, "test": args.test}
    manifest = build(args.work, sizes, args.seed)
    rows = [train(manifest, s, args.seed, args.work) for s in args.strategies.split(",")]
    body = "## Multi-label: composites of yoga poses\n\n" + _table(rows, sizes)
    print(body)
    if not args.no_write:
        write_section(
            "multilabel",
            body,
            command="python " + " ".join(["benchmarks/multilabel.py", *sys.argv[1:]]),
        )


if __name__ == "__main__":
    main()
