"""A process killed with SIGKILL while it saves leaves every file loadable: the old version or
the new one, never a torn one (checkpoints, bundles and feature-cache entries)."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

from visiontune.features.cache import FeatureCache
from visiontune.formats.bundle import load_bundle
from visiontune.formats.checkpoint import CHECKPOINT_FILE, load_checkpoint

KEYS = [f"image-{i}" for i in range(64)]

# Saves, forever, a large checkpoint (~12 MB), a bundle and a cache entry, each stamped with
# the round number so a file mixing two rounds would show.
SAVER = textwrap.dedent("""
    import sys
    from pathlib import Path
    import torch
    from visiontune.backbones import Classifier, Head, create_backbone
    from visiontune.formats.checkpoint import TrainingState, save_checkpoint
    from visiontune.formats.bundle import save_bundle
    from visiontune.features.cache import FeatureCache
    from visiontune.specs import LabelMap

    out = Path(sys.argv[1])
    big = torch.nn.Linear(1024, 1024)
    optimizer = torch.optim.AdamW(big.parameters())
    big(torch.ones(1, 1024)).sum().backward()
    optimizer.step()
    backbone = create_backbone("test_efficientnet", weights="none")
    model = Classifier(backbone, Head(backbone.num_features, 2))
    cache = FeatureCache(out / "cache", "a" * 16)
    keys = [f"image-{i}" for i in range(64)]
    round = 0
    while True:
        round += 1
        with torch.no_grad():
            big.weight.fill_(round)
            model.head.fc.weight.fill_(round)
        state = TrainingState(epoch=round, step=round, history=[{"epoch": round}])
        save_checkpoint(out / "checkpoint.safetensors", model=big, optimizer=optimizer, state=state)
        save_bundle(out / "bundle", model, labels=LabelMap(("a", "b")), extra={"round": round})
        cache.store(keys, torch.full((64, 4096), float(round)))
        print(round, flush=True)
""")


def _check_loadable(out: Path) -> None:
    checkpoint = load_checkpoint(out / CHECKPOINT_FILE)
    stamp = checkpoint.state.epoch
    assert torch.all(checkpoint.model_state["weight"] == stamp)  # one round's tensors and JSON
    assert checkpoint.state.history == [{"epoch": stamp}]
    model, labels, _ = load_bundle(out / "bundle")
    assert labels.names == ("a", "b")
    assert len(torch.unique(model.head.fc.weight)) == 1
    found, missing = FeatureCache(out / "cache", "a" * 16).lookup(KEYS)
    assert not missing
    assert len(torch.unique(torch.stack(list(found.values())))) == 1


def test_files_survive_sigkill_at_any_moment_during_saves(tmp_path):
    rng = random.Random(0)
    interrupted_writes = 0
    for _ in range(4):
        process = subprocess.Popen(
            [sys.executable, "-c", SAVER, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # Wait for two full rounds, so an old version exists, then kill at a random moment.
        for _round in range(2):
            line = process.stdout.readline()
            assert line, process.stderr.read()[-2000:]
        time.sleep(rng.uniform(0.0, 0.4))
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
        # A temporary file left behind means the kill landed inside a write.
        leftovers = [p for p in tmp_path.rglob(".*.tmp")]
        interrupted_writes += bool(leftovers)
        for path in leftovers:
            path.unlink()
        _check_loadable(tmp_path)
    assert interrupted_writes, "no kill landed inside a write; the test proved nothing"
