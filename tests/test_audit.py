"""`visiontune audit`: moved labels are found with the right suggestion, the JSON has its schema,
``--apply`` makes a relabelled copy and never touches DATA, bad fixes rows are refused, and
``train --exclude-suspects`` leaves the flagged training images out.

The folders are generated colour classes and the backbone is the tiny random ``TINY`` one:
colours are easy to separate even for it, so a moved image stands out and the results do not
depend on pretrained weights. One audit of one folder is shared by the tests that only read it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
from conftest import TINY, files_under, make_split_folder

import visiontune
from visiontune.cli import main
from visiontune.cli.summary import print_summary
from visiontune.features.extract import FeatureSet
from visiontune.trust.audit import KINDS, audit_features, knn_distances, outlier_mask

TINY_ARGS = ["--backbone", TINY["backbone"], "--weights", TINY["weights"], "--workers", "0"]
# (file as generated, the class folder it is moved into): the seeded label errors.
MOVED = {
    "train/cat/cat_0.png": "dog",
    "train/bird/bird_1.png": "cat",
    "test/dog/dog_2.png": "bird",
}

FINDING = {
    "type": "object",
    "additionalProperties": False,
    "required": ["path", "split", "given", "suggested", "score", "kind"],
    "properties": {
        "path": {"type": "string"},
        "split": {"enum": ["train", "val", "test"]},
        "given": {"type": "string"},
        "suggested": {"type": "string"},
        "score": {"type": "number", "minimum": 0},
        "kind": {"enum": ["label-issue", "outlier", "ambiguous"]},
    },
}
SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["class_names", "counts", "probe", "summary", "test", "findings", "seconds"],
    "properties": {
        "class_names": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        "counts": {
            "type": "object",
            "propertyNames": {"enum": ["train", "val", "test"]},
            "additionalProperties": {"type": "integer", "minimum": 1},
        },
        "probe": {
            "type": "object",
            "additionalProperties": False,
            "required": ["C", "folds"],
            "properties": {
                "C": {"type": "number", "exclusiveMinimum": 0},
                "folds": {"type": "integer", "minimum": 2},
            },
        },
        "summary": {
            "type": "object",
            "additionalProperties": False,
            "required": ["label-issue", "outlier", "ambiguous"],
            "properties": {
                k: {"type": "integer", "minimum": 0}
                for k in ("label-issue", "outlier", "ambiguous")
            },
        },
        "test": {
            "oneOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["num_images", "accuracy", "flagged", "accuracy_without_flagged"],
                    "properties": {
                        "num_images": {"type": "integer", "minimum": 0},
                        "accuracy": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
                        "flagged": {"type": "integer", "minimum": 0},
                        "accuracy_without_flagged": {
                            "type": ["number", "null"],
                            "minimum": 0,
                            "maximum": 1,
                        },
                    },
                },
            ]
        },
        "findings": {"type": "array", "items": FINDING},
        "seconds": {
            "type": "object",
            "required": ["features", "audit"],
            "additionalProperties": {"type": "number", "minimum": 0},
        },
    },
}


def _moved_folder(root: Path) -> Path:
    """Four colour classes in train/test, with the ``MOVED`` files filed under another class."""
    counts = {"cat": 10, "dog": 10, "bird": 10, "fish": 10}
    make_split_folder(root, {"train": counts, "test": {c: 5 for c in counts}})
    for source, target in MOVED.items():
        split, _, name = source.split("/")
        shutil.move(root / source, root / split / target / name)
    return root


def _snapshot(folder: Path) -> dict[str, tuple]:
    """Every file's bytes (hashed), size and mtime, and every folder, under ``folder``."""
    shot = {}
    for path in sorted(folder.rglob("*")):
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        shot[str(path.relative_to(folder))] = (digest, st.st_size, st.st_mtime_ns)
    return shot


@pytest.fixture(scope="module")
def moved(tmp_path_factory):
    """``(DATA, its audit JSON, its report folder)``: one CLI audit shared by the module."""
    data = _moved_folder(tmp_path_factory.mktemp("audit") / "data")
    report = data.parent / "report"
    code = main(["audit", str(data), *TINY_ARGS, "--json", "--report", str(report)])
    assert code == 0
    result = json.loads((report / "audit.json").read_text())
    assert result.pop("context") == {"data": str(data), "backbone": TINY["backbone"]}
    return data, result, report


def _by_name(findings: list[dict]) -> dict[str, dict]:
    return {Path(f["path"]).name: f for f in findings}


def test_moved_labels_are_found_with_the_original_class_suggested(moved):
    _, result, _ = moved
    issues = _by_name([f for f in result["findings"] if f["kind"] == "label-issue"])
    for source, target in MOVED.items():
        split, original, name = source.split("/")
        assert name in issues, f"{source} (moved to {target}) not found: {sorted(issues)}"
        finding = issues[name]
        assert (finding["split"], finding["given"], finding["suggested"]) == (
            split,
            target,
            original,
        )
    assert len(issues) <= 2 * len(MOVED)  # precision at least one half
    assert result["summary"]["label-issue"] == len(issues)


