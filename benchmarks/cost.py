"""Cost curve: scan + check, extraction, and ``head`` on 1k, 10k and 100k images.

    python benchmarks/cost.py [--sizes 1000,10000,100000] [--work /work/bench/cost]

Each size is a folder of distinct JPEG files made from the yoga TRAIN photos: every file is one
photo, randomly cropped (80-100 % of each side), shrunk to a short side of 256 px, brightened or
darkened by up to 10 % and saved at a random JPEG quality of 80-95, so no two files share bytes;
its class is the photo's class, and 10 % of the files form a test split. The files are written
once per size and kept in ``--work``.

Each stage runs as a process of its own: its wall seconds, the peak resident memory of its main
process, and the largest peak of its child processes, the DataLoader workers that decode
(``_peak.py``; a forked worker's resident set counts the main process's pages it shares, so the
two overlap):

1. ``check``: ``scan_folder`` + ``check_splits(decode=False)`` - the checks ``train`` runs first;
2. ``extract (cold)``: ``visiontune extract`` into an empty feature cache (Lite0 forward passes);
3. ``extract (warm)``: the same again, every feature now read from the cache;
4. ``train head (warm)``: ``visiontune train --strategy head`` on the warm cache (checks, cached
   features, the L-BFGS head, calibration, the test evaluation).

The cache's size on disk is reported too. A size measured by an earlier call (its
``result.json`` in ``--work``) is reused unless ``--fresh``: 100k images take most of an hour.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import YOGA, write_section  # noqa: E402

CHECK = (
    "import sys; from visiontune.data.folder import scan_folder; "
    "from visiontune.data.checks import check_splits; "
    "check_splits(scan_folder(sys.argv[1]), decode=False, near_distance=None)"
)


def _sources() -> list[tuple[Path, str]]:
    return [
        (p, p.parent.name)
        for p in sorted((YOGA / "TRAIN").rglob("*"))
        if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png")
    ]


def _make_one(job: tuple[int, str, str, str]) -> bool:
    from PIL import Image, ImageEnhance

    index, source, label, root = job
    rng = random.Random(index)
    try:
        with Image.open(source) as image:
            image = image.convert("RGB")
    except OSError:
        return False
    w, h = image.size
    cw, ch = int(w * rng.uniform(0.8, 1)), int(h * rng.uniform(0.8, 1))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    image = image.crop((x, y, x + cw, y + ch))
    scale = 256 / min(image.size)
    image = image.resize((max(1, round(cw * scale)), max(1, round(ch * scale))))
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.9, 1.1))
    split = "test" if index % 10 == 0 else "train"
    target = Path(root) / split / label / f"{index:06d}.jpg"
    target.parent.mkdir(parents=True, exist_ok=True)
    image.save(target, quality=rng.randint(80, 95))
    return True


def make_dataset(root: Path, size: int) -> Path:
    if (root / "done").is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    sources = _sources()
    jobs = [
        (i, str(sources[i % len(sources)][0]), sources[i % len(sources)][1], str(root))
        for i in range(size)
    ]
    with ProcessPoolExecutor(len(os.sched_getaffinity(0))) as pool:
        made = sum(pool.map(_make_one, jobs, chunksize=256))
    (root / "done").write_text(f"{made}\n")
    return root


def timed(command: list[str], env: dict) -> tuple[float, float, float]:
    """(wall seconds, main process's peak RSS MiB, its workers' peak RSS MiB) of ``command``
    (``-m MODULE ...`` or ``-c CODE ...``, run by ``_peak.py``)."""
    peak = [sys.executable, str(Path(__file__).resolve().parent / "_peak.py")]
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "TIME %e", *peak, *command],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise RuntimeError(f"{command} failed: {proc.stderr[-2000:]}")
    lines = proc.stderr.splitlines()
    wall = [ln for ln in lines if ln.startswith("TIME ")][-1].split()[1]
    own, workers = [ln for ln in lines if ln.startswith("PEAK ")][-1].split()[1:]
    return float(wall), float(own), float(workers)


def stages(data: Path, work: Path) -> dict:
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    env = {"VISIONTUNE_CACHE": str(cache)}
    vt = ["-m", "visiontune"]
    out = {
        "check": timed(["-c", CHECK, str(data)], env),
        "extract (cold)": timed([*vt, "extract", str(data), "--out", str(work / "e.npz")], env),
        "extract (warm)": timed([*vt, "extract", str(data), "--out", str(work / "e.npz")], env),
        "train head (warm)": timed(
            [
                *vt,
                "train",
                str(data),
                "--strategy",
                "head",
                "--out",
                str(work / "run"),
                "--overwrite",
            ],
            env,
        ),
    }
    size = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
    return {"stages": out, "cache_mb": size / 2**20}


def _cell(wall: float, own: float, workers: float = 0.0) -> str:
    side = f" ({workers:,.0f} MiB)" if workers else ""
    return f"{wall:.1f} s, {own:,.0f} MiB{side}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--work", type=Path, default=Path("/work/bench/cost"))
    parser.add_argument("--fresh", action="store_true", help="remeasure sizes measured before")
    args = parser.parse_args()
    results = {}
    for size in map(int, args.sizes.split(",")):
        saved = args.work / f"work-{size}" / "result.json"
        if saved.is_file() and not args.fresh:  # measured by an earlier call: a long one
            results[size] = json.loads(saved.read_text())
            continue
        data = make_dataset(args.work / f"data-{size}", size)
        results[size] = stages(data, args.work / f"work-{size}")
        saved.write_text(json.dumps(results[size]))
        print(size, results[size], flush=True)
    names = list(next(iter(results.values()))["stages"])
    rows = [
        "| images | " + " | ".join(names) + " | feature cache |",
        "|---" * (len(names) + 2) + "|",
    ]
    for size, r in results.items():
        cells = [_cell(*r["stages"][n]) for n in names]
        rows.append(f"| {size:,} | " + " | ".join(cells) + f" | {r['cache_mb']:,.0f} MB |")
    body = (
        "## Cost curve: 1k to 100k images (Lite0, `head`)\n\n"
        "Distinct JPEGs made from yoga TRAIN photos (random crop, short side 256 px, brightness, "
        "JPEG quality; 10 % test). Each stage is a process of its own. Each cell: wall time, the "
        "peak resident memory of the stage's main process, and in brackets the largest peak of "
        "its child processes, the DataLoader workers that decode the images (a forked worker's "
        "resident set counts the pages it shares with the main process, so the two overlap; "
        "`/usr/bin/time`'s figure is the larger of the two).\n\n" + "\n".join(rows)
    )
    write_section("cost", body, command=f"python benchmarks/cost.py --sizes {args.sizes}")
    print(body)


if __name__ == "__main__":
    main()
