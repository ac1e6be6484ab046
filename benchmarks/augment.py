"""Augmentation on the yoga set: does it help, and what does it cost the loader?

    python benchmarks/augment.py [--skip-train]

1. TEST accuracy of `--strategy partial` (its default epochs, seed 0) with `--augment none` and
   with `--augment standard`, each fine-tune in its own process.
2. Loader throughput: one epoch of `make_loader` over yoga TRAIN (batch 32, shuffled, decode
   included) for each preset, in the main process (0 workers) and with 2 worker processes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import YOGA, leaked_test_files, write_section
from yoga import accuracy

STRATEGY = "partial"
BATCH = 32

CHILD = r"""
import json, sys, time
import visiontune
start = time.perf_counter()
result = visiontune.fit(sys.argv[1], strategy=sys.argv[2], augment=sys.argv[3], seed=0,
                        out=sys.argv[4], progress=False)
wall = time.perf_counter() - start
preds = result.model.predict([sys.argv[1] + "/TEST"], workers=1)
print(json.dumps({"wall_s": wall, "val_acc": result.metrics["val"]["accuracy"],
                  "test_acc": result.metrics["test"]["accuracy"],
                  "predictions": [[r["path"], r.get("top", [{}])[0].get("class")] for r in preds]}))
"""


def fine_tune(augment: str, out: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(YOGA), STRATEGY, augment, str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def loader_throughput() -> tuple[list[dict], float]:
    from visiontune import _runtime
    from visiontune.backbones import create_backbone
    from visiontune.data.augment import PRESETS, compute_pca_stats, parse_augment
    from visiontune.data.folder import scan_folder
    from visiontune.data.loader import ImageDataset, make_loader
    from visiontune.data.transforms import decode_size, train_transform

    _runtime.tune_allocator()
    _runtime.configure_threads()
    spec = create_backbone("efficientnet_lite0").preprocess
    samples = scan_folder(YOGA / "TRAIN", val_fraction=0.0).train
    start = time.perf_counter()
    pca = compute_pca_stats(samples)
    pca_s = time.perf_counter() - start
    rows = []
    for preset in PRESETS:
        uses_pca = parse_augment(preset).uses_pca
        dataset = ImageDataset(
            samples,
            train_transform(spec, augment=preset, pca=pca if uses_pca else None),
            decode_size=decode_size(spec),
        )
        for workers in (0, 2):
            start = time.perf_counter()  # worker start-up included: it is part of the first epoch
            loader = make_loader(dataset, batch_size=BATCH, shuffle=True, workers=workers, seed=0)
            images = sum(len(batch.labels) for batch in loader)
            seconds = time.perf_counter() - start
            del loader
            rows.append(
                {
                    "preset": preset,
                    "workers": workers,
                    "images": images,
                    "seconds": seconds,
                    "images_per_s": images / seconds,
                }
            )
            print(rows[-1], flush=True)
    return rows, pca_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-train", action="store_true", help="only the loader throughput")
    args = parser.parse_args()
    body = "## Augmentation (yoga poses)\n\n"
    if not args.skip_train:
        leaked = {str(Path(p)) for p in leaked_test_files()}
        rows, accs = [], {}
        with tempfile.TemporaryDirectory() as tmp:
            for augment in ("none", "standard"):
                r = fine_tune(augment, Path(tmp) / augment)
                acc, n = accuracy(r["predictions"], leaked, exclude_leaked=False)
                clean, n_clean = accuracy(r["predictions"], leaked, exclude_leaked=True)
                accs[augment] = (acc, clean)
                rows.append(
                    f"| `{augment}` | {100 * acc:.2f}% ({n}) | {100 * clean:.2f}% ({n_clean}) | "
                    f"{100 * r['val_acc']:.2f}% | {r['wall_s']:.0f} s |"
                )
                print(rows[-1], flush=True)
        delta = [100 * (s - z) for s, z in zip(accs["standard"], accs["none"], strict=True)]
        body += (
            f'`visiontune.fit(yoga, strategy="{STRATEGY}", augment=..., seed=0)`, every other '
            "option at its default (EfficientNet-Lite0, 6 epochs, 15 % of TRAIN held out for "
            f"validation), then TEST. The second column leaves out the {len(leaked)} TEST images "
            "with a byte-identical copy in TRAIN.\n\n"
            "| `--augment` | TEST accuracy (images) | without TRAIN copies "
            "| validation | wall time |\n"
            "|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
            f"`standard` minus `none`: {delta[0]:+.2f} points on TEST ({delta[1]:+.2f} without the "
            f"copies); one TEST image is {100 / n:.2f} points, and this is one seed.\n\n"
        )
    throughput, pca_s = loader_throughput()
    by = {(r["preset"], r["workers"]): r for r in throughput}
    presets = list(dict.fromkeys(r["preset"] for r in throughput))
    table = "\n".join(
        f"| `{p}` | {by[p, 0]['images_per_s']:.1f} | {by[p, 2]['images_per_s']:.1f} | "
        f"{by[p, 2]['images_per_s'] / by[p, 0]['images_per_s']:.2f}× |"
        for p in presets
    )
    body += (
        f"Loader throughput: one shuffled epoch over the {throughput[0]['images']} yoga TRAIN "
        f"images, batch {BATCH}, JPEG decode (draft mode) and the preset's transforms at 224 px "
        "included; with workers, the time includes starting them. Images per second:\n\n"
        "| preset | 0 workers | 2 workers | ratio |\n|---|---|---|---|\n" + table + "\n\n"
        "`strong` includes `pca-color`; its PCA statistics (256 TRAIN images at 64 px) took "
        f"{pca_s:.1f} s, once per run. Compare with the training-step rate in the throughput "
        "section: the loader only limits training where it is slower than the model.\n"
    )
    write_section("augment", body, command="python benchmarks/augment.py")


if __name__ == "__main__":
    main()
