"""DistributedDataParallel on the CPU: two processes started by torchrun train like one.

``--batch-size`` is the global batch: each of the two ranks takes every other image of each
batch one process would take, augmented under the same per-image seeds, and DDP averages the
gradients. With frozen BatchNorm statistics (their batch statistics would be per rank) and no
dropout (masks are drawn per rank), the two runs differ only by floating-point summation order.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, make_split_folder
from safetensors.torch import load_file

COMMON = [
    "--backbone",
    TINY["backbone"],
    "--weights",
    TINY["weights"],
    "--batch-size",
    "4",
    "--workers",
    "0",
    "--seed",
    "3",
    "--no-progress",
]
# Only the head trains (all stages frozen, BatchNorm in eval mode): see the module docstring.
MATCHING = ["--strategy", "partial", "--unfreeze", "0", "--dropout", "0", "--epochs", "2"]


def _run(args: list[str], *, cwd: Path, processes: int = 1) -> subprocess.CompletedProcess:
    launcher = (
        ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
        if processes > 1
        else []
    )
    done = subprocess.run(
        [sys.executable, *launcher, "-m", "visiontune", "train", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    # 12 training images: 3 steps of 4, or of 2 per rank, with nothing left over.
    return make_split_folder(
        tmp_path_factory.mktemp("ddp") / "data",
        {"train": {"cat": 6, "dog": 6}, "val": {"cat": 2, "dog": 2}},
    )


def _history(run: Path) -> list[dict]:
    return json.loads((run / "history.json").read_text())


def test_two_processes_match_one_and_only_rank_0_writes(data, tmp_path):
    _run([str(data), *COMMON, *MATCHING, "--out", str(tmp_path / "single")], cwd=tmp_path)
    work = tmp_path / "ddp"
    work.mkdir()
    done = _run([str(data), *COMMON, *MATCHING], cwd=work, processes=2)

    (run,) = (work / "runs").iterdir()  # one run folder, named by rank 0
    assert sorted(p.name for p in work.iterdir()) == ["runs"]
    assert done.stdout.count("run saved to") == 1
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["timing"]["processes"] == 2

    single, ddp = _history(tmp_path / "single"), _history(run)
    assert len(single) == len(ddp) == 2
    for a, b in zip(single, ddp, strict=True):
        assert a["val_acc"] == b["val_acc"] and a["train_acc"] == b["train_acc"]
        for key in ("train_loss", "val_loss", "lr"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
    weights = (
        load_file(str(tmp_path / "single" / "model.safetensors")),
        load_file(str(run / "model.safetensors")),
    )
    for key, value in weights[0].items():
        assert torch.allclose(value.float(), weights[1][key].float(), rtol=1e-4, atol=1e-5), key


def test_gradual_unfreezing_under_ddp_keeps_ranks_in_step(data, tmp_path):
    """Unfreezing changes which parameters DDP must average, so the wrapper is rebuilt; the run
    checks at its end that both ranks hold bit-identical weights, and fails otherwise."""
    out = tmp_path / "run"
    _run(
        [
            str(data),
            *COMMON,
            "--strategy",
            "gradual",
            "--unfreeze",
            "2",
            "--epochs",
            "2",
            "--out",
            str(out),
        ],
        cwd=tmp_path,
        processes=2,
    )
    history = _history(out)
    assert [row["epoch"] for row in history] == [1, 2]
    config = json.loads((out / "config.json").read_text())
    assert config["strategy"]["unfrozen"] == 1  # epoch 1: the head alone; epoch 2: one stage
    assert not (out / "checkpoint.safetensors").exists()
