"""A DataLoader worker's private memory, with and without ``tune_worker_allocator``.

    python benchmarks/worker_memory.py [--images 4000] [--rounds 4] [--data DIR]

Each round runs two processes, alternating: one worker forked by ``make_loader`` after a few
Lite0 bf16 forwards (so the parent's tuned heap holds freed activations, as during extraction)
decodes ``--images`` training photos of ``--data`` (default yoga TRAIN) with the eval transform,
no model in the loop. ``inherited``: the worker keeps the parent's thresholds (the loader's
worker start removed; the eval transform draws no random numbers); ``reset``: the loader as it
is. Reported: the worker's peak private memory (``Private_Clean + Private_Dirty`` of
``/proc/PID/smaps_rollup``, sampled every 0.2 s: pages it copied or allocated, not those it
shares with the parent) and the loop's wall time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import YOGA, write_section  # noqa: E402

CHILD = r"""
import json, os, sys, threading, time
import torch
from visiontune import _runtime
from visiontune.backbones import create_backbone
from visiontune.data.folder import scan_folder
from visiontune.data.loader import ImageDataset, make_loader
from visiontune.data.transforms import decode_size, eval_transform

mode, data, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
_runtime.tune_allocator()
splits = scan_folder(data)
samples = (list(splits.train) * (n // max(1, len(splits.train)) + 1))[:n]
backbone = create_backbone("efficientnet_lite0").eval()
with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
    for _ in range(6):
        backbone(torch.randn(64, 3, 224, 224)); backbone(torch.randn(37, 3, 224, 224))
spec = backbone.preprocess
dataset = ImageDataset(samples, eval_transform(spec), decode_size=decode_size(spec))
loader = make_loader(dataset, batch_size=64, shuffle=False, workers=1)
if mode == "inherited":
    loader.worker_init_fn = None  # no worker start: the parent's thresholds, as before bc6b9e1
peak = [0]
def watch():
    me = os.getpid()
    while True:
        try:
            for child in open(f"/proc/{me}/task/{me}/children").read().split():
                fields = {}
                for line in open(f"/proc/{child}/smaps_rollup"):
                    key, _, value = line.partition(":")
                    if key.startswith("Private_"):
                        fields[key] = int(value.split()[0])
                peak[0] = max(peak[0], sum(fields.values()) // 1024)
        except OSError:
            pass
        time.sleep(0.2)
threading.Thread(target=watch, daemon=True).start()
start = time.perf_counter()
count = sum(len(batch.labels) for batch in loader)
print(json.dumps({"images": count, "wall_s": time.perf_counter() - start, "private_mib": peak[0]}))
"""


def run(mode: str, data: Path, images: int) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(data), str(images)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--data", type=Path, default=YOGA)
    args = parser.parse_args()
    modes = ("inherited", "reset")
    results = {m: [] for m in modes}
    for _ in range(args.rounds):
        for mode in modes:
            results[mode].append(run(mode, args.data, args.images))
            print(mode, results[mode][-1], flush=True)
    rows = ["| worker's allocator | private memory, each round | median | loop wall, median |"]
    rows.append("|---|---|---|---|")
    for mode in modes:
        private = [r["private_mib"] for r in results[mode]]
        wall = statistics.median(r["wall_s"] for r in results[mode])
        cells = ", ".join(f"{p:,}" for p in private)
        rows.append(
            f"| {mode} | {cells} MiB | {statistics.median(private):,.0f} MiB | {wall:.1f} s |"
        )
    body = (
        "## DataLoader worker memory: inherited vs reset allocator thresholds\n\n"
        f"One worker decoding {args.images:,} photos after the parent ran Lite0 forwards; "
        f"{args.rounds} alternating rounds (module docstring of `benchmarks/worker_memory.py`). "
        "`inherited`: the parent's tuned thresholds (1 GiB mmap, 2 GiB trim), as before bc6b9e1; "
        "`reset`: `tune_worker_allocator` (16 MiB mmap, 256 MiB trim).\n\n" + "\n".join(rows)
    )
    command = f"python benchmarks/worker_memory.py --images {args.images} --rounds {args.rounds}"
    write_section("worker-memory", body, command=command)
    print(body)


if __name__ == "__main__":
    main()
