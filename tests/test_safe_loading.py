"""Nothing visiontune loads can run code: pickles are refused before anything in them runs."""

from __future__ import annotations

import ast
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, make_class_folder

import visiontune
import visiontune.backbones
from visiontune.cli import main
from visiontune.errors import BundleError, WeightsNotFoundError
from visiontune.formats.bundle import load_bundle
from visiontune.formats.checkpoint import CHECKPOINT_FILE

PACKAGE = Path(visiontune.__file__).parent


class _Payload:
    """Unpickling this runs ``os.system``: the classic malicious checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _malicious(path: Path, marker: Path, *, zipped: bool) -> Path:
    payload = {"state_dict": {"weight": _Payload(marker)}}
    if zipped:  # what torch.save writes
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))  # the protocol torch.save uses
    return path


def test_every_torch_load_in_the_package_passes_weights_only_true():
    calls = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "load"
                and getattr(node.func.value, "id", None) == "torch"
            ):
                flags = [k.value for k in node.keywords if k.arg == "weights_only"]
                safe = (
                    len(flags) == 1
                    and isinstance(flags[0], ast.Constant)
                    and flags[0].value is True
                )
                calls.append((f"{path.relative_to(PACKAGE)}:{node.lineno}", safe))
    assert calls, "expected at least the .pth weights loader"
    assert all(safe for _, safe in calls), calls


@pytest.mark.parametrize("zipped", [False, True], ids=["pickle", "torch.save"])
def test_malicious_weights_file_is_refused_and_never_runs(tmp_path, zipped):
    marker = tmp_path / "pwned"
    evil = _malicious(tmp_path / "weights.pth", marker, zipped=zipped)
    data = make_class_folder(tmp_path / "data", {"cat": 3, "dog": 3})
    with pytest.raises(WeightsNotFoundError, match="refusing to load .*posix.system"):
        visiontune.fit(
            data,
            backbone=TINY["backbone"],
            weights=str(evil),
            out=str(tmp_path / "run"),
            progress=False,
            workers=0,
        )
    assert not marker.exists()
    assert not (tmp_path / "run").exists()


def test_malicious_weights_are_refused_by_the_cli_with_exit_code_2(tmp_path):
    marker = tmp_path / "pwned"
    evil = _malicious(tmp_path / "weights.pth", marker, zipped=True)
    data = make_class_folder(tmp_path / "data", {"cat": 3, "dog": 3})
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "visiontune",
            "train",
            str(data),
            "--backbone",
            TINY["backbone"],
            "--weights",
            str(evil),
            "--out",
            str(tmp_path / "run"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert "refusing to load" in done.stderr and "Traceback" not in done.stderr
    assert not marker.exists()


@pytest.mark.parametrize("zipped", [False, True], ids=["pickle", "torch.save"])
def test_malicious_checkpoint_is_refused_and_never_runs(tmp_path, zipped):
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    run.mkdir()
    _malicious(run / CHECKPOINT_FILE, marker, zipped=zipped)
    with pytest.raises(BundleError, match="not a visiontune checkpoint"):
        visiontune.resume(run)
    assert not marker.exists()


def test_malicious_bundle_weights_are_refused_and_never_run(trained_run, tmp_path):
    marker = tmp_path / "pwned"
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text((trained_run.run_dir / "config.json").read_text())
    _malicious(bundle / "model.safetensors", marker, zipped=True)
    with pytest.raises(BundleError, match="cannot load"):
        load_bundle(bundle)
    assert not marker.exists()


# ---- damaged weights files are named for what they are, in one line ---------------------------


def _random_bytes(path: Path, size: int = 5000) -> Path:
    path.write_bytes(np.random.default_rng(0).bytes(size))
    return path


@pytest.mark.parametrize("name", ["weights.pth", "weights.bin", "weights.pt"])
def test_a_corrupt_pth_is_called_corrupt_not_code(tmp_path, name):
    corrupt = _random_bytes(tmp_path / name)
    with pytest.raises(WeightsNotFoundError) as info:
        visiontune.backbones.create_backbone(TINY["backbone"], weights=corrupt)
    message = str(info.value)
    assert "corrupt or not a PyTorch file" in message and "run code" not in message, message
    assert "\n" not in message and str(tmp_path / name) in message


@pytest.mark.parametrize(
    "content", [b"", b"not safetensors at all", None], ids=["empty", "text", "random"]
)
def test_a_file_named_safetensors_that_is_not_one(tmp_path, capsys, content):
    fake = tmp_path / "weights.safetensors"
    if content is None:
        _random_bytes(fake)
    else:
        fake.write_bytes(content)
    with pytest.raises(WeightsNotFoundError, match="not a valid .safetensors file"):
        visiontune.backbones.create_backbone(TINY["backbone"], weights=fake)
    data = make_class_folder(tmp_path / "data", {"cat": 3, "dog": 3})
    argv = ["train", str(data), "--backbone", TINY["backbone"], "--weights", str(fake)]
    assert main([*argv, "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a valid .safetensors file" in err and str(fake) in err
    assert not (tmp_path / "run").exists()