def test_test_accuracy_without_the_flagged_test_images(moved):
    _, result, _ = moved
    test = result["test"]
    assert test["num_images"] == 20 and test["flagged"] >= 1
    # the moved TEST image counts as a mistake until it is left out
    assert test["accuracy_without_flagged"] > test["accuracy"]


def test_audit_json_matches_its_schema(moved, capsys):
    _, result, _ = moved
    jsonschema.validate(result, SCHEMA)
    # The same JSON on stdout as in the report (which adds its context).
    data, _, _ = moved
    assert main(["audit", str(data), *TINY_ARGS, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    jsonschema.validate(printed, SCHEMA)
    assert printed["findings"] == result["findings"]


def test_table_and_report(moved, capsys):
    data, result, report = moved
    assert main(["audit", str(data), *TINY_ARGS]) == 0
    out = capsys.readouterr().out
    assert "label-issue" in out and "TEST accuracy" in out and "cat_0.png" in out
    page = (report / "index.html").read_text()
    assert "Label audit" in page and "cat_0.png" in page
    for src in (s.split('"')[0] for s in page.split('src="')[1:]):
        assert (report / src).is_file(), src  # every thumbnail the page shows exists
    # each finding shown has its Grad-CAM overlay (for its suggested class) under its thumbnail
    overlays = [s for s in page.split('src="')[1:] if s.startswith("explain/")]
    assert len(overlays) == len(result["findings"]) and "evidence for cat" in page
    rows = list(csv.DictReader((report / "fixes.csv").open()))
    assert [r["path"] for r in rows] == [
        os.path.relpath(f["path"], data) for f in result["findings"]
    ]
    moved_row = next(r for r in rows if r["path"] == "train/dog/cat_0.png")
    assert (moved_row["given"], moved_row["suggested"], moved_row["kind"]) == (
        "dog",
        "cat",
        "label-issue",
    )


def _fixes(path: Path, rows: list[tuple]) -> Path:
    path.write_text("path,given,suggested\n" + "".join(",".join(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("copy", [False, True])
def test_apply_makes_a_relabelled_copy_and_leaves_data_untouched(tmp_path, moved, copy):
    data, _, report = moved
    before = _snapshot(data)
    out = tmp_path / "fixed"
    argv = ["audit", str(data), "--apply", str(report / "fixes.csv"), "--out", str(out)]
    assert main(argv + (["--copy"] if copy else [])) == 0
    assert _snapshot(data) == before
    for source, target in MOVED.items():
        split, original, name = source.split("/")
        fixed = out / split / original / name
        assert fixed.is_file() and not (out / split / target / name).exists()
        assert fixed.is_symlink() is not copy
        assert fixed.read_bytes() == (data / split / target / name).read_bytes()
    # everything else is where it was
    assert len([p for p in out.rglob("*") if p.is_file()]) == len(
        [p for p in data.rglob("*") if p.is_file()]
    )


def test_apply_an_edited_fixes_file_relabels_and_leaves_out(tmp_path, moved):
    data, _, _ = moved
    fixes = _fixes(
        tmp_path / "fixes.csv",
        [
            ("train/dog/cat_0.png", "dog", "cat"),
            ("train/cat/cat_3.png", "cat", ""),
            ("train/dog/dog_1.png", "dog", "dog"),
        ],
    )
    result = visiontune.apply_fixes(data, fixes, tmp_path / "fixed")
    assert (result["relabelled"], result["left_out"]) == (1, 1)
    assert not (tmp_path / "fixed" / "train" / "cat" / "cat_3.png").exists()
    assert (tmp_path / "fixed" / "train" / "dog" / "dog_1.png").is_symlink()


def test_a_relabelled_name_already_taken_gets_a_suffix(tmp_path, moved):
    data, _, _ = moved
    # a/x.png relabelled b, where b/x.png already is: the unchanged file keeps its name
    (tmp_path / "d" / "a").mkdir(parents=True)
    (tmp_path / "d" / "b").mkdir()
    shutil.copy(data / "train" / "cat" / "cat_1.png", tmp_path / "d" / "a" / "x.png")
    shutil.copy(data / "train" / "dog" / "dog_1.png", tmp_path / "d" / "b" / "x.png")
    fixes = _fixes(tmp_path / "f.csv", [("a/x.png", "a", "b")])
    visiontune.apply_fixes(tmp_path / "d", fixes, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out" / "b").iterdir()) == ["x-from-a.png", "x.png"]


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([("train/dog/cat_0.png", "dog", "cow")], "fixes row 2: unknown class 'cow'"),
        ([("train/dog/cat_0.png", "cat", "dog")], "fixes row 2: 'train/dog/cat_0.png' is in"),
        ([("train/dog/nope.png", "dog", "cat")], "fixes row 2: no such image under DATA"),
        (
            [("train/dog/cat_0.png", "dog", "cat"), ("train/dog/cat_0.png", "dog", "cat")],
            "fixes row 3: 'train/dog/cat_0.png' is listed twice",
        ),
        ([("../data2/x.png", "dog", "cat")], "fixes row 2: '../data2/x.png' is not inside DATA"),
    ],
)
def test_bad_fixes_rows_are_refused_naming_the_row(tmp_path, moved, capsys, rows, match):
    data, _, _ = moved
    fixes = _fixes(tmp_path / "fixes.csv", rows)
    before = _snapshot(data)
    code = main(["audit", str(data), "--apply", str(fixes), "--out", str(tmp_path / "out")])
    _, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and match in err, err
    assert not (tmp_path / "out").exists() and _snapshot(data) == before


def test_bad_fixes_files_and_outputs_are_refused(tmp_path, moved, capsys):
    data, _, report = moved
    no_column = tmp_path / "cols.csv"
    no_column.write_text("path,given\ntrain/dog/cat_0.png,dog\n")
    fixes = str(report / "fixes.csv")
    for argv, match in (
        (["--apply", str(no_column), "--out", str(tmp_path / "o")], "missing column(s) suggested"),
        (["--apply", fixes, "--out", str(data / "inside")], "must be outside DATA"),
        (["--apply", fixes], "--apply needs --out DIR"),
        (["--out", str(tmp_path / "o")], "--out and --copy go with --apply"),
        ([*TINY_ARGS, "--folds", "1"], "--folds must be at least 2"),
    ):
        code = main(["audit", str(data), *argv])
        _, err = capsys.readouterr()
        assert code == 2 and match in err, (argv, err)
    assert not (tmp_path / "o").exists() and not (data / "inside").exists()


def test_outliers_and_ambiguous_images_on_features():
    """Pure: two tight clusters, one point far from both, and points half-way between them."""
    rng = np.random.default_rng(0)
    centres = np.eye(2, 16) * 10
    x = np.concatenate([centres[i] + rng.normal(0, 0.5, (30, 16)) for i in (0, 1)])
    labels = [0] * 30 + [1] * 30
    between = (centres[0] + centres[1]) / 2 + rng.normal(0, 0.05, (4, 16))
    far = -10 * np.ones((1, 16))
    x = np.concatenate([x, between, far])
    labels += [0, 1, 0, 1, 0]
    samples = [type("S", (), {"path": f"img{i}.png"})() for i in range(len(labels))]
    features = FeatureSet(torch.tensor(x, dtype=torch.float32), torch.tensor(labels), samples)
    findings, probs, _ = audit_features(features, ["train"] * len(labels), ["a", "b"], folds=3)
    kinds = {f.path: f.kind for f in findings}
    assert kinds.get("img64.png") == "outlier"
    assert probs.shape == (65, 2) and np.allclose(probs.sum(1), 1)
    assert not any(kinds.get(f"img{i}.png") for i in range(60))  # the clusters are clean
    distances = knn_distances(features.features, k=3)
    mask, limit = outlier_mask(distances)
    assert mask[64] and distances[64] > limit and mask.sum() <= 5


def test_label_issues_and_ambiguous_images_on_two_overlapping_classes():
    """Pure: two Gaussian classes overlapping along the first axis. Label issues lie deep on the
    other class's side and suggest it; ambiguous images lie on the boundary; few outliers."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 100)
    x = np.stack([rng.normal(2.0 * y - 1.0), rng.normal(size=200), np.full(200, 5.0)], 1)
    samples = [type("S", (), {"path": f"{i}"})() for i in range(200)]
    features = FeatureSet(torch.tensor(x, dtype=torch.float32), torch.tensor(y), samples)
    findings, _, _ = audit_features(features, ["train"] * 200, ["a", "b"])
    kinds = {kind: [f for f in findings if f.kind == kind] for kind in KINDS}
    assert kinds["label-issue"] and kinds["ambiguous"] and len(kinds["outlier"]) <= 10
    for f in kinds["label-issue"]:
        assert f.suggested == ("b" if x[int(f.path), 0] > 0 else "a") != f.given
    for f in kinds["ambiguous"]:
        assert abs(x[int(f.path), 0]) < 0.5 and f.suggested != f.given
    order = [KINDS.index(f.kind) for f in findings]
    assert order == sorted(order)


def test_exclude_suspects_leaves_the_flagged_training_images_out(tmp_path, capsys):
    data = make_split_folder(
        tmp_path / "data",
        {"train": {"cat": 10, "dog": 10, "bird": 10}, "val": {"cat": 2, "dog": 2, "bird": 2}},
    )
    shutil.move(data / "train" / "cat" / "cat_0.png", data / "train" / "dog" / "cat_0.png")
    before = files_under(data)
    result = visiontune.fit(
        data,
        **TINY,
        strategy="head",
        exclude_suspects=True,
        workers=0,
        progress=False,
        out=str(tmp_path / "run"),
    )
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())["excluded_suspects"]
    assert record == result.metrics["excluded_suspects"]
    names = [Path(f["path"]).name for f in record["files"]]
    assert "cat_0.png" in names and record["count"] == len(names) <= 3
    assert record["audited"] == 30 and files_under(data) == before
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["training"]["exclude_suspects"] is True
    assert config["data"]["train"] == 30 - record["count"]
    print_summary(result)  # what `train` prints at the end says so too
    told = f"left out {record['count']} of 30 training images the audit flagged"
    assert told in capsys.readouterr().out
