"""Resumable runs: a training process killed with SIGKILL mid-epoch and resumed ends exactly as an
uninterrupted run; checkpoints refuse anything that is not theirs.

The kills are ``$VISIONTUNE_FAULT`` (``visiontune/_faults.py``): the run kills itself at a given
batch or write, so where it dies does not depend on how busy the machine is.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, make_class_folder
from safetensors.torch import load_file

import visiontune
from visiontune._faults import ENV as FAULT_ENV
from visiontune.errors import BundleError, VisiontuneError
from visiontune.formats.checkpoint import CHECKPOINT_FILE, read_checkpoint_meta

EPOCHS = 2
OPTIONS = [
    "--backbone",
    TINY["backbone"],
    "--weights",
    TINY["weights"],
    "--strategy",
    "full",
    "--epochs",
    str(EPOCHS),
    "--batch-size",
    "4",
    "--seed",
    "7",
    "--no-progress",
]


def _train(*args: str, fault: str | None = None) -> subprocess.Popen:
    """``visiontune train ARGS`` in a subprocess; ``fault``: its ``$VISIONTUNE_FAULT`` (none
    otherwise, even if this process has one)."""
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    if fault:
        env[FAULT_ENV] = fault
    return subprocess.Popen(
        [sys.executable, "-m", "visiontune", "train", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen) -> None:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]


def _killed(process: subprocess.Popen) -> None:
    """The run died by its own ``$VISIONTUNE_FAULT`` (not by finishing, or failing)."""
    out, err = process.communicate(timeout=600)
    assert process.returncode == -signal.SIGKILL, f"exit {process.returncode}: {err[-3000:]}"
    assert f"{FAULT_ENV}: kill-" in err, err[-3000:]


def _without_seconds(value):
    if isinstance(value, dict):
        return {k: _without_seconds(v) for k, v in value.items() if k != "seconds"}
    return value


def _outcome(run: Path) -> tuple[dict, list, dict]:
    """metrics.json (without timing), history (without seconds) and the weights of a run."""
    metrics = _without_seconds(json.loads((run / "metrics.json").read_text()))
    metrics.pop("timing")
    # a resumed run reads the activations the interrupted one stored: counts differ, not values
    for key in ("computed", "from_cache", "seconds"):
        (metrics.get("activation_cache") or {}).pop(key, None)
    history = [
        {k: v for k, v in row.items() if k != "seconds"}
        for row in json.loads((run / "history.json").read_text())
    ]
    return metrics, history, load_file(str(run / "model.safetensors"))


def _assert_same(a: tuple, b: tuple) -> None:
    assert a[0] == b[0]
    assert a[1] == b[1]
    assert a[2].keys() == b[2].keys()
    assert all(torch.equal(a[2][k], b[2][k]) for k in a[2])


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    # 16 training images at batch size 4: four batches an epoch, so batch 3 is mid-epoch.
    return make_class_folder(tmp_path_factory.mktemp("resume") / "data", {"cat": 10, "dog": 10})


@pytest.fixture(scope="module")
def reference_run(data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("reference") / "run"
    _finish(_train(str(data), *OPTIONS, "--workers", "0", "--out", str(run)))
    assert not (run / CHECKPOINT_FILE).exists()  # served its purpose once the bundle is written
    return run


@pytest.fixture(scope="module")
def uninterrupted(reference_run) -> tuple:
    return _outcome(reference_run)


def test_run_killed_mid_epoch_and_resumed_ends_exactly_as_an_uninterrupted_one(
    data, uninterrupted, tmp_path
):
    run = tmp_path / "run"
    # Dies at the start of epoch 2's third batch: two of its batches trained, nothing saved.
    process = _train(
        str(data), *OPTIONS, "--workers", "0", "--out", str(run), fault="kill-at-batch:2:3"
    )
    _killed(process)
    meta = read_checkpoint_meta(run / CHECKPOINT_FILE)
    assert meta["epoch"] == 1 and not meta["done"], "the kill should land inside epoch 2"
    assert not (run / "metrics.json").exists()

    _finish(_train("--resume", str(run), "--no-progress"))
    _assert_same(_outcome(run), uninterrupted)
    assert not (run / CHECKPOINT_FILE).exists()


def test_loader_workers_change_nothing_and_a_resume_may_change_them(data, uninterrupted, tmp_path):
    """Each image is augmented under its own (seed, epoch, index) seed, so worker processes
    (and how many) do not change the batches: killed in epoch 1 with 1 worker, resumed with none
    from the checkpoint written after set-up."""
    run = tmp_path / "run"
    process = _train(
        str(data), *OPTIONS, "--workers", "1", "--out", str(run), fault="kill-at-batch:1:3"
    )
    _killed(process)
    assert read_checkpoint_meta(run / CHECKPOINT_FILE)["epoch"] == 0, (
        "the kill should land inside epoch 1"
    )
    _finish(_train("--resume", str(run), "--no-progress", "--workers", "0"))
    _assert_same(_outcome(run), uninterrupted)


def _checkpointed_run(data: Path, tmp_path: Path) -> Path:
    """A run folder left as a kill leaves it: a checkpoint (the one after set-up), no bundle."""
    run = tmp_path / "run"
    fault = f"kill-after-write:{CHECKPOINT_FILE}:1"
    _killed(_train(str(data), *OPTIONS, "--workers", "0", "--out", str(run), fault=fault))
    assert read_checkpoint_meta(run / CHECKPOINT_FILE)["epoch"] == 0
    assert not (run / "model.safetensors").exists()
    return run


def test_resume_refuses_changed_options_and_a_fresh_run_refuses_to_overwrite(data, tmp_path):
    run = _checkpointed_run(data, tmp_path)
    before = (run / CHECKPOINT_FILE).read_bytes()
    done = subprocess.run(
        [sys.executable, "-m", "visiontune", "train", "--resume", str(run), "--lr", "0.5"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    # The run folder keeps the options resolved: the strategy's default LR, as a number.
    assert "--lr 0.5 (the run used 0.005)" in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "visiontune", "train", str(data), *OPTIONS, "--out", str(run)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and "--resume" in done.stderr
    assert (run / CHECKPOINT_FILE).read_bytes() == before


def test_resume_refuses_a_finished_run_and_a_folder_without_checkpoint(tmp_path):
    (tmp_path / "finished").mkdir()
    (tmp_path / "finished" / "metrics.json").write_text("{}")
    with pytest.raises(VisiontuneError, match="finished training"):
        visiontune.resume(tmp_path / "finished")
    with pytest.raises(VisiontuneError, match="no such run folder"):
        visiontune.resume(tmp_path / "missing")


def test_a_damaged_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / CHECKPOINT_FILE
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(BundleError, match="not a visiontune checkpoint"):
        read_checkpoint_meta(path)


# ------------------------------------------------------------- the loop itself, in process


def _loop_problem():
    from visiontune.data.loader import Batch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 6, generator=g)
    y = (x[:, 0] + 0.3 * x[:, 1] > 0).long()
    train = [Batch(x[i : i + 8], y[i : i + 8], torch.arange(i, i + 8)) for i in range(0, 48, 8)]
    return train, [Batch(x[:24], 1 - y[:24], torch.arange(24))]  # val gets worse: patience stops


def _loop_model():
    torch.manual_seed(0)  # dropout and batch norm: the epoch's RNG and buffers must come back too
    return torch.nn.Sequential(
        torch.nn.Linear(6, 16),
        torch.nn.BatchNorm1d(16),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.3),
        torch.nn.Linear(16, 2),
    )


def _loop_fit(model, optimizer, *, state=None, on_checkpoint=None):
    from visiontune.engine.loop import LoopConfig, Runtime, fit

    cfg = LoopConfig(
        epochs=8,
        warmup_epochs=1.0,
        label_smoothing=0.1,
        patience=3,
        seed=5,
    )
    train, val = _loop_problem()
    return fit(
        model,
        train,
        val,
        optimizer,
        cfg=cfg,
        runtime=Runtime(channels_last=False, progress=False),
        set_train_mode=lambda m: m.train(),
        state=state,
        on_checkpoint=on_checkpoint,
    )


def _loop_optimizer(model):
    from visiontune.engine.optim import build_optimizer

    return build_optimizer(
        [{"params": list(model.parameters()), "lr": 0.05, "base_lr": 0.05}], weight_decay=0.01
    )


@pytest.mark.parametrize("stop_after", [1, 2, 4])
def test_fit_resumed_from_any_saved_epoch_equals_the_straight_run(tmp_path, stop_after):
    """Through a checkpoint file: model, BatchNorm buffers, AdamW moments, LR step, best weights,
    patience counter and the done flag (patience stops this run before its 8 epochs)."""
    from visiontune.formats.checkpoint import load_checkpoint, save_checkpoint

    model = _loop_model()
    optimizer = _loop_optimizer(model)
    saved = {}

    def keep(state):
        if state.epoch == stop_after:
            save_checkpoint(
                tmp_path / CHECKPOINT_FILE, model=model, optimizer=optimizer, state=state
            )
        saved[state.epoch] = state.done

    straight = _loop_fit(model, optimizer, on_checkpoint=keep)
    assert len(straight) < 8 and saved[len(straight)]  # stopped by patience, and said so

    checkpoint = load_checkpoint(tmp_path / CHECKPOINT_FILE)
    again = _loop_model()
    again.load_state_dict(checkpoint.model_state)
    optimizer = _loop_optimizer(again)
    optimizer.load_state_dict(checkpoint.optimizer_state)
    resumed = _loop_fit(again, optimizer, state=checkpoint.state)

    def strip(history):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in history]

    assert strip(resumed) == strip(straight)
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True)
    )


def test_gradual_run_resumes_with_its_unfrozen_stages_and_optimizer_groups(tmp_path, monkeypatch):
    """Stopped after epoch 2 (one stage unfrozen, more optimizer groups), resumed in process."""
    from visiontune.training import checkpoints

    data = make_class_folder(tmp_path / "data", {"cat": 6, "dog": 6})
    options = dict(
        **TINY,
        strategy="gradual",
        unfreeze=3,
        epochs=3,
        batch_size=4,
        workers=0,
        seed=2,
        progress=False,
    )
    straight = visiontune.fit(data, out=str(tmp_path / "straight"), **options)

    save = checkpoints.RunCheckpoints.save

    def save_then_die(self, model, optimizer, state, strategy, skips):
        save(self, model, optimizer, state, strategy, skips)
        if state.epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints.RunCheckpoints, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        visiontune.fit(data, out=str(tmp_path / "run"), **options)
    monkeypatch.undo()
    assert (
        read_checkpoint_meta(tmp_path / "run" / CHECKPOINT_FILE)["extra"]["strategy"]["unfrozen"]
        == 1
    )

    resumed = visiontune.resume(tmp_path / "run", progress=False)
    _assert_same(_outcome(resumed.run_dir), _outcome(straight.run_dir))
