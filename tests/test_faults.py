"""``VISIONTUNE_FAULT``: parsing, clear errors, and kills that land exactly where asked."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from visiontune import _faults
from visiontune._faults import ENV, Fault, FaultSpecError, parse


@pytest.fixture
def fault_env(monkeypatch):
    """Set ``$VISIONTUNE_FAULT`` for this process; the parsed value is forgotten afterwards."""

    def set_to(value: str) -> None:
        monkeypatch.setenv(ENV, value)
        _faults.reset()

    yield set_to
    monkeypatch.delenv(ENV, raising=False)
    _faults.reset()


@pytest.mark.parametrize(
    "value, fault",
    [
        (None, None),
        ("", None),
        ("  ", None),
        ("kill-at-batch:2:3", Fault("kill-at-batch", epoch=2, batch=3)),
        (
            "kill-before-rename:checkpoint.safetensors",
            Fault("kill-before-rename", name="checkpoint.safetensors"),
        ),
        (
            "kill-after-write:shard-*.safetensors:4",
            Fault("kill-after-write", name="shard-*.safetensors", count=4),
        ),
    ],
)
def test_parse(value, fault):
    assert parse(value) == fault


@pytest.mark.parametrize(
    "value, says",
    [
        ("kill-at-batch:0:1", "EPOCH must be a whole number from 1"),
        ("kill-at-batch:1:x", "BATCH must be a whole number from 1"),
        ("kill-at-batch:1", "is not a fault"),
        ("kill-at-batch:1:2:3", "is not a fault"),
        ("kill-after-write:", "is not a fault"),
        ("kill-after-write:a.json:-1", "COUNT must be a whole number from 1"),
        ("kill-before-rename:a.json:1:2", "is not a fault"),
        ("sleep:5", "is not a fault"),
    ],
)
def test_a_bad_value_is_a_clear_error(value, says):
    with pytest.raises(FaultSpecError, match=says) as caught:
        parse(value)
    message = str(caught.value)
    assert f"{ENV}={value!r}" in message and "kill-at-batch:EPOCH:BATCH" in message


def test_a_bad_value_raises_on_the_first_hook_call(fault_env):
    fault_env("kill-at-batch:one:two")
    with pytest.raises(FaultSpecError, match="EPOCH"):
        _faults.at_batch(0, 0)
    with pytest.raises(FaultSpecError, match="EPOCH"):
        _faults.before_rename("x")


def test_hooks_are_no_ops_when_unset_or_aimed_elsewhere(fault_env, tmp_path):
    fault_env("")
    _faults.at_batch(0, 0)
    _faults.before_rename(tmp_path / "a")
    _faults.after_write(tmp_path / "a")
    fault_env("kill-after-write:other.json")  # this process survives: nothing matches
    _faults.at_batch(0, 0)
    _faults.before_rename(tmp_path / "other.json")
    _faults.after_write(tmp_path / "a.json")


def _run(script: str, fault: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, ENV: fault}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_kill_at_batch_is_one_based_and_lands_before_that_batch():
    done = _run(
        """
        from visiontune import _faults
        for epoch in range(3):
            for batch in range(4):
                _faults.at_batch(epoch, batch)
                print(epoch + 1, batch + 1, flush=True)
        """,
        "kill-at-batch:2:3",
    )
    assert done.returncode == -signal.SIGKILL
    assert done.stdout.splitlines()[-1] == "2 2"  # epoch 2: batches 1 and 2 ran, 3 did not
    assert "VISIONTUNE_FAULT: kill-at-batch: epoch 2, batch 3" in done.stderr


WRITER = """
    import sys
    from pathlib import Path
    from visiontune._io import atomic_write_text
    folder = Path(sys.argv[1])
    for round in (1, 2, 3):
        for name in ("a.json", "b.json"):
            atomic_write_text(folder / name, str(round))
"""


@pytest.mark.parametrize(
    "fault, a, b, leftover",
    [
        ("kill-before-rename:b.json:2", "2", "1", True),
        ("kill-after-write:b.json:2", "2", "2", False),
        ("kill-before-rename:?.json:3", "1", "1", True),  # a pattern counts every match
        ("kill-after-write:a.json", "1", None, False),
    ],
)
def test_write_faults_kill_at_the_counted_write(tmp_path, fault, a, b, leftover):
    done = _run(WRITER, fault, str(tmp_path))
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert f"VISIONTUNE_FAULT: {fault.split(':')[0]}" in done.stderr
    assert (tmp_path / "a.json").read_text() == a
    assert ((tmp_path / "b.json").read_text() if (tmp_path / "b.json").exists() else None) == b
    assert bool(list(tmp_path.glob(".*.tmp"))) == leftover


def test_the_hooks_import_no_torch():
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, visiontune._faults, visiontune._io; assert 'torch' not in sys.modules",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
