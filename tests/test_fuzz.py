"""Fuzzed inputs never crash training: every broken file is skipped (or, if truncated, loaded as
far as it goes) and reported, by ``train`` in metrics.json and by ``check``."""

from __future__ import annotations

import json

import pytest
from conftest import TINY, make_class_folder
from fuzz_files import SKIPPED, TRUNCATED, running_as_root, simulate_no_permission, write_fuzz_files

import visiontune
from visiontune.api import check
from visiontune.cli import main

# What ``check`` calls each kind (a truncated file may be readable in part, or not at all).
CHECK_TYPES = {
    "zero-bytes": {"unreadable"},
    "random-bytes": {"unreadable"},
    "symlink-loop": {"unreadable"},
    "no-permission": {"unreadable"},
    "bomb-error": {"decompression-bomb"},
    "bomb-warning": {"decompression-bomb"},
    "one-pixel": {"tiny-image"},
    "folder-named-jpg": {"not-a-file"},
    **{kind: {"truncated", "unreadable"} for kind in TRUNCATED},
}


@pytest.fixture
def fuzz_data(tmp_path, monkeypatch):
    """``data/{cat,dog}/`` of good images plus one file of every broken kind in ``cat/``."""
    root = make_class_folder(tmp_path / "data", {"cat": 6, "dog": 6})
    paths = write_fuzz_files(root / "cat")
    if running_as_root():  # chmod 000 does not stop root; make the read fail as it would for a user
        simulate_no_permission(monkeypatch, paths["no-permission"])
    return root, paths


def test_check_reports_every_broken_file(fuzz_data):
    root, paths = fuzz_data
    report = check(root, workers=0)
    types_of = {}
    for finding in report.findings:
        for path in finding.files:
            types_of.setdefault(path, set()).add(finding.type)
    for kind, path in paths.items():
        assert types_of.get(str(path), set()) & CHECK_TYPES[kind], (kind, types_of.get(str(path)))
    assert report.has_errors
    reasons = {f.files[0]: f.message for f in report.findings if f.files}
    assert "empty file" in reasons[str(paths["zero-bytes"])]
    assert "Permission denied" in reasons[str(paths["no-permission"])]
    assert "symbolic links" in reasons[str(paths["symlink-loop"])]
    assert "decompression bomb" in reasons[str(paths["bomb-error"])]
    good = {str(p) for p in (root / "dog").iterdir()}
    assert not any(f.severity != "info" and set(f.files) & good for f in report.findings)


def test_check_cli_exit_code_and_json_on_broken_files(fuzz_data, capsys):
    root, paths = fuzz_data
    assert main(["check", str(root), "--json", "--workers", "0"]) == 1
    out = json.loads(capsys.readouterr().out)
    listed = {p for f in out["findings"] for p in f["files"]}
    assert {str(p) for p in paths.values()} <= listed
    assert out["summary"]["unreadable"] >= 4 and out["has_errors"]


def _assert_reported(metrics: dict, paths: dict) -> None:
    for kind in SKIPPED:
        assert str(paths[kind]) in metrics["skipped"], kind
    for kind in TRUNCATED:  # loaded partially (noted) or not at all (skipped), never silently
        path = str(paths[kind])
        assert path in metrics["skipped"] or "truncated" in metrics["notes"].get(path, ""), kind


def test_train_end_to_end_completes_and_reports_every_broken_file(fuzz_data, tmp_path, capsys):
    root, paths = fuzz_data
    out = tmp_path / "run"
    code = main(
        [
            "train",
            str(root),
            "--strategy",
            "full",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--out",
            str(out),
            "--backbone",
            TINY["backbone"],
            "--weights",
            TINY["weights"],
            "--workers",
            "0",
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    _assert_reported(metrics, paths)
    assert "skipped" in capsys.readouterr().out


def test_train_head_on_features_completes_and_reports_every_broken_file(fuzz_data, tmp_path):
    root, paths = fuzz_data
    result = visiontune.fit(
        root,
        **TINY,
        strategy="head",
        workers=0,
        batch_size=4,
        out=str(tmp_path / "run"),
        progress=False,
        cache=False,
    )
    _assert_reported(result.metrics, paths)
    assert (
        json.loads((result.run_dir / "metrics.json").read_text())["skipped"]
        == result.metrics["skipped"]
    )
