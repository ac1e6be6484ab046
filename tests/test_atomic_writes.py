"""A process killed with SIGKILL while it saves leaves every file loadable: the old version or
the new one, never a torn one (checkpoints, bundles and feature-cache entries). A bundle is two
files: killed between their renames, the pair is refused by its checksum instead of mixed.

The kills are ``$VISIONTUNE_FAULT`` (``visiontune/_faults.py``): the saver kills itself just
before or just after a chosen write's rename, so every case is hit on every run.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from visiontune._faults import ENV as FAULT_ENV
from visiontune._io import STALE_AFTER_S, atomic_write_text
from visiontune.backbones import Classifier, Head, create_backbone
from visiontune.errors import BundleError
from visiontune.features.cache import FeatureCache
from visiontune.formats.bundle import load_bundle, save_bundle
from visiontune.formats.checkpoint import (
    CHECKPOINT_FILE,
    TrainingState,
    load_checkpoint,
    save_checkpoint,
)
from visiontune.specs import LabelMap

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
    try:
        model, labels, config = load_bundle(out / "bundle")
    except BundleError as exc:  # new weights beside the old config: refused, never mixed
        assert "a save was killed between them" in str(exc)
        bundle = (TORN, TORN)
    else:
        assert labels.names == ("a", "b")
        weights = torch.unique(model.head.fc.weight)
        assert len(weights) == 1
        bundle = (int(weights), config["round"])
    found, missing = FeatureCache(out / "cache", "a" * 16).lookup(KEYS)
    assert not missing
    cached = torch.unique(torch.stack(list(found.values())))
    assert len(cached) == 1
    return dict(zip(FILES, (stamp, *bundle, int(cached)), strict=True))


TORN = "refused"  # a bundle whose two files come from different saves does not load


FILES = ("checkpoint", "bundle weights", "bundle config", "cache")
# (fault, the round each of FILES holds after the kill): every kill lands in round 3's writes.
CASES = [
    (f"kill-before-rename:{CHECKPOINT_FILE}:3", (2, 2, 2, 2)),
    (f"kill-after-write:{CHECKPOINT_FILE}:3", (3, 2, 2, 2)),
    ("kill-before-rename:model.safetensors:3", (3, 2, 2, 2)),
    # A bundle is two files, each atomic: between them, new weights beside the old config, which
    # its checksum of the weights refuses to pair.
    ("kill-after-write:model.safetensors:3", (3, TORN, TORN, 2)),
    ("kill-before-rename:config.json:3", (3, TORN, TORN, 2)),
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


# ---- what killed writes leave behind is cleaned up by the next write to the same target -------

KILLED_WRITER = textwrap.dedent("""
    import sys
    from visiontune._io import atomic_write_text
    atomic_write_text(__import__("pathlib").Path(sys.argv[1]), "from the killed writer")
""")

BLOCKED_WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from visiontune._io import atomic_write

    def write(tmp):
        Path(tmp).write_text("from the live writer")
        print("ready", flush=True)
        sys.stdin.readline()  # still writing until the test says

    atomic_write(sys.argv[1], write)
""")


def _killed_write(target: Path) -> Path:
    """The temporary file a writer SIGKILLed before its rename leaves beside ``target``."""
    before = set(target.parent.glob(f".{target.name}.*.tmp"))
    env = {**os.environ, FAULT_ENV: f"kill-before-rename:{target.name}"}
    done = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, str(target)], env=env, capture_output=True
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    (orphan,) = set(target.parent.glob(f".{target.name}.*.tmp")) - before
    return orphan


def test_the_next_write_removes_temporary_files_of_dead_writers(tmp_path):
    target, other = tmp_path / "model.onnx", tmp_path / "other.json"
    orphans = [_killed_write(target), _killed_write(target)]
    someone_elses = _killed_write(other)  # another target's leftovers are not this write's
    hour_ago = time.time() - STALE_AFTER_S - 60
    hour_ago = time.time() - STALE_AFTER_S - 60
    # Writers whose pid cannot be checked here go by age only: old ones are removed...
    old = [
        f".{target.name}.abcd_123.tmp",  # a name from before writers were recorded
        f".{target.name}.ffffffff-1-abcd_123.tmp",  # another host or pid namespace
    ]
    # ... recent ones stay (such a writer may still be at work), and so do names not ours.
    kept = [
        f".{target.name}.zyxw_987.tmp",
        f".{target.name}.ffffffff-1-zyxw_987.tmp",
        f".{target.name}.notes.tmp",
        f"{target.name}.abcd_123.tmp",
    ]
    for name in old + kept:
        (tmp_path / name).write_text("?")
    for name in old + kept[2:]:
        os.utime(tmp_path / name, (hour_ago, hour_ago))

    atomic_write_text(target, "new")

    assert target.read_text() == "new"
    assert not any(orphan.exists() for orphan in orphans)
    assert someone_elses.exists()
    left = {p.name for p in tmp_path.iterdir()} - {target.name, other.name, someone_elses.name}
    assert left == set(kept)


def test_a_live_writers_temporary_file_is_never_removed(tmp_path):
    target = tmp_path / "model.onnx"
    writer = subprocess.Popen(
        [sys.executable, "-c", BLOCKED_WRITER, str(target)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "ready"
        (live,) = tmp_path.glob(".model.onnx.*.tmp")
        atomic_write_text(target, "mine")  # a concurrent write to the same target
        assert live.exists() and target.read_text() == "mine"
        writer.stdin.write("go\n")
        writer.stdin.flush()
        assert writer.wait(timeout=120) == 0  # its rename found its file: nothing was lost
    finally:
        writer.kill()
    assert target.read_text() == "from the live writer" and not live.exists()


# ---- files are readable by others as the umask says, not owner-only as mkstemp makes them -----


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077], ids=oct)
def test_saved_files_follow_the_umask(tmp_path, mask):
    backbone = create_backbone("test_efficientnet", weights="none")
    model = Classifier(backbone, Head(backbone.num_features, 2))
    big = torch.nn.Linear(4, 4)
    optimizer = torch.optim.SGD(big.parameters(), lr=0.1)
    previous = os.umask(mask)
    try:
        save_bundle(tmp_path / "bundle", model, labels=LabelMap(("a", "b")))
        save_checkpoint(
            tmp_path / CHECKPOINT_FILE, model=big, optimizer=optimizer, state=TrainingState()
        )
        FeatureCache(tmp_path / "cache", "a" * 16).store(["k"], torch.ones(1, 4))
    finally:
        os.umask(previous)
    written = [
        tmp_path / "bundle" / "model.safetensors",
        tmp_path / "bundle" / "config.json",
        tmp_path / CHECKPOINT_FILE,
        *(tmp_path / "cache" / "features" / ("a" * 16)).glob("shard-*.safetensors"),
        tmp_path / "cache" / "features" / ("a" * 16) / "manifest.json",
    ]
    assert len(written) == 5
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in written}
    assert set(modes.values()) == {oct(0o666 & ~mask)}, modes
