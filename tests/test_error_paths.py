"""One error path for every command: bad input ends as one ``visiontune: error:`` line on stderr
and exit 2, never a traceback, and nothing is written.

The table walks every subcommand (the list comes from the parser, so a new command without rows
fails ``test_every_command_is_walked``) with nonexistent paths, a file where a folder is
expected, an empty folder, a folder of non-images, a non-run folder and a damaged ``config.json``
as RUN, and bad numeric and choice options. Rows marked ``USAGE`` are argparse's own errors
(a usage line, then ``visiontune COMMAND: error: ...``, exit 2): acceptable, and checked as such.
Warnings, and the progress lines ``train`` prints on stderr before it finds a class with no
decodable image, may come before the error line; it is the only error line and the last line.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import files_under, make_class_folder

import visiontune.cli.predict
from visiontune.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
T = "--backbone test_efficientnet --weights none"
IMG = "data/cat/cat_0.png"
USAGE = "usage"  # an argparse error: usage + error line, exit 2
ERROR = "error"  # one ``visiontune: error:`` line, exit 2

# (command, arguments, expected kind); paths are relative to the prepared folder (see `bad`)
CASES = [
    ("check", "nope", ERROR),
    ("check", "afile.txt", ERROR),
    ("check", "empty", ERROR),
    ("check", "data --workers -1", ERROR),
    ("check", "data --workers x", USAGE),
    ("check", "data --min-side 0", ERROR),
    ("check", "data --max-pixels -1", ERROR),
    ("check", "data --near-distance -1", ERROR),
    ("check", "data --imbalance-ratio 0", ERROR),
    ("check", "data --examples -1", ERROR),
    ("train", f"nope {T} --out o", ERROR),
    ("train", f"afile.txt {T} --out o", ERROR),
    ("train", f"empty {T} --out o", ERROR),
    ("train", f"nonimg {T} --out o", ERROR),
    ("train", f"data {T} --epochs 0 --out o", ERROR),
    ("train", f"data {T} --epochs x --out o", USAGE),
    ("train", f"data {T} --batch-size -1 --out o", ERROR),
    ("train", f"data {T} --lr -1 --out o", ERROR),
    ("train", f"data {T} --workers -1 --out o", ERROR),
    ("train", f"data {T} --seed -1 --out o", ERROR),
    ("train", f"data {T} --val-fraction 2 --out o", ERROR),
    ("train", f"data {T} --ensemble 0 --out o", ERROR),
    ("train", f"data {T} --augment bogus --out o", ERROR),
    ("train", f"data {T} --strategy bogus --out o", USAGE),
    ("train", f"data {T} --out afile.txt", ERROR),
    ("train", f"data {T} --resume notrun --out o", ERROR),
    ("train", "data --backbone nope_backbone --weights none --out o", ERROR),
    ("train", "data --backbone test_efficientnet --weights nope.safetensors --out o", ERROR),
    ("advise", f"nope {T}", ERROR),
    ("advise", f"afile.txt {T}", ERROR),
    ("advise", f"empty {T}", ERROR),
    ("advise", f"data {T} --workers -1", ERROR),
    ("advise", f"data {T} --seed -1", ERROR),
    ("evaluate", "nope data", ERROR),
    ("evaluate", "afile.txt data", ERROR),
    ("evaluate", "empty data", ERROR),
    ("evaluate", "notrun data", ERROR),
    ("evaluate", "badrun data", ERROR),
    ("evaluate", "listrun data", ERROR),
    ("evaluate", "badrun data --tta bogus", USAGE),
    ("evaluate", "badrun data --batch-size x", USAGE),
    ("predict", f"nope {IMG}", ERROR),
    ("predict", f"afile.txt {IMG}", ERROR),
    ("predict", f"notrun {IMG}", ERROR),
    ("predict", f"badrun {IMG}", ERROR),
    ("predict", f"listrun {IMG}", ERROR),
    ("predict", f"badrun {IMG} --format bogus", USAGE),
    ("predict", f"badrun {IMG} --tta bogus", USAGE),
    ("predict", f"badrun {IMG} --top-k x", USAGE),
    ("predict", f"badrun {IMG} --reject-rate x", USAGE),
    ("audit", f"nope {T}", ERROR),
    ("audit", f"afile.txt {T}", ERROR),
    ("audit", f"empty {T}", ERROR),
    ("audit", f"nonimg {T}", ERROR),
    ("audit", f"data {T} --folds 1", ERROR),
    ("audit", f"data {T} --workers -1", ERROR),
    ("audit", f"data {T} --folds x", USAGE),
    ("audit", "data --apply nope.csv --out fixed", ERROR),
    ("audit", "data --apply afile.txt --out fixed", ERROR),
    ("export", "nope", ERROR),
    ("export", "afile.txt", ERROR),
    ("export", "empty", ERROR),
    ("export", "notrun", ERROR),
    ("export", "badrun", ERROR),
    ("export", "listrun", ERROR),
    ("export", "badrun --format bogus", USAGE),
    ("export", "badrun --tolerance x", USAGE),
    ("export", "badrun --quantize int4", USAGE),
    ("export", "badrun --max-drop x", USAGE),
    ("extract", f"nope --out e.npz {T}", ERROR),
    ("extract", f"afile.txt --out e.npz {T}", ERROR),
    ("extract", f"empty --out e.npz {T}", ERROR),
    ("extract", f"nonimg --out e.npz {T}", ERROR),
    ("extract", f"data --out e.txt {T}", ERROR),
    ("extract", f"data --out afile.txt/e.npz {T}", ERROR),
    ("extract", f"data --out e.npz {T} --workers -1", ERROR),
    ("similar", "test_efficientnet nope data --weights none", ERROR),
    ("similar", "test_efficientnet afile.txt data --weights none", ERROR),
    ("similar", f"test_efficientnet {IMG} nope --weights none", ERROR),
    ("similar", f"test_efficientnet {IMG} empty --weights none", ERROR),
    ("similar", f"test_efficientnet {IMG} nonimg --weights none", ERROR),
    ("similar", f"test_efficientnet {IMG} data --weights none --k 0", ERROR),
    ("similar", f"test_efficientnet {IMG} data --weights none --k x", USAGE),
    ("similar", f"notrun {IMG} data", ERROR),
    ("similar", f"badrun {IMG} data", ERROR),
    ("cache", "info --cache-dir afile.txt", ERROR),
    ("cache", "clear --cache-dir afile.txt", ERROR),
    ("cache", "clear --cache-dir empty --key ../x", ERROR),
    ("cache", "bogus", USAGE),
    ("backbones", "a b", USAGE),
    ("demo", "--data-dir afile.txt --out o", ERROR),
    ("demo", "--data-dir notrun --out o", ERROR),
    ("demo", "--strategy bogus", USAGE),
    ("augment-preview", "nope --out g.png", ERROR),
    ("augment-preview", "afile.txt --out g.png", ERROR),
    ("augment-preview", "empty --out g.png", ERROR),
    ("augment-preview", "nonimg --out g.png", ERROR),
    ("augment-preview", "data --out g.txt", ERROR),
    ("augment-preview", "data --out afile.txt", ERROR),
    ("augment-preview", "data --out g.png --rows 0", ERROR),
    ("augment-preview", "data --out g.png --cols -1", ERROR),
    ("augment-preview", "data --out g.png --size 0", ERROR),
    ("augment-preview", "data --out g.png --seed -1", ERROR),
    ("augment-preview", "data --out g.png --augment bogus", ERROR),
    ("augment-preview", "data --out g.png --rows x", USAGE),
    ("serve", "nope", ERROR),
    ("serve", "notrun", ERROR),
    ("serve", "badrun", ERROR),
    ("serve", "badrun --max-batch 0", ERROR),
    ("serve", "badrun --max-upload-mb 0", ERROR),
    ("serve", "badrun --port 70000", ERROR),
    ("serve", "badrun --port x", USAGE),
    ("serve", "badrun --log-level loud", USAGE),
]


def _commands() -> list[str]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(sub.choices)


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> Path:
    """A folder of bad inputs beside one good class folder (``data``)."""
    root = tmp_path_factory.mktemp("bad")
    make_class_folder(root / "data", {"cat": 4, "dog": 4})
    (root / "empty").mkdir()
    (root / "afile.txt").write_text("not a folder")
    for name, content in (("a/x.jpg", b"hello"), ("b/y.png", b"\0" * 10)):
        (root / "nonimg" / name).parent.mkdir(parents=True)
        (root / "nonimg" / name).write_bytes(content)
    (root / "notrun").mkdir()
    (root / "notrun" / "notes.txt").write_text("x")
    for name, config in (("badrun", "{nope"), ("listrun", "[1, 2]")):
        (root / name).mkdir()
        (root / name / "config.json").write_text(config)
        (root / name / "model.safetensors").write_bytes(b"xx")
    return root


def test_every_command_is_walked():
    walked = {command for command, _, _ in CASES}
    assert set(_commands()) <= walked, f"add rows for {set(_commands()) - walked}"


@pytest.mark.parametrize(("command", "arguments", "kind"), CASES, ids=lambda v: str(v))
def test_bad_input_is_one_line(bad, monkeypatch, capsys, command, arguments, kind):
    monkeypatch.chdir(bad)
    before = files_under(bad)
    try:
        code = main([command, *arguments.split()])
    except SystemExit as exc:  # argparse
        code = exc.code
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if not line.startswith("visiontune: warning:")]
    if kind == USAGE:
        assert lines[0].startswith("usage: visiontune")
        assert lines[-1].startswith("visiontune") and ": error: " in lines[-1]
    else:
        errors = [line for line in lines if line.startswith("visiontune: error: ")]
        assert len(errors) == 1 and lines[-1] == errors[0], err  # after any progress lines
    assert files_under(bad) == before


def test_debug_shows_the_traceback(bad, monkeypatch, capsys):
    monkeypatch.chdir(bad)
    with pytest.raises(Exception, match="no such run folder"):
        main(["--debug", "export", "nope"])
    monkeypatch.setenv("VISIONTUNE_DEBUG", "1")
    with pytest.raises(Exception, match="no such run folder"):
        main(["export", "nope"])
    monkeypatch.setenv("VISIONTUNE_DEBUG", "0")
    assert main(["export", "nope"]) == 2


def test_debug_traceback_in_a_subprocess(bad):
    def run(*argv, **env):
        return subprocess.run(
            [sys.executable, "-m", "visiontune", *argv],
            cwd=bad,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            check=False,
        )

    plain = run("check", "nope")
    assert plain.returncode == 2 and plain.stderr == "visiontune: error: no such folder: nope\n"
    for shown in (run("--debug", "check", "nope"), run("check", "nope", VISIONTUNE_DEBUG="1")):
        assert shown.returncode == 1 and "Traceback" in shown.stderr


def _raises(exc):
    def run(args):
        raise exc

    return run


def test_ctrl_c_is_130(bad, monkeypatch, capsys):
    monkeypatch.chdir(bad)
    monkeypatch.setattr(visiontune.cli.predict, "_run_predict", _raises(KeyboardInterrupt()))
    assert main(["predict", "badrun", IMG]) == 130
    assert capsys.readouterr().err == "visiontune: interrupted\n"
    assert main(["--debug", "predict", "badrun", IMG]) == 130


def test_a_bug_is_one_line_exit_1(bad, monkeypatch, capsys):
    monkeypatch.chdir(bad)
    monkeypatch.setattr(visiontune.cli.predict, "_run_predict", _raises(ZeroDivisionError("x")))
    assert main(["predict", "badrun", IMG]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ZeroDivisionError: x" in err and "--debug" in err
    assert "Traceback" not in err
    with pytest.raises(ZeroDivisionError):
        main(["--debug", "predict", "badrun", IMG])
