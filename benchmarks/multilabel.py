"""Multi-label on real photos: composites of yoga poses, each strategy, per-class thresholds
against a fixed 0.5.

    python benchmarks/multilabel.py [--train 900 --val 200 --test 400] [--strategies head,full]
                                    [--seed 0] [--work DIR] [--json PATH] [--write]
    python benchmarks/multilabel.py --smoke        # 40/12/20 composites, head only: a minute

The set (deterministic given --seed): each composite is a 224 x 224 RGB canvas holding either
one yoga photo letterboxed into it (about a third; labels: its pose) or two photos of different
poses side by side, each letterboxed (aspect kept) into a 112 x 224 half (labels: both poses,
written ``a;b`` sorted). Train and val composites are drawn from yoga TRAIN photos, split by
photo content (byte-identical files on one side) so that no val photo is seen in training; test
composites from yoga TEST photos only. Photos are used as training decodes them; any that
Pillow cannot decode completely (a truncated file too) is left out. Not fixed: the 37 TEST
images that are byte-identical copies of TRAIN ones (the dataset's README lists them) can still
appear in test composites. ``WORK/manifest.csv`` (``path,labels,split``) describes the set; it
is reused when already built with the same parameters.

Then, for each strategy, `visiontune train MANIFEST --strategy S --seed SEED --out WORK/runs/S
--overwrite --no-progress --cache-dir WORK/runs/S-cache` (the installed CLI, its defaults
otherwise: EfficientNet-Lite0, embedded weights), in its own process with a fresh feature cache
so the wall time is a first run's. TEST scores come from the run's metrics.json: at the
per-class thresholds it chose on val (``test``) and at a fixed 0.5 (``test.at_0.5``).

Prints the tables and the command/machine/date line the other sections carry; ``--write`` also
records them as the ``multilabel`` section of BENCHMARKS.md, ``--json`` writes the raw numbers.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import YOGA, _commit, machine, write_section  # noqa: E402

SIDE = 224
SINGLE = 1 / 3  # share of composites holding one photo
SMOKE = {"train": 40, "val": 12, "test": 20}
BUILD_VERSION = 2  # bump when the composer changes: a stale WORK is then rebuilt


def _photo_groups(split: str) -> dict[str, list[list[Path]]]:
    """Per pose of yoga ``split``: its files, byte-identical ones grouped, in a stable order."""
    out: dict[str, list[list[Path]]] = {}
    for folder in sorted(p for p in (YOGA / split).iterdir() if p.is_dir()):
        groups: dict[str, list[Path]] = {}
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            groups.setdefault(hashlib.sha256(path.read_bytes()).hexdigest(), []).append(path)
        out[folder.name.lower()] = [groups[h] for h in sorted(groups)]
    return out


def photo_pools(sizes: dict[str, int], seed: int) -> dict[str, dict[str, list[Path]]]:
    """Candidate photos per split and pose: TRAIN divided into train/val in proportion to the
    composites wanted (whole duplicate groups, each side at least one), TEST for test."""
    rng = random.Random(f"pools-{seed}")
    share = sizes["val"] / max(1, sizes["train"] + sizes["val"])
    pools: dict[str, dict[str, list[Path]]] = {"train": {}, "val": {}, "test": {}}
    for pose, groups in _photo_groups("TRAIN").items():
        groups = list(groups)
        rng.shuffle(groups)
        cut = min(len(groups) - 1, max(1, round(share * len(groups))))
        pools["val"][pose] = sorted(p for g in groups[:cut] for p in g)
        pools["train"][pose] = sorted(p for g in groups[cut:] for p in g)
    for pose, groups in _photo_groups("TEST").items():
        pools["test"][pose] = sorted(p for g in groups for p in g)
    return pools


def _letterbox(image: Image.Image, width: int, height: int) -> Image.Image:
    """``image`` scaled to fit ``width`` x ``height`` (aspect kept), centred on black."""
    scale = min(width / image.width, height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    canvas = Image.new("RGB", (width, height))
    canvas.paste(image, ((width - size[0]) // 2, (height - size[1]) // 2))
    return canvas


class Composer:
    """Draws composites from ``pools`` (pose -> photos), dropping photos that do not decode."""

    def __init__(self, pools: dict[str, list[Path]], rng: random.Random):
        self.pools = {pose: list(paths) for pose, paths in pools.items()}
        self.rng = rng
        self.skipped: list[str] = []

    def _photo(self, pose: str) -> Image.Image:
        from visiontune.data.images import decode_image  # RGB, EXIF-rotated, as training sees it

        while self.pools[pose]:
            path = self.rng.choice(self.pools[pose])
            try:
                decoded = decode_image(path, min_short_side=SIDE)
                if decoded.note is None:  # a note: loaded only partially (truncated)
                    return decoded.image
            except Exception:  # noqa: BLE001 - any undecodable file is simply not used
                pass
            self.pools[pose].remove(path)
            self.skipped.append(str(path.relative_to(YOGA)))
        raise SystemExit(f"no decodable {pose} photo left")

    def composite(self) -> tuple[Image.Image, list[str]]:
        poses = sorted(p for p, paths in self.pools.items() if paths)
        if self.rng.random() < SINGLE:
            pose = self.rng.choice(poses)
            return _letterbox(self._photo(pose), SIDE, SIDE), [pose]
        pair = self.rng.sample(poses, 2)
        canvas = Image.new("RGB", (SIDE, SIDE))
        for i, pose in enumerate(pair):
            canvas.paste(_letterbox(self._photo(pose), SIDE // 2, SIDE), (i * SIDE // 2, 0))
        return canvas, sorted(pair)


def build(work: Path, sizes: dict[str, int], seed: int) -> tuple[Path, dict]:
    """The composites under ``work/img`` and ``work/manifest.csv``, reused when ``work`` was
    built with the same parameters; returns the manifest and the build record."""
    manifest, stamp = work / "manifest.csv", work / "built.json"
    wanted = {"version": BUILD_VERSION, "sizes": sizes, "seed": seed, "yoga": str(YOGA)}
    if manifest.is_file() and stamp.is_file():
        record = json.loads(stamp.read_text())
        if record.get("params") == wanted:
            return manifest, record
        stamp.unlink()
        shutil.rmtree(work / "img", ignore_errors=True)  # ours: built.json marked the folder
    started = time.perf_counter()
    (work / "img").mkdir(parents=True, exist_ok=True)
    pools, rows, skipped = photo_pools(sizes, seed), [], set()
    for split, count in sizes.items():
        composer = Composer(pools[split], random.Random(f"{split}-{seed}"))
        for i in range(count):
            image, labels = composer.composite()
            name = f"img/{split}-{i:04d}.jpg"
            image.save(work / name, quality=92)
            rows.append((name, ";".join(labels), split))
        skipped.update(composer.skipped)
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "labels", "split"])
        writer.writerows(rows)
    record = {
        "params": wanted,
        "seconds": time.perf_counter() - started,
        "skipped_photos": sorted(skipped),
        "photos": {s: sum(map(len, p.values())) for s, p in pools.items()},
        "single_photo_composites": {
            split: sum(";" not in labels for _, labels, s in rows if s == split) for split in sizes
        },
    }
    stamp.write_text(json.dumps(record, indent=2))
    return manifest, record


def _cli() -> list[str]:
    found = shutil.which("visiontune")
    return [found] if found else [sys.executable, "-m", "visiontune"]


def train(manifest: Path, strategy: str, seed: int, work: Path) -> dict:
    """One ``visiontune train`` process; its wall time and its metrics.json."""
    out, cache = work / "runs" / strategy, work / "runs" / f"{strategy}-cache"
    shutil.rmtree(cache, ignore_errors=True)  # a first run's time, not a warm cache's
    command = [*_cli(), "train", str(manifest), "--strategy", strategy, "--seed", str(seed)]
    command += ["--out", str(out), "--overwrite", "--no-progress", "--cache-dir", str(cache)]
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"{shlex.join(command)} exited {proc.returncode}")
    metrics = json.loads((out / "metrics.json").read_text())
    print(f"{strategy}: {seconds:.0f} s", flush=True)
    return {"strategy": strategy, "wall_s": seconds, "command": command, "metrics": metrics}


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _seconds(row: dict) -> str:
    total = (row["metrics"].get("timing") or {}).get("total_s")
    return "-" if total is None else f"{total:.0f} s"


def _scores_table(rows: list[dict]) -> list[str]:
    lines = [
        "| strategy | wall (in the run) | TEST mAP | macro F1 | macro F1 at 0.5 | micro F1 "
        "| micro F1 at 0.5 | subset acc. | subset acc. at 0.5 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        test = r["metrics"]["thresholds"]["test"]
        fixed = test["at_0.5"]
        cells = [test["mAP"], test["macro_f1"], fixed["macro_f1"], test["micro_f1"]]
        cells += [fixed["micro_f1"], test["subset_accuracy"], fixed["subset_accuracy"]]
        lines.append(
            f"| `{r['strategy']}` | {r['wall_s']:.0f} s ({_seconds(r)}) | "
            + " | ".join(map(_pct, cells))
            + " |"
        )
    return lines


def _thresholds_table(rows: list[dict]) -> list[str]:
    names = list(rows[0]["metrics"]["test"]["per_class"])
    lines = [
        "| strategy | chosen by | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for r in rows:
        t = r["metrics"]["thresholds"]
        per_class = r["metrics"]["test"]["per_class"]
        cells = [
            f"{c['threshold']:.2f} (F1 {100 * c['f1']:.0f} %, {c['support']})"
            for c in (per_class[n] for n in names)
        ]
        lines.append(f"| `{r['strategy']}` | {t['chosen_by']} | " + " | ".join(cells) + " |")
    return lines


def report(rows: list[dict], sizes: dict[str, int], record: dict) -> str:
    skipped = record["skipped_photos"]
    singles = record["single_photo_composites"]
    photos = record["photos"]
    return "\n".join(
        [
            "## Multi-label: composites of yoga poses",
            "",
            f"Composites of one photo or two of different poses side by side (train "
            f"{sizes['train']}, val {sizes['val']}, test {sizes['test']}; one photo in "
            f"{singles.get('train', 0)}, {singles.get('val', 0)}, {singles.get('test', 0)}), "
            f"drawn from {photos['train']} / {photos['val']} yoga TRAIN photos (split by "
            f"content) and {photos['test']} TEST photos; "
            f"{len(skipped)} photo(s) left out as not fully decodable"
            + (f" ({', '.join(skipped)})" if skipped else "")
            + ". The 37 TEST images that are byte-identical copies of TRAIN ones are not left "
            "out. `visiontune train MANIFEST --strategy S`, EfficientNet-Lite0 and the defaults "
            "otherwise; wall time of the process (cold feature cache; in brackets the run's own "
            "`timing.total_s`, without process start and imports). F1 and subset accuracy "
            "at the per-class thresholds chosen on val, and at a fixed 0.5:",
            "",
            *_scores_table(rows),
            "",
            "Per-class thresholds (in brackets: TEST F1 at it, TEST composites with the pose):",
            "",
            *_thresholds_table(rows),
        ]
    )


def _stamp(command: str) -> str:
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"Command: `{command}` — machine: {machine()} — date: {date}, commit {_commit()}."


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train", type=int, help="train composites (default 900)")
    parser.add_argument("--val", type=int, help="val composites (default 200)")
    parser.add_argument("--test", type=int, help="test composites (default 400)")
    parser.add_argument("--strategies", help="comma-separated (default head,full)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, help="build and run folder (default: under temp)")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument("--write", action="store_true", help="record it in BENCHMARKS.md")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes (40/12/20) and head only, unless given"
    )
    args = parser.parse_args()
    defaults = SMOKE if args.smoke else {"train": 900, "val": 200, "test": 400}
    for split, n in defaults.items():
        setattr(args, split, n if getattr(args, split) is None else getattr(args, split))
    if args.strategies is None:
        args.strategies = "head" if args.smoke else "head,full"
    if min(args.train, args.val, args.test) < 1:
        parser.error("--train, --val and --test need at least one composite each")
    return args


def main() -> None:
    args = _parse()
    sizes = {"train": args.train, "val": args.val, "test": args.test}
    work = args.work or Path(tempfile.gettempdir()) / (
        f"vt-multilabel-seed{args.seed}-{args.train}-{args.val}-{args.test}"
    )
    manifest, record = build(work, sizes, args.seed)
    print(f"manifest: {manifest} (built in {record['seconds']:.0f} s)", flush=True)
    rows = [train(manifest, s, args.seed, work) for s in args.strategies.split(",") if s]
    command = shlex.join(["python", "benchmarks/multilabel.py", *sys.argv[1:]])
    body = report(rows, sizes, record)
    print("\n" + body + "\n\n" + _stamp(command))
    if args.json:
        raw = {"command": command, "machine": machine(), "commit": _commit(), "sizes": sizes}
        raw |= {"seed": args.seed, "manifest": str(manifest), "build": record}
        raw["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        raw["runs"] = rows
        args.json.write_text(json.dumps(raw, indent=2))
    if args.write:
        write_section("multilabel", body, command=command)


if __name__ == "__main__":
    main()
