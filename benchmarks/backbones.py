"""Do better ImageNet backbones transfer better? Yoga TEST accuracy of `--strategy head` for
EfficientNet-Lite0/1/2 beside their ImageNet top-1, with feature-extraction time.

    python benchmarks/backbones.py

Each backbone runs in its own process with a fresh feature cache, so extraction time is cold.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import YOGA, leaked_test_files, write_section  # noqa: E402

BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")

CHILD = r"""
import json, sys, time
import visiontune
from visiontune.backbones.registry import get_backbone_info
start = time.perf_counter()
result = visiontune.fit(sys.argv[1], backbone=sys.argv[2], strategy="head", cache_dir=sys.argv[3],
                        out=sys.argv[4], progress=False)
wall = time.perf_counter() - start
preds = result.model.predict([sys.argv[1] + "/TEST"])
info = get_backbone_info(sys.argv[2])
print(json.dumps({"wall_s": wall, "test_acc": result.metrics["test"]["accuracy"],
                  "top1": info.imagenet_top1, "size": result.model.preprocess.size,
                  "predictions": [[r["path"], r["top"][0]["class"]] for r in preds if "top" in r]}))
"""


def main() -> None:
    leaked = leaked_test_files()
    rows = []
    for name in BACKBONES:
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run(
                [sys.executable, "-c", CHILD, str(YOGA), name, tmp + "/cache", tmp + "/run"],
                capture_output=True,
                text=True,
            )
        if proc.returncode != 0:
            rows.append(
                f"| `{name}` | - | - | - | - | not run: "
                f"{proc.stderr.strip().splitlines()[-1][:120]} |"
            )
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        clean = [(p, c) for p, c in r["predictions"] if p not in leaked]
        clean_acc = sum(Path(p).parent.name == c for p, c in clean) / len(clean)
        rows.append(
            f"| `{name}` | {r['top1']:.1f}% | {r['size']} px | {100 * r['test_acc']:.2f}% | "
            f"{100 * clean_acc:.2f}% | {r['wall_s']:.0f} s |"
        )
        print(rows[-1], flush=True)
    body = (
        "## Backbones: ImageNet accuracy vs transfer (`--strategy head`, yoga)\n\n"
        "Linear probe on frozen features (cold feature cache: the wall time is almost all "
        "extraction of the 1,547 images).\n\n"
        "| backbone | ImageNet top-1 | input | yoga TEST | without TRAIN copies | wall time |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    write_section("backbones", body, command="python benchmarks/backbones.py")


if __name__ == "__main__":
    main()
