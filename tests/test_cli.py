"""The ``visiontune`` command: error paths (exit 2, one line, nothing written), help, end to end."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import files_under, make_class_folder, make_split_folder

from visiontune.cli import build_parser, main

TINY_ARGS = [
    "--backbone",
    "test_efficientnet",
    "--weights",
    "none",
    "--workers",
    "0",
    "--no-progress",
]


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """An empty working directory (where ``runs/`` would appear), with the cache folder inside."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("VISIONTUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path


def _run(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _assert_user_error(code, out, err, match: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("visiontune: error: ")
    assert match in lines[0], lines[0]
    assert "Traceback" not in err
    assert out == ""


# ------------------------------------------------------------------------ train error paths


def _data(root: Path, kind: str) -> Path:
    if kind == "missing":
        return root / "no-such-folder"
    if kind == "empty-folder":
        (root / "empty").mkdir(parents=True)
        return root / "empty"
    if kind == "no-images":
        for name in ("a", "b"):
            (root / "noimg" / name).mkdir(parents=True)
            (root / "noimg" / name / "readme.txt").write_text("not an image")
        return root / "noimg"
    if kind == "single-class":
        return make_class_folder(root / "single", {"only": 4})
    if kind == "empty-class":
        data = make_class_folder(root / "emptyclass", {"a": 3, "b": 3})
        (data / "c").mkdir()
        return data
    return make_class_folder(root / "good", {"a": 4, "b": 4})


TRAIN_ERRORS = [
    ("missing", [], "no such folder"),
    ("empty-folder", [], "no class sub-folders"),
    ("no-images", [], "no images"),
    ("single-class", [], "single class"),
    ("empty-class", [], "no images in"),
    ("good", ["--backbone", "no_such_backbone_xyz"], "unknown backbone"),
    ("good", ["--epochs", "0"], "--epochs must be at least 1"),
    ("good", ["--val-fraction", "1.5"], "--val-fraction"),
    ("good", ["--val-fraction", "-0.2"], "--val-fraction"),
    ("good", ["--batch-size", "0"], "--batch-size"),
    ("good", ["--lr", "-1"], "--lr"),
    ("good", ["--backbone-lr-mult", "2"], "--backbone-lr-mult"),
    ("good", ["--workers", "-1"], "--workers"),
    ("good", ["--lr", "inf"], "--lr must be a positive finite number, got inf"),
    ("good", ["--lr", "nan"], "--lr must be a positive finite number, got nan"),
    ("good", ["--patience", "-1"], "--patience must be at least 1, got -1"),
    ("good", ["--seed", "-1"], "--seed must be at least 0, got -1"),
    ("good", ["--seed", str(2**63)], "--seed must be below 2**63"),
    ("good", ["--strategy", "partial", "--unfreeze", "99"], "--unfreeze"),
    ("good", ["--weights", "/no/such/weights.safetensors"], "no such file or folder"),
]


@pytest.mark.parametrize(
    "kind, extra, match", TRAIN_ERRORS, ids=[f"{k}{''.join(e)}" for k, e, _ in TRAIN_ERRORS]
)
@pytest.mark.parametrize("with_out", [False, True], ids=["default-out", "explicit-out"])
def test_train_errors_exit_2_with_one_line_and_write_nothing(
    workspace, capsys, kind, extra, match, with_out
):
    data = _data(workspace / "inputs", kind)
    (workspace / "inputs").mkdir(exist_ok=True)
    before = files_under(workspace)
    args = ["train", data, *TINY_ARGS, *extra]  # a repeated option: the last one counts
    if with_out:
        args += ["--out", workspace / "cwd" / "my-run"]
    code, out, err = _run(args, capsys)
    _assert_user_error(code, out, err, match)
    assert files_under(workspace) == before  # no run folder, no cache, nothing


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_train_on_cuda_without_a_gpu(workspace, capsys):
    data = _data(workspace / "inputs", "good")
    before = files_under(workspace)
    code, out, err = _run(["train", data, *TINY_ARGS, "--device", "cuda"], capsys)
    _assert_user_error(code, out, err, "CUDA")
    assert files_under(workspace) == before


def test_bad_option_values_are_argparse_errors(workspace, capsys):
    for argv in (
        ["train", "x", "--strategy", "everything"],
        ["train", "x", "--epochs", "two"],
        ["predict", "run", "x.png", "--format", "xml"],
        ["frobnicate"],
        [],
    ):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert "error:" in err.strip().splitlines()[-1]
    assert files_under(workspace / "cwd") == set()


@pytest.mark.parametrize(
    "extra",
    [
        ["--strategy", "head", "--head-solver", "adamw", "--lr", "1e30", "--epochs", "2"],
        ["--strategy", "full", "--lr", "1e30", "--epochs", "2"],
    ],
    ids=["head-adamw", "full"],
)
def test_a_diverged_training_exits_2_and_saves_no_model(workspace, capsys, extra):
    # Before: the NaN epoch counted as the best one and its weights were saved, exit 0.
    data = _data(workspace / "inputs", "good")
    out_dir = workspace / "cwd" / "run"
    code, out, err = _run(["train", data, *TINY_ARGS, *extra, "--out", out_dir], capsys)
    _assert_user_error(code, out, err, "training diverged in epoch")
    assert "lower --lr" in err
    assert not (out_dir / "model.safetensors").exists()
    assert not (out_dir / "metrics.json").exists()


def _strict_json(path: Path):
    """``path`` parsed as JSON that other languages accept: a bare NaN or Infinity fails."""

    def refuse(constant):
        raise AssertionError(f"{path.name} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.parametrize(
    "extra, chosen",
    [
        (["--strategy", "head"], "chosen by cross-validation on train"),
        (["--strategy", "head", "--head-solver", "adamw", "--epochs", "3"], "last epoch was kept"),
    ],
    ids=["lbfgs", "adamw"],
)
def test_no_validation_data_writes_null_prints_n_a_and_warns(workspace, capsys, extra, chosen):
    data = _data(workspace / "inputs", "good")
    out_dir = workspace / "cwd" / "run"
    args = ["train", data, *TINY_ARGS, *extra, "--val-fraction", "0", "--out", out_dir]
    code, out, err = _run(args, capsys)
    assert code == 0, err
    assert "validation accuracy n/a" in out and "nan" not in out
    warnings = [line for line in err.splitlines() if line.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("visiontune: warning: no validation")
    assert chosen in warnings[0]
    metrics = _strict_json(out_dir / "metrics.json")
    assert metrics["val"]["accuracy"] is None and metrics["val"]["loss"] is None
    history = _strict_json(out_dir / "history.json")
    assert all(row["val_acc"] is None and row["val_loss"] is None for row in history)
    rows = list(csv.DictReader(io.StringIO((out_dir / "history.csv").read_text())))
    assert rows and all(row["val_loss"] == "" for row in rows)


def test_cache_warnings_are_one_clean_line(workspace, capsys):
    data = _data(workspace / "inputs", "good")
    args = ["train", data, *TINY_ARGS, "--strategy", "head", "--out", workspace / "run"]
    assert _run(args, capsys)[0] == 0
    (shard, *_) = sorted((workspace / "cache").rglob("shard-*.safetensors"))
    shard.write_bytes(b"damaged")
    code, out, err = _run([*args, "--out", workspace / "run2"], capsys)
    assert code == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err  # no "warnings.warn(...)" source line after it
    assert lines[0].startswith("visiontune: warning: feature cache ")
    assert "damaged shard-" in lines[0] and "CacheWarning" not in err


# ----------------------------------------------------------- evaluate / predict error paths


def test_evaluate_and_predict_unknown_run(workspace, capsys, trained_data):
    for argv, match in (
        (["evaluate", workspace / "no-run", trained_data / "test"], "no such run folder"),
        (["predict", workspace / "no-run", trained_data / "test"], "no such run folder"),
        (["evaluate", trained_data, trained_data / "test"], "is not a visiontune model"),
        (["predict", trained_data / "test", trained_data / "test"], "is not a visiontune model"),
    ):
        before = files_under(workspace)
        code, out, err = _run(argv, capsys)
        _assert_user_error(code, out, err, match)
        assert files_under(workspace) == before


def test_predict_and_evaluate_bad_paths(workspace, capsys, trained_run, trained_data):
    run = trained_run.run_dir
    empty = workspace / "empty"
    empty.mkdir()
    zebra = make_class_folder(workspace / "zebra", {"zebra": 2, "cat": 2})
    for argv, match in (
        (["predict", run, workspace / "missing.jpg"], "no such file or folder"),
        (["predict", run, empty], "no image files found"),
        (["predict", run, trained_data / "test", "--top-k", "0"], "--top-k"),
        (["evaluate", run, workspace / "missing"], "no such folder"),
        (["evaluate", run, zebra], "zebra"),
    ):
        before = files_under(workspace)
        code, out, err = _run(argv, capsys)
        _assert_user_error(code, out, err, match)
        assert files_under(workspace) == before
    assert files_under(run) == {
        "config.json",
        "model.safetensors",
        "trust.safetensors",
        "history.json",
        "history.csv",
        "metrics.json",
    }


def test_batch_size_workers_and_seed_are_validated_by_every_command(
    workspace, capsys, trained_run, trained_data
):
    # Before: predict/evaluate/advise/extract --workers -1 were tracebacks from the DataLoader,
    # predict/evaluate --batch-size 0 were accepted, advise --seed -1 a numpy traceback.
    run, test = trained_run.run_dir, trained_data / "test"
    tiny = ["--backbone", "test_efficientnet", "--weights", "none"]
    for argv, match in (
        (["predict", run, test, "--workers", "-1"], "--workers must be at least 0, got -1"),
        (["predict", run, test, "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["evaluate", run, test, "--workers", "-1"], "--workers must be at least 0, got -1"),
        (["evaluate", run, test, "--batch-size", "-3"], "--batch-size must be at least 1, got -3"),
        (["advise", trained_data, *tiny, "--workers", "-1"], "--workers must be at least 0"),
        (["advise", trained_data, *tiny, "--seed", "-1"], "--seed must be at least 0, got -1"),
        (["advise", trained_data, *tiny, "--seed", str(2**63)], "--seed must be below 2**63"),
        (["extract", test, "--out", "e.npz", *tiny, "--workers", "-1"], "--workers must be"),
        (["check", test, "--workers", "-1"], "--workers must be at least 0, got -1"),
    ):
        before = files_under(workspace)
        code, out, err = _run(argv, capsys)
        _assert_user_error(code, out, err, match)
        assert files_under(workspace) == before


@pytest.mark.parametrize("as_json", [["--format", "json"], ["--json"]])
def test_predict_on_only_unreadable_files_exits_1(workspace, capsys, trained_run, as_json):
    (workspace / "bad.jpg").write_bytes(os.urandom(200))
    code, out, _ = _run(["predict", trained_run.run_dir, workspace / "bad.jpg", *as_json], capsys)
    assert code == 1
    (row,) = json.loads(out)
    assert row["path"].endswith("bad.jpg") and "error" in row


# ------------------------------------------------------------------------------------ help


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in _subparsers(build_parser()):
        assert command in out
    assert "--version" in out and "examples:" in out


@pytest.mark.parametrize("command", sorted(_subparsers(build_parser())))
def test_subcommand_help_mentions_every_option(capsys, command):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    parser = _subparsers(build_parser())[command]
    for action in parser._actions:
        for option in action.option_strings:
            assert option in out, f"{command} --help does not mention {option}"
        if not action.option_strings and action.help != argparse.SUPPRESS:  # positionals
            for word in action.choices or [action.metavar or action.dest]:
                assert word in out, f"{command} --help does not mention {word}"


def test_train_help_explains_the_strategies(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for strategy in ("head", "partial", "full", "gradual", "auto"):
        assert f"{strategy}    -" in out or f"{strategy} -" in out


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("visiontune ")


# ------------------------------------------------------------------------------- backbones


def test_backbones_lists_lite0_as_available(capsys):
    code, out, _ = _run(["backbones"], capsys)
    assert code == 0
    (line,) = [ln for ln in out.splitlines() if ln.startswith("efficientnet_lite0 ")]
    assert "embedded" in line and "74.9%" in line
    code, out, _ = _run(["backbones", "efficientnet_lite*", "--json"], capsys)
    rows = {r["name"]: r for r in json.loads(out)}
    assert set(rows) == {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"}
    assert rows["efficientnet_lite0"]["weights_now"].startswith("embedded")


# ---------------------------------------------------------------------------- end to end


def test_train_evaluate_predict_end_to_end(workspace, capsys):
    data = make_split_folder(
        workspace / "data",
        {"train": {"cat": 6, "dog": 6, "bird": 6}, "test": {"cat": 2, "dog": 2, "bird": 2}},
    )
    run = workspace / "cwd" / "run"
    code, out, err = _run(
        [
            "train",
            data,
            *TINY_ARGS,
            "--epochs",
            "1",
            "--strategy",
            "full",
            "--batch-size",
            "8",
            "--out",
            run,
        ],
        capsys,
    )
    assert code == 0, err
    assert f"run saved to {run}" in out
    assert "test accuracy" in out and "on 6 images" in out
    assert {"model.safetensors", "config.json", "metrics.json"} <= files_under(run)
    assert json.loads((run / "config.json").read_text())["training"]["epochs"] == 1

    code, out, err = _run(["evaluate", run, data / "test", "--json", "--workers", "0"], capsys)
    assert code == 0, err
    metrics = json.loads(out)
    assert metrics["num_images"] == 6
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert set(metrics["per_class"]) == {"bird", "cat", "dog"}
    for row in metrics["per_class"].values():
        assert {"precision", "recall", "f1", "support"} <= set(row)
        assert row["support"] == 2
    assert sum(map(sum, metrics["confusion_matrix"])) == 6

    code, out, _ = _run(["evaluate", run, data / "test", "--workers", "0"], capsys)
    assert code == 0 and out.startswith("accuracy ") and "confusion matrix" in out
    assert "(tta none: 1 forward pass per image)" in out.splitlines()[0]

    images = sorted(str(p) for p in (data / "test").rglob("*.png"))
    code, out, _ = _run(
        ["predict", run, data / "test", "--format", "json", "--top-k", "2", "--workers", "0"],
        capsys,
    )
    assert code == 0
    rows = json.loads(out)
    assert sorted(r["path"] for r in rows) == images
    for r in rows:
        assert len(r["top"]) == 2
        assert r["top"][0]["probability"] >= r["top"][1]["probability"]
        assert {t["class"] for t in r["top"]} <= {"bird", "cat", "dog"}
    by_path = {r["path"]: r for r in rows}

    code, out, _ = _run(
        ["predict", run, data / "test", "--format", "csv", "--top-k", "2", "--workers", "0"], capsys
    )
    assert code == 0
    table = list(csv.DictReader(io.StringIO(out)))
    assert len(table) == 2 * len(images)
    assert set(table[0]) == {"path", "rank", "class", "probability", "unknown", "error"}
    for row in table:
        top = by_path[row["path"]]["top"][int(row["rank"]) - 1]
        assert row["class"] == top["class"]
        assert float(row["probability"]) == pytest.approx(top["probability"], abs=1e-6)

    code, out, _ = _run(
        ["predict", run, *images[:3], "--format", "table", "--top-k", "2", "--workers", "0"], capsys
    )
    assert code == 0
    lines = out.strip().splitlines()
    assert [ln.split("\t")[0] for ln in lines] == images[:3]
    assert all(ln.split("\t")[1].count(",") == 1 for ln in lines)  # two classes per line


# -------------------------------------------------------------------- the console command


def _console_command() -> list[str]:
    exe = shutil.which("visiontune")
    assert exe, "the visiontune console script is not installed"
    return [exe]


def test_console_command_help_and_error(tmp_path):
    env = {**os.environ, "VISIONTUNE_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [*_console_command(), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0 and "train" in done.stdout and "predict" in done.stdout
    done = subprocess.run(
        [*_console_command(), "train", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"visiontune: error: no such folder: {tmp_path / 'nowhere'}"
    ]
    assert done.stdout == ""
    assert files_under(tmp_path) == set()


def test_python_dash_m_runs_the_cli(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "visiontune", "backbones", "efficientnet_lite0"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "efficientnet_lite0" in done.stdout and "embedded" in done.stdout


def test_a_closed_pipe_ends_predict_quietly(trained_run, trained_data):
    # The reader is gone before the command can print (it is still importing torch), as with
    # `visiontune predict ... | head -0`: no traceback and no error line, exit 128 + SIGPIPE.
    proc = subprocess.Popen(
        [*_console_command(), "predict", str(trained_run.run_dir), str(trained_data / "test")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, err
    assert err == ""
