"""DistributedDataParallel on the CPU: two processes started by torchrun train like one.

``--batch-size`` is the global batch: each of the two ranks takes every other image of each
batch one process would take, augmented under the same per-image seeds, and DDP averages the
gradients. With frozen BatchNorm statistics (their batch statistics would be per rank) and no
dropout (masks are drawn per rank), the two runs differ only by floating-point summation order.

``full`` and ``partial`` train BatchNorm too, so their batch statistics are per rank: those
tests train on images of identical pixels, where a rank's 2 images have the statistics of all 4
(see the comment above ``WEIGHT_ATOL``), and so check the averaging of backbone gradients. A
2-process run killed in epoch 2 by ``$VISIONTUNE_FAULT`` resumes under torchrun to the
uninterrupted 2-process run's result, bit for bit. Every run says ``--device cpu`` (gloo), so
the tests mean the same on a machine with a GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, make_class_folder, make_split_folder, solid_image
from safetensors.torch import load_file

from visiontune._faults import ENV as FAULT_ENV
from visiontune.formats.checkpoint import CHECKPOINT_FILE, read_checkpoint_meta

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
    "--device",
    "cpu",
]
# Only the head trains (all stages frozen, BatchNorm in eval mode): see the module docstring.
# fp32: bf16 validation rounds differently on a rank's half of the batch than on the whole.
MATCHING = ["--strategy", "partial", "--unfreeze", "0", "--dropout", "0", "--epochs", "2"]
MATCHING += ["--precision", "fp32"]


def _run(
    args: list[str], *, cwd: Path, processes: int = 1, fault: str | None = None
) -> subprocess.CompletedProcess:
    """``visiontune train ARGS`` in one process or under torchrun; ``fault``: the processes'
    ``$VISIONTUNE_FAULT`` (then the run must die by it), none otherwise."""
    launcher = (
        ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
        if processes > 1
        else []
    )
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}  # PYTHONPATH passes through
    if fault:
        env[FAULT_ENV] = fault
    done = subprocess.run(
        [sys.executable, *launcher, "-m", "visiontune", "train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if fault:
        assert done.returncode != 0 and f"{FAULT_ENV}: kill-" in done.stderr, done.stderr[-4000:]
    else:
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


# ---------------------------------------------- the backbone trains too: full and partial
#
# With trainable BatchNorm each rank normalises by the statistics of its own 2 images, one
# process by those of all 4, so on ordinary data the two runs differ by far more than rounding
# (measured on the noisy `data` above: 0.019 in the head, 0.004 in conv weights, 0.8 in running
# variances; training losses 8% apart) - a tolerance that loose would also pass broken gradient
# averaging. Here every training image has the same pixels (the labels still differ), and there
# is no augmentation or dropout: a batch's statistics are then the same on 2 images as on 4,
# so the forward passes agree, and any difference left comes from gradient averaging (and
# summation order). Measured: training losses within 1e-7; of the ~100k weights checked, all
# but ~40 within 1e-5 (head within 3e-8), the rest, where AdamW divides a near-zero gradient by
# its near-zero size, up to 1e-4 - so: 99% of the elements within 1e-5 and all within 1e-3 (10x).
# Broken averaging (or sharding) moves most elements by about the LR per step, and the losses.
# Two kinds of tensor are left out of the tight check: the shifts of BatchNorms that feed
# another BatchNorm (blocks.*.bn2/bn3.bias): the next BatchNorm subtracts them again, so their
# true gradient is zero and AdamW turns rounding noise into steps of the backbone LR (measured
# up to 1.3e-3; bounded by steps x LR = 6 x 5e-4 whatever averaging does); and the BatchNorm
# running statistics, buffers no gradient trains: the variances' unbiased n/(n-1) correction
# counts each rank's share (measured up to 0.013), and the means follow those noisy shifts
# (measured up to 3e-4). They only enter validation, whose loss is compared loosely.
WEIGHT_ATOL, WEIGHT_CLOSE, CLOSE_SHARE = 1e-3, 1e-5, 0.99
TWIN = [*COMMON, "--dropout", "0", "--augment", "none", "--epochs", "2"]
STRATEGIES = {
    "full": ["--strategy", "full"],
    "partial": ["--strategy", "partial", "--unfreeze", "1"],
}


@pytest.fixture(scope="module")
def twin_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("twin") / "data"
    image = solid_image((120, 120, 120), seed=5, noise=60)
    for name in ("cat", "dog"):
        (root / "train" / name).mkdir(parents=True)
        for i in range(6):  # 12 images: 3 steps of 4 (2 per rank) an epoch
            image.save(root / "train" / name / f"{name}_{i}.png")
    make_class_folder(root / "val", {"cat": 2, "dog": 2}, seed=2)
    return root


@pytest.fixture(scope="module")
def ddp_full(twin_data, tmp_path_factory) -> Path:
    """An uninterrupted 2-process full run, shared by the comparison and the resume test."""
    work = tmp_path_factory.mktemp("ddp-full")
    done = _run([str(twin_data), *TWIN, *STRATEGIES["full"], "--out", "run"], cwd=work, processes=2)
    assert sorted(p.name for p in work.iterdir()) == ["run"]  # rank 0 alone wrote
    assert done.stdout.count("run saved to") == 1
    return work / "run"


def _checked(key: str) -> bool:
    block_bn_shift = ".blocks." in key and key.endswith(("bn2.bias", "bn3.bias"))
    return "running_" not in key and not block_bn_shift


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_full_and_partial_under_two_processes_match_one(twin_data, ddp_full, tmp_path, strategy):
    options = [str(twin_data), *TWIN, *STRATEGIES[strategy]]
    _run([*options, "--out", str(tmp_path / "single")], cwd=tmp_path)
    if strategy == "full":
        run = ddp_full
    else:
        work = tmp_path / "ddp"
        work.mkdir()
        done = _run([*options, "--out", "run"], cwd=work, processes=2)
        assert sorted(p.name for p in work.iterdir()) == ["run"]
        assert done.stdout.count("run saved to") == 1
        run = work / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["timing"]["processes"] == 2

    for a, b in zip(_history(tmp_path / "single"), _history(run), strict=True):
        assert a["train_acc"] == b["train_acc"] and a["lr"] == b["lr"]
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        # Validation runs in eval mode, on the running variances (see above): 4e-5 measured.
        assert b["val_loss"] == pytest.approx(a["val_loss"], abs=1e-3)
    single = load_file(str(tmp_path / "single" / "model.safetensors"))
    ddp = load_file(str(run / "model.safetensors"))
    assert single.keys() == ddp.keys()
    checked = [k for k in single if single[k].is_floating_point() and _checked(k)]
    assert any(".conv" in k for k in checked) and "head.fc.weight" in checked
    diff = torch.cat([(single[k].float() - ddp[k].float()).abs().flatten() for k in checked])
    assert diff.max().item() <= WEIGHT_ATOL
    assert (diff <= WEIGHT_CLOSE).float().mean().item() >= CLOSE_SHARE


def test_ddp_run_killed_in_epoch_2_resumes_under_ddp_to_the_same_result(
    twin_data, ddp_full, tmp_path
):
    """Both ranks kill themselves at the start of epoch 2's second batch (the same fault in each
    process's environment; torchrun would stop the other anyway). The checkpoint, written by
    rank 0 after epoch 1, is resumed by two processes; on the CPU the result is bit-identical."""
    options = [str(twin_data), *TWIN, *STRATEGIES["full"], "--out", "run"]
    _run(options, cwd=tmp_path, processes=2, fault="kill-at-batch:2:2")
    run = tmp_path / "run"
    meta = read_checkpoint_meta(run / CHECKPOINT_FILE)
    assert meta["epoch"] == 1 and not meta["done"], "the kill should land inside epoch 2"
    assert not (run / "metrics.json").exists()

    _run(["--resume", "run", "--no-progress", "--device", "cpu"], cwd=tmp_path, processes=2)
    assert not (run / CHECKPOINT_FILE).exists()

    def strip(history: list[dict]) -> list[dict]:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in history]

    assert strip(_history(run)) == strip(_history(ddp_full))
    resumed, straight = (
        load_file(str(run / "model.safetensors")),
        load_file(str(ddp_full / "model.safetensors")),
    )
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
