"""A process killed with SIGKILL while it saves leaves every file loadable: the old version or
the new one, never a torn one (checkpoints, bundles and feature-cache entries).

The kills are ``$VISIONTUNE_FAULT`` (``visiontune/_faults.py``): the saver kills itself just
before or just after a chosen write's rename, so every case is hit on every run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from visiontune._faults import ENV as FAULT_ENV
from visiontune.features.cache import FeatureCache
from visiontune.formats.bundle import load_bundle
from visiontune.formats.checkpoint import CHECKPOINT_FILE, load_checkpoint

KEYS = [f"image-{i}" for i in range(64)]

# Saves, in rounds, a large checkpoint (~12 MB), a bundle and a cache entry, each stamped with
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
    for round in range(1, 5):  # a kill is due in round 3
        with torch.no_grad():
            big.weight.fill_(round)
            model.head.fc.weight.fill_(round)
        state = TrainingState(epoch=round, step=round, history=[{"epoch": round}])
        save_checkpoint(out / "checkpoint.safetensors", model=big, optimizer=optimizer, state=state)
        save_bundle(out / "bundle", model, labels=LabelMap(("a", "b")), extra={"round": round})
        cache.store(keys, torch.full((64, 4096), float(round)))
        print(round, flush=True)
""")


def _rounds(out: Path) -> dict[str, int]:
    """The round each file holds, after checking that it loads and holds one round only."""
    checkpoint = load_checkpoint(out / CHECKPOINT_FILE)
    stamp = checkpoint.state.epoch
    assert torch.all(checkpoint.model_state["weight"] == stamp)  # one round's tensors and JSON
    assert checkpoint.state.history == [{"epoch": stamp}]
    model, labels, config = load_bundle(out / "bundle")
    assert labels.names == ("a", "b")
    weights = torch.unique(model.head.fc.weight)
    assert len(weights) == 1
    found, missing = FeatureCache(out / "cache", "a" * 16).lookup(KEYS)
    assert not missing
    cached = torch.unique(torch.stack(list(found.values())))
    assert len(cached) == 1
    return dict(zip(FILES, (stamp, int(weights), config["round"], int(cached)), strict=True))


FILES = ("checkpoint", "bundle weights", "bundle config", "cache")
# (fault, the round each of FILES holds after the kill): every kill lands in round 3's writes.
CASES = [
    (f"kill-before-rename:{CHECKPOINT_FILE}:3", (2, 2, 2, 2)),
    (f"kill-after-write:{CHECKPOINT_FILE}:3", (3, 2, 2, 2)),
    ("kill-before-rename:model.safetensors:3", (3, 2, 2, 2)),
    # A bundle is two files, each atomic: between them, new weights beside the old config.
    ("kill-after-write:model.safetensors:3", (3, 3, 2, 2)),
    ("kill-before-rename:config.json:3", (3, 3, 2, 2)),
    ("kill-before-rename:shard-*.safetensors:3", (3, 3, 3, 2)),
    ("kill-after-write:shard-*.safetensors:3", (3, 3, 3, 2)),  # a shard no manifest names yet
    ("kill-before-rename:manifest.json:3", (3, 3, 3, 2)),
    ("kill-after-write:manifest.json:3", (3, 3, 3, 3)),
]


@pytest.mark.parametrize("fault, rounds", CASES, ids=[fault for fault, _ in CASES])
def test_files_survive_sigkill_inside_and_between_saves(tmp_path, fault, rounds):
    """Killed (``$VISIONTUNE_FAULT``) just before a write's rename, every file still loads and
    holds the previous round; just after, the new one. A kill anywhere earlier in a write is
    the same for the target: only the rename touches it."""
    done = _save(tmp_path, fault)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert done.stdout.split() == ["1", "2"], "the kill should land in round 3"
    # The temporary file a kill inside a write leaves behind (loaders never look at it).
    leftovers = list(tmp_path.rglob(".*.tmp"))
    assert len(leftovers) == fault.startswith("kill-before-rename")
    assert _rounds(tmp_path) == dict(zip(FILES, rounds, strict=True))


def _save(out: Path, fault: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    if fault:
        env[FAULT_ENV] = fault
    return subprocess.run(
        [sys.executable, "-c", SAVER, str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_saves_after_kills_go_through_over_what_the_kills_left(tmp_path):
    """An orphan shard and stale temporary files from killed saves do not stop the next ones."""
    for fault in ("kill-after-write:shard-*.safetensors:2", "kill-before-rename:manifest.json:3"):
        assert _save(tmp_path, fault).returncode == -signal.SIGKILL
    done = _save(tmp_path, None)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _rounds(tmp_path) == dict.fromkeys(FILES, 4)
